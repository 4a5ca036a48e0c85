"""The VMGEXIT validation rules, one by one, on GHCB pages built in Python."""

from __future__ import annotations

import pytest

from sevx86.arch.exits import SvmExit, SwExit
from sevx86.arch.ghcb import GHCB, GhcbError, set_valid
from sevx86.arch.vmcb import encode_ioio
from sevx86.hv.ghcb import GhcbPage
from sevx86.hv.validate import REQUIRED, Invalid, ValidRequest, validate_vmgexit

GPA = 0x5000
RAM = (0, 64 << 20)


def contains(gpa: int, size: int) -> bool:
    return RAM[0] <= gpa and gpa + size <= RAM[1]


def page(
    fields: dict[str, int],
    *,
    valid: tuple[str, ...] | None = None,
    version: int = 2,
    usage: int = 0,
) -> GhcbPage:
    buf = bytearray(0x1000)
    for name, value in fields.items():
        GHCB[name].write(buf, value)
    bitmap = set_valid(0, *(fields if valid is None else valid))
    GHCB["valid_bitmap"].write(buf, bitmap)
    GHCB["protocol_version"].write(buf, version)
    GHCB["ghcb_usage"].write(buf, usage)
    return GhcbPage(GPA, buf)


def check(fields: dict[str, int], **kw) -> ValidRequest | Invalid:
    return validate_vmgexit(page(fields, **kw), max_version=2, contains=contains)


def base(code: int, info1: int = 0, info2: int = 0, **regs: int) -> dict[str, int]:
    return {"sw_exit_code": code, "sw_exit_info_1": info1, "sw_exit_info_2": info2, **regs}


def reason(result) -> GhcbError | None:
    return result.reason if isinstance(result, Invalid) else None


def test_a_complete_cpuid_request_is_valid_and_carries_its_registers():
    r = check(base(SvmExit.CPUID, rax=1, rcx=0))
    assert isinstance(r, ValidRequest)
    assert r.registers == {"rax": 1, "rcx": 0} and r.scratch is None


def test_usage_must_be_zero():
    assert reason(check(base(SvmExit.CPUID, rax=1, rcx=0), usage=1)) is GhcbError.INVALID_USAGE


@pytest.mark.parametrize("version", [3, 0xFFFF])
def test_protocol_version_must_be_offered(version):
    r = check(base(SvmExit.CPUID, rax=1, rcx=0), version=version)
    assert reason(r) is GhcbError.INVALID_INPUT


def test_protocol_version_0_is_served_as_version_1_like_kvm():
    # OVMF's SEC leaves 0 in the field (edk2 SevEsProtocolCheck); KVM never
    # reads it, so a KVM-like host must serve the request.
    r = check(base(SvmExit.CPUID, rax=1, rcx=0), version=0)
    assert isinstance(r, ValidRequest) and r.version == 1


@pytest.mark.parametrize("missing", ["sw_exit_code", "sw_exit_info_1", "sw_exit_info_2"])
def test_exit_code_and_infos_must_be_valid(missing):
    fields = base(SvmExit.CPUID, rax=1, rcx=0)
    valid = tuple(n for n in fields if n != missing)
    assert reason(check(fields, valid=valid)) is GhcbError.MISSING_INPUT


@pytest.mark.parametrize("code", [0x0, 0x74, 0x400, 0x8000_0010, 0x8000_0013, 0x1234_5678])
def test_unknown_or_snp_only_exit_codes_are_invalid_events(code):
    assert reason(check(base(code))) is GhcbError.INVALID_EVENT


@pytest.mark.parametrize(
    ("fields", "needs"),
    [
        (base(SvmExit.CPUID, rax=1, rcx=0), ("rax", "rcx")),
        (base(SvmExit.CPUID, rax=0xD, rcx=0, xcr0=7), ("rax", "rcx", "xcr0")),
        (base(SvmExit.MSR, 0, rcx=0x10), ("rcx",)),
        (base(SvmExit.MSR, 1, rcx=0x10, rax=0, rdx=0), ("rcx", "rax", "rdx")),
        (base(SvmExit.IOIO, encode_ioio(0x80, 1, False), rax=0), ("rax",)),
        (base(SvmExit.VMMCALL, rax=0, cpl=0), ("rax", "cpl")),
        (base(SvmExit.MONITOR, rax=0, rcx=0, rdx=0), ("rax", "rcx", "rdx")),
        (base(SvmExit.MWAIT, rax=0, rcx=0), ("rax", "rcx")),
        (base(SvmExit.DR7_WRITE, rax=0x400), ("rax",)),
        (base(SvmExit.RDPMC, rcx=0), ("rcx",)),
        (base(SwExit.MMIO_READ, 0xFEB00000, 4, sw_scratch=GPA + 0x800), ("sw_scratch",)),
        (
            base(SvmExit.IOIO, encode_ioio(0x80, 1, False, string=True), 1, sw_scratch=GPA + 0x800),
            ("sw_scratch",),
        ),
    ],
)
def test_each_exit_needs_its_registers(fields, needs):
    assert isinstance(check(fields), ValidRequest)
    for name in needs:
        valid = tuple(n for n in fields if n != name)
        assert reason(check(fields, valid=valid)) is GhcbError.MISSING_INPUT, name


