"""Validation of a VMGEXIT's GHCB, kept apart from its emulation.

As KVM splits ``sev_es_validate_vmgexit`` from the exit handlers, this
module decides only *whether* a request can be served and returns either a
``ValidRequest`` (the inputs the guest marked valid, the checked scratch
area) or an ``Invalid`` with the GHCB v2 error reason the hypervisor must
answer (SW_EXITINFO1 = 2, SW_EXITINFO2 = reason). Nothing here touches
guest memory: the scratch area is checked against the GHCB page or, for
protocol version 1, against guest RAM with ``contains``.

Rules (GHCB spec 56421 v2, sections "GHCB Usage", "Valid Bitmap", "Scratch
Area" and the NAE event table; KVM ``sev_es_validate_vmgexit`` and
``setup_vmgexit_scratch`` for the choices the spec leaves open):

1. ``ghcb_usage`` must be 0 (the standard layout)  -> INVALID_USAGE
2. ``protocol_version`` must be one the hypervisor offered in its SEV
   information (1..max)                              -> INVALID_INPUT;
   0 is taken as version 1: KVM never reads the field, and OVMF's SEC
   (``SevEsProtocolCheck``, edk2 up to at least 2024) writes 0 there, the
   maximum it computes from a GHCB MSR value it has just overwritten
3. SW_EXITCODE, SW_EXITINFO1 and SW_EXITINFO2 must be valid -> MISSING_INPUT
4. the exit code must be one this hypervisor serves  -> INVALID_EVENT
5. the registers that exit code needs must be valid  -> MISSING_INPUT
6. input values must make sense (IOIO size, MSR direction, MMIO length,
   AP jump table sub-function)                       -> INVALID_INPUT
7. the scratch area must lie in the GHCB shared buffer (0x800..0xFF0) or,
   with protocol version 1 only, in guest RAM and at most 16 pages
                                                     -> INVALID_SCRATCH_AREA
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sevx86.arch.bits import ADDRESS_LIMIT
from sevx86.arch.exits import AP_JUMP_TABLE_GET, AP_JUMP_TABLE_SET, SvmExit, SwExit, exit_name
from sevx86.arch.ghcb import (
    GHCB_PROTOCOL_MIN,
    GHCB_REGISTER_NAMES,
    GHCB_USAGE_STANDARD,
    SHARED_BUFFER_OFFSET,
    GhcbError,
)
from sevx86.arch.vmcb import decode_ioio
from sevx86.hv.ghcb import SHARED_BUFFER_END, GhcbPage

PAGE_MASK = ~0xFFF
# A GHCB protocol version of 0 is no version at all; rule 2 reads it as 1.
UNSTATED_VERSION = 0
# Largest scratch area outside the GHCB (protocol version 1), as KVM's
# GHCB_SCRATCH_AREA_LIMIT: the host copies it, so it must be bounded.
SCRATCH_LIMIT = 16 * 0x1000
# GHCB v2: an MMIO access is at most 8 bytes (KVM refuses more).
MMIO_MAX_V2 = 8
# A string I/O count beyond this is nonsense (KVM: > INT_MAX).
IOIO_COUNT_MAX = 0x7FFF_FFFF

Regs = dict[str, int]
Extra = Callable[[int, Regs], tuple[str, ...]]


def _none(_info1: int, _regs: Regs) -> tuple[str, ...]:
    return ()


def _cpuid(_info1: int, regs: Regs) -> tuple[str, ...]:
    # Leaf 0xD answers depend on XCR0, so the guest must supply it.
    return ("xcr0",) if regs.get("rax", 0) & 0xFFFF_FFFF == 0xD else ()


def _ioio(info1: int, _regs: Regs) -> tuple[str, ...]:
    if info1 & 0x4:  # STR: data through the scratch area
        return ("sw_scratch",)
    return () if info1 & 0x1 else ("rax",)  # OUT needs the value


def _msr(info1: int, _regs: Regs) -> tuple[str, ...]:
    return ("rax", "rdx") if info1 else ()


# Exit code -> (registers always required, conditional extra requirements).
REQUIRED: dict[int, tuple[tuple[str, ...], Extra]] = {
    SvmExit.DR7_READ: ((), _none),
    SvmExit.DR7_WRITE: (("rax",), _none),
    SvmExit.RDTSC: ((), _none),
    SvmExit.RDPMC: (("rcx",), _none),
    SvmExit.CPUID: (("rax", "rcx"), _cpuid),
    SvmExit.INVD: ((), _none),
    SvmExit.IOIO: ((), _ioio),
    SvmExit.MSR: (("rcx",), _msr),
    SvmExit.VMMCALL: (("rax", "cpl"), _none),
    SvmExit.RDTSCP: ((), _none),
    SvmExit.WBINVD: ((), _none),
    SvmExit.MONITOR: (("rax", "rcx", "rdx"), _none),
    SvmExit.MWAIT: (("rax", "rcx"), _none),
    SwExit.MMIO_READ: (("sw_scratch",), _none),
    SwExit.MMIO_WRITE: (("sw_scratch",), _none),
    SwExit.NMI_COMPLETE: ((), _none),
    SwExit.AP_HLT_LOOP: ((), _none),
    SwExit.AP_JUMP_TABLE: ((), _none),
    SwExit.HV_FEATURES: ((), _none),
    SwExit.TERMINATE: ((), _none),
    SwExit.UNSUPPORTED: ((), _none),
}
BASE_REQUIRED = ("sw_exit_code", "sw_exit_info_1", "sw_exit_info_2")
_REGISTERS = frozenset(GHCB_REGISTER_NAMES)


@dataclass(frozen=True)
class Invalid:
    """The request cannot be served: answer ``reason`` (GhcbError) to the guest."""

    reason: GhcbError
    detail: str


@dataclass(frozen=True)
class Scratch:
    """A checked scratch area: ``length`` bytes at ``gpa``."""

    gpa: int
    length: int
    in_ghcb: bool  # inside the GHCB's shared buffer (else guest RAM, protocol v1)


@dataclass(frozen=True)
class ValidRequest:
    code: int
    info1: int
    info2: int
    version: int
    registers: Regs  # the save-area registers the guest marked valid
    valid: tuple[str, ...]  # names of every valid field, for the trace
    scratch: Scratch | None = None
    extra: dict[str, object] = field(default_factory=dict)


def validate_vmgexit(
    page: GhcbPage,
    *,
    max_version: int,
    contains: Callable[[int, int], bool],
) -> ValidRequest | Invalid:
    """Check one GHCB request; never raises for any page content."""
    usage = page.get("ghcb_usage")
    if usage != GHCB_USAGE_STANDARD:
        return Invalid(GhcbError.INVALID_USAGE, f"GHCB usage {usage:#x} is not 0")
    version = page.get("protocol_version")
    if version == UNSTATED_VERSION:
        version = GHCB_PROTOCOL_MIN  # what KVM accepts; see rule 2
    if not GHCB_PROTOCOL_MIN <= version <= max_version:
        return Invalid(
            GhcbError.INVALID_INPUT,
            f"protocol version {version} is not in {GHCB_PROTOCOL_MIN}..{max_version}",
        )
    valid = page.valid_names()
    have = set(valid)
    missing = [name for name in BASE_REQUIRED if name not in have]
    if missing:
        return Invalid(GhcbError.MISSING_INPUT, f"{', '.join(missing)} not valid")
    code = page.get("sw_exit_code")
    info1 = page.get("sw_exit_info_1")
    info2 = page.get("sw_exit_info_2")
    rule = REQUIRED.get(code)
    if rule is None:
        return Invalid(GhcbError.INVALID_EVENT, f"exit code {code:#x} is not supported")
    # In GHCB_REGISTER_NAMES order: valid is in bit order, which is the same.
    regs = {name: page.get(name) for name in valid if name in _REGISTERS}
    always, extra = rule
    need = always + extra(info1, regs)
    missing = [name for name in need if name not in have]
    if missing:
        return Invalid(GhcbError.MISSING_INPUT, f"{', '.join(missing)} not valid")
    problem = check_inputs(code, info1, info2, version)
    if problem is not None:
        return problem
    scratch: Scratch | None = None
    length = scratch_length(code, info1, info2)
    if length:
        checked = check_scratch(
            page.get("sw_scratch"), length, page.gpa, version, contains=contains
        )
        if isinstance(checked, Invalid):
            return checked
        scratch = checked
    return ValidRequest(code, info1, info2, version, regs, tuple(valid), scratch)


def check_inputs(code: int, info1: int, info2: int, version: int) -> Invalid | None:
    """Rule 6: values the emulation could not act on."""
    if code == SvmExit.IOIO:
        try:
            io = decode_ioio(info1)
        except ValueError as exc:
            return Invalid(GhcbError.INVALID_INPUT, str(exc))
        if io.string and info2 > IOIO_COUNT_MAX:
            return Invalid(GhcbError.INVALID_INPUT, f"string I/O count {info2:#x}")
    elif code == SvmExit.MSR and info1 not in (0, 1):
        return Invalid(GhcbError.INVALID_INPUT, f"MSR direction {info1:#x} is not 0 or 1")
    elif code in (SwExit.MMIO_READ, SwExit.MMIO_WRITE):
        if version >= 2 and info2 > MMIO_MAX_V2:
            return Invalid(GhcbError.INVALID_INPUT, f"MMIO length {info2} > {MMIO_MAX_V2}")
    elif code == SwExit.AP_JUMP_TABLE and info1 not in (AP_JUMP_TABLE_SET, AP_JUMP_TABLE_GET):
        return Invalid(GhcbError.INVALID_INPUT, f"AP jump table request {info1:#x}")
    return None


def scratch_length(code: int, info1: int, info2: int) -> int:
    """Bytes of scratch area a request uses (0: none)."""
    if code == SvmExit.IOIO and info1 & 0x4:
        return decode_ioio(info1).size * info2
    if code in (SwExit.MMIO_READ, SwExit.MMIO_WRITE):
        return info2
    return 0


def check_scratch(
    gpa: int, length: int, ghcb_gpa: int, version: int, *, contains: Callable[[int, int], bool]
) -> Scratch | Invalid:
    """Rule 7 for ``length`` bytes at ``gpa``."""
    end = gpa + length
    if gpa == 0 or end > ADDRESS_LIMIT or end < gpa:
        return Invalid(GhcbError.INVALID_SCRATCH_AREA, f"scratch {gpa:#x}+{length:#x}")
    if gpa & PAGE_MASK == ghcb_gpa:
        if gpa < ghcb_gpa + SHARED_BUFFER_OFFSET or end > ghcb_gpa + SHARED_BUFFER_END:
            return Invalid(
                GhcbError.INVALID_SCRATCH_AREA,
                f"scratch {gpa:#x}+{length:#x} leaves the GHCB shared buffer",
            )
        return Scratch(gpa, length, True)
    if version >= 2:
        return Invalid(
            GhcbError.INVALID_SCRATCH_AREA,
            f"scratch {gpa:#x} is outside the GHCB (protocol version 2 requires it inside)",
        )
    if length > SCRATCH_LIMIT:
        return Invalid(GhcbError.INVALID_SCRATCH_AREA, f"scratch length {length:#x} too large")
    if not contains(gpa, length):
        return Invalid(GhcbError.INVALID_SCRATCH_AREA, f"scratch {gpa:#x} is not guest RAM")
    return Scratch(gpa, length, False)


__all__ = [
    "Invalid",
    "REQUIRED",
    "Scratch",
    "ValidRequest",
    "check_scratch",
    "validate_vmgexit",
]


def describe_request(req: ValidRequest) -> str:
    """A validated request's GHCB fields in words, for the trace."""
    regs = req.registers
    code = req.code
    if code == SvmExit.CPUID:
        leaf, subleaf = regs.get("rax", 0) & 0xFFFF_FFFF, regs.get("rcx", 0) & 0xFFFF_FFFF
        return f"CPUID leaf {leaf:#x} subleaf {subleaf:#x}"
    if code == SvmExit.IOIO:
        try:
            io = decode_ioio(req.info1)
        except ValueError:
            return "IOIO (bad EXITINFO1)"
        what = ("INS" if io.is_in else "OUTS") if io.string else ("IN" if io.is_in else "OUT")
        text = f"{what} port {io.port:#x}, {io.size} byte{'s' if io.size > 1 else ''}"
        if io.string:
            text += f" x {req.info2} through the shared buffer"
        elif not io.is_in:
            text += f", value {regs.get('rax', 0) & ((1 << (8 * io.size)) - 1):#x}"
        return text
    if code == SvmExit.MSR:
        msr = regs.get("rcx", 0) & 0xFFFF_FFFF
        if req.info1:
            value = (regs.get("rdx", 0) & 0xFFFF_FFFF) << 32 | (regs.get("rax", 0) & 0xFFFF_FFFF)
            return f"WRMSR {msr:#x} <- {value:#x}"
        return f"RDMSR {msr:#x}"
    if code in (SwExit.MMIO_READ, SwExit.MMIO_WRITE):
        what = "read" if code == SwExit.MMIO_READ else "write"
        return f"MMIO {what} of {req.info2} bytes at GPA {req.info1:#x}"
    return f"{exit_name(code)} info1={req.info1:#x} info2={req.info2:#x}"