def test_in_needs_no_rax():
    assert isinstance(check(base(SvmExit.IOIO, encode_ioio(0x80, 1, True))), ValidRequest)


def test_the_required_table_covers_the_exits_kvm_validates():
    """The NAE events of GHCB spec table 4 that an SEV-ES hypervisor serves."""
    expected = {
        SvmExit.DR7_READ, SvmExit.DR7_WRITE, SvmExit.RDTSC, SvmExit.RDPMC, SvmExit.CPUID,
        SvmExit.INVD, SvmExit.IOIO, SvmExit.MSR, SvmExit.VMMCALL, SvmExit.RDTSCP,
        SvmExit.WBINVD, SvmExit.MONITOR, SvmExit.MWAIT, SwExit.MMIO_READ, SwExit.MMIO_WRITE,
        SwExit.NMI_COMPLETE, SwExit.AP_HLT_LOOP, SwExit.AP_JUMP_TABLE, SwExit.HV_FEATURES,
        SwExit.TERMINATE, SwExit.UNSUPPORTED,
    }  # fmt: skip
    assert set(REQUIRED) == expected


@pytest.mark.parametrize(
    "fields",
    [
        base(SvmExit.IOIO, 0x80 << 16 | 0x30, rax=0),  # two operand sizes
        base(SvmExit.IOIO, 0x80 << 16, rax=0),  # no operand size
        base(SvmExit.MSR, 2, rcx=0x10, rax=0, rdx=0),
        base(SwExit.MMIO_WRITE, 0xFEB00000, 9, sw_scratch=GPA + 0x800),
        base(SwExit.AP_JUMP_TABLE, 2),
        base(SvmExit.IOIO, encode_ioio(0x80, 1, True, string=True), 1 << 40, sw_scratch=GPA),
    ],
)
def test_nonsense_inputs_are_invalid_input(fields):
    assert reason(check(fields)) is GhcbError.INVALID_INPUT


STR_OUT = encode_ioio(0x80, 1, False, string=True, rep=True)


@pytest.mark.parametrize(
    ("scratch", "count", "version", "ok"),
    [
        (GPA + 0x800, 0x7F0, 2, True),  # the whole shared buffer
        (GPA + 0x800, 0x7F1, 2, False),  # one byte past it
        (GPA + 0x7FF, 1, 2, False),  # before it
        (GPA + 0xFF0, 1, 2, False),  # the reserved tail
        (0, 1, 2, False),
        (0x300000, 16, 2, False),  # v2: must be inside the GHCB
        (0x300000, 16, 1, True),  # v1: guest RAM is fine
        (0x300000, 16 * 0x1000 + 1, 1, False),  # v1: too large
        ((64 << 20) - 8, 16, 1, False),  # v1: runs off the end of RAM
        (0xFEB00000, 4, 1, False),  # v1: not RAM
        ((1 << 64) - 4, 16, 1, False),  # wraps around
    ],
)
def test_scratch_area_rules(scratch, count, version, ok):
    r = check(base(SvmExit.IOIO, STR_OUT, count, sw_scratch=scratch), version=version)
    if ok:
        assert isinstance(r, ValidRequest) and r.scratch is not None
        assert r.scratch.in_ghcb == (scratch & ~0xFFF == GPA)
    else:
        assert reason(r) is GhcbError.INVALID_SCRATCH_AREA


def test_zero_length_needs_no_scratch():
    r = check(base(SwExit.MMIO_READ, 0xFEB00000, 0, sw_scratch=0))
    assert isinstance(r, ValidRequest) and r.scratch is None
