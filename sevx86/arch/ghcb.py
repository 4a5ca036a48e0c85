"""The GHCB page and the GHCB MSR protocol.

Follows the AMD "SEV-ES Guest-Hypervisor Communication Block Standardization"
specification (publication 56421), protocol versions 1 and 2:

- the GHCB layout (section "GHCB Layout"): a 4 KiB shared page whose save
  area reuses the VMSA offsets of the fields it carries, then SW_EXITCODE,
  SW_EXITINFO1/2 and SW_SCRATCH at 0x390-0x3AF, a valid bitmap at 0x3F0, the
  x87 state GPA at 0x400, a shared buffer at 0x800 and the protocol version
  and usage words at the end of the page;
- the valid bitmap: bit n covers the quadword at offset 8 * n of the save
  area, so a field's bit is its offset divided by 8;
- the GHCB MSR protocol (section "GHCB MSR Protocol"): before a GHCB
  is usable the guest talks to the hypervisor through the GHCB MSR itself,
  GHCBInfo in bits 11:0 and GHCBData in bits 63:12;
- the version-2 answer convention of SW_EXITINFO1 (0 success, 1 inject the
  exception in SW_EXITINFO2, 2 error with a reason code in SW_EXITINFO2).

Codes were cross-checked against Linux ``arch/x86/include/asm/svm.h``
(``struct ghcb``) and ``arch/x86/include/asm/sev-common.h``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag

from sevx86.arch.layout import Field, Layout
from sevx86.arch.vmsa import VMSA

GHCB_SIZE = 0x1000
# The valid bitmap covers the save area 0x000-0x3EF: 126 quadwords in 16 bytes.
GHCB_SAVE_AREA_SIZE = 0x3F0
SHARED_BUFFER_OFFSET = 0x800
SHARED_BUFFER_SIZE = 0x7F0

GHCB_PROTOCOL_MIN = 1
GHCB_PROTOCOL_MAX = 2
GHCB_USAGE_STANDARD = 0  # the only usage this layout describes


def _vmsa_field(name: str) -> Field:
    """The GHCB copy of a VMSA register field, at the VMSA's offset."""
    f = VMSA[name]
    return Field(name, f.offset, f.size)


# Registers the guest may place in (or the hypervisor return through) the
# GHCB, each at its VMSA offset.
GHCB_REGISTER_NAMES: tuple[str, ...] = (
    "cpl",
    "xss",
    "dr7",
    "rip",
    "rsp",
    "rax",
    "rcx",
    "rdx",
    "rbx",
    "rbp",
    "rsi",
    "rdi",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "xcr0",
)

GHCB = Layout(
    "GHCB",
    GHCB_SIZE,
    [
        *(_vmsa_field(name) for name in GHCB_REGISTER_NAMES),
        # These four reuse the VMSA guest_exit_* slots with protocol meaning.
        Field("sw_exit_code", 0x390, 8),
        Field("sw_exit_info_1", 0x398, 8),
        Field("sw_exit_info_2", 0x3A0, 8),
        Field("sw_scratch", 0x3A8, 8, "GPA of the buffer for string IO/MMIO"),
        Field("valid_bitmap", 0x3F0, 16, "bit n: quadword n of the save area valid"),
        Field("x87_state_gpa", 0x400, 8),
        Field("shared_buffer", SHARED_BUFFER_OFFSET, SHARED_BUFFER_SIZE),
        Field("protocol_version", 0xFFA, 2),
        Field("ghcb_usage", 0xFFC, 4),
    ],
)


# --------------------------------------------------------------------------
# Valid bitmap.
# --------------------------------------------------------------------------
def valid_bit(field_name: str) -> int:
    """The valid-bitmap bit of a GHCB save-area field (its offset // 8)."""
    f = GHCB[field_name]
    if f.offset >= GHCB_SAVE_AREA_SIZE:
        raise ValueError(f"GHCB field {field_name} is not in the save area")
    return f.offset // 8


def is_valid(bitmap: int, field_name: str) -> bool:
    """True if ``field_name``'s bit is set in a valid bitmap value."""
    return bool(bitmap >> valid_bit(field_name) & 1)


def set_valid(bitmap: int, *field_names: str) -> int:
    """``bitmap`` with the bits of ``field_names`` set."""
    for name in field_names:
        bitmap |= 1 << valid_bit(name)
    return bitmap


def clear_valid(bitmap: int, *field_names: str) -> int:
    """``bitmap`` with the bits of ``field_names`` cleared."""
    for name in field_names:
        bitmap &= ~(1 << valid_bit(name))
    return bitmap


# --------------------------------------------------------------------------
# GHCB v2 answers in SW_EXITINFO1[31:0] / SW_EXITINFO2.
# --------------------------------------------------------------------------
class ExitInfoResult(IntEnum):
    """What the hypervisor leaves in SW_EXITINFO1[31:0] after a VMGEXIT."""

    OK = 0
    EXCEPTION = 1  # SW_EXITINFO2 holds an EVENTINJ value to deliver
    ERROR = 2  # SW_EXITINFO2 holds a GhcbError reason


class GhcbError(IntEnum):
    """Reason codes in SW_EXITINFO2 when SW_EXITINFO1 is ERROR (GHCB v2)."""

    NOT_REGISTERED = 1  # the GHCB GPA was not the registered one
    INVALID_USAGE = 2  # ghcb_usage is not understood
    INVALID_SCRATCH_AREA = 3  # SW_SCRATCH outside the allowed areas
    MISSING_INPUT = 4  # a required valid-bitmap bit was clear
    INVALID_INPUT = 5  # an input value is not acceptable
    INVALID_EVENT = 6  # SW_EXITCODE is not a supported event


EXIT_INFO_RESULT_MASK = 0xFFFF_FFFF


@dataclass(frozen=True)
class ExitAnswer:
    """A decoded hypervisor answer (SW_EXITINFO1, SW_EXITINFO2)."""

    result: int
    info2: int

    @property
    def ok(self) -> bool:
        return self.result == ExitInfoResult.OK


def error_answer(reason: int) -> tuple[int, int]:
    """(SW_EXITINFO1, SW_EXITINFO2) reporting a GHCB error ``reason``."""
    return int(ExitInfoResult.ERROR), reason


def exception_answer(eventinj: int) -> tuple[int, int]:
    """(SW_EXITINFO1, SW_EXITINFO2) asking the guest to take an exception."""
    return int(ExitInfoResult.EXCEPTION), eventinj


def decode_answer(info1: int, info2: int) -> ExitAnswer:
    """Read the answer convention; only SW_EXITINFO1[31:0] is the result."""
    return ExitAnswer(result=info1 & EXIT_INFO_RESULT_MASK, info2=info2)


# --------------------------------------------------------------------------
# Termination reasons (MSR protocol 0x100 and SwExit.TERMINATE).
# --------------------------------------------------------------------------
class TermReasonSet(IntEnum):
    """Reason-code sets."""

    GENERAL = 0  # defined by the GHCB spec
    LINUX = 1  # used by Linux guests for their own codes


class GeneralTermReason(IntEnum):
    """Reason codes of set 0, defined by the GHCB spec."""

    GENERAL_REQUEST = 0
    PROTOCOL_UNSUPPORTED = 1  # no common SEV-ES/GHCB protocol version
    SNP_UNSUPPORTED = 2  # SEV-SNP features not supported


def sw_terminate_info1(reason_set: int, reason_code: int) -> int:
    """SW_EXITINFO1 of a SwExit.TERMINATE VMGEXIT: set 3:0, code 11:4."""
    _fits(reason_set, 4, "reason set")
    _fits(reason_code, 8, "reason code")
    return reason_set | (reason_code << 4)


def decode_sw_terminate(info1: int) -> tuple[int, int]:
    """(reason set, reason code) from SW_EXITINFO1 of a SwExit.TERMINATE VMGEXIT."""
    return info1 & 0xF, (info1 >> 4) & 0xFF


# --------------------------------------------------------------------------
# GHCB MSR protocol.
# --------------------------------------------------------------------------
GHCB_MSR_INFO_MASK = 0xFFF  # GHCBInfo, bits 11:0
GHCB_MSR_DATA_SHIFT = 12  # GHCBData, bits 63:12
_U64 = (1 << 64) - 1


class GhcbMsr(IntEnum):
    """GHCBInfo codes of the GHCB MSR protocol.

    A request is even and its response is request + 1, except SEV
    information: the hypervisor also leaves its response (0x001) in the MSR
    before the guest first runs, so the request is 0x002.
    """

    SEV_INFO_RESP = 0x001
    SEV_INFO_REQ = 0x002
    CPUID_REQ = 0x004
    CPUID_RESP = 0x005
    AP_RESET_HOLD_REQ = 0x006
    AP_RESET_HOLD_RESP = 0x007
    PREF_GPA_REQ = 0x010
    PREF_GPA_RESP = 0x011
    REG_GPA_REQ = 0x012
    REG_GPA_RESP = 0x013
    PSC_REQ = 0x014
    PSC_RESP = 0x015
    VMPL_REQ = 0x016
    VMPL_RESP = 0x017
    HV_FEATURES_REQ = 0x080
    HV_FEATURES_RESP = 0x081
    TERM_REQ = 0x100


class CpuidReg(IntEnum):
    """Register select of the CPUID request, GHCBData bits 31:30."""

    EAX = 0
    EBX = 1
    ECX = 2
    EDX = 3


class PscOp(IntEnum):
    """SNP page-state-change operation, GHCBData bits 55:52."""

    PRIVATE = 1
    SHARED = 2


class HvFeature(IntFlag):
    """Hypervisor feature bitmap (HV_FEATURES response, GHCB v2)."""

    SNP = 1 << 0
    SNP_AP_CREATION = 1 << 1
    SNP_RESTRICTED_INJECTION = 1 << 2
    SNP_MULTI_VMPL = 1 << 5


GFN_MASK = (1 << 52) - 1  # GHCBData[63:12] holds a 52-bit frame number
PREF_GPA_NONE = GFN_MASK  # "no preferred GHCB GPA"

CPUID_REG_SHIFT = 30
CPUID_FN_SHIFT = 32
SEV_INFO_MAX_SHIFT = 48
SEV_INFO_MIN_SHIFT = 32
SEV_INFO_CBIT_SHIFT = 24
TERM_SET_SHIFT = 12  # bits 15:12
TERM_CODE_SHIFT = 16  # bits 23:16
PSC_GFN_MASK = (1 << 40) - 1  # bits 51:12
PSC_OP_SHIFT = 52  # bits 55:52
VMPL_SHIFT = 32  # bits 39:32 (request), 63:32 (response error code)


def _fits(value: int, bits: int, what: str) -> None:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{what} {value:#x} does not fit in {bits} bits")


def msr_encode(code: int, data: int = 0) -> int:
    """A GHCB MSR value from GHCBInfo ``code`` and GHCBData ``data``."""
    _fits(code, 12, "GHCBInfo")
    _fits(data, 52, "GHCBData")
    return (data << GHCB_MSR_DATA_SHIFT) | code


def decode_msr(value: int) -> tuple[int, int]:
    """(GHCBInfo, GHCBData) of a GHCB MSR value; a known GHCBInfo comes
    back as a GhcbMsr member."""
    value &= _U64
    code = value & GHCB_MSR_INFO_MASK
    data = value >> GHCB_MSR_DATA_SHIFT
    try:
        return GhcbMsr(code), data
    except ValueError:
        return code, data


def msr_info(value: int) -> int:
    """GHCBInfo (bits 11:0) of a GHCB MSR value."""
    return value & GHCB_MSR_INFO_MASK


# SEV information ----------------------------------------------------------
@dataclass(frozen=True)
class SevInfo:
    """Decoded SEV information response."""

    max_version: int
    min_version: int
    cbitpos: int


def msr_sev_info_request() -> int:
    return int(GhcbMsr.SEV_INFO_REQ)


def msr_sev_info_response(
    max_version: int = GHCB_PROTOCOL_MAX,
    min_version: int = GHCB_PROTOCOL_MIN,
    cbitpos: int = 51,
) -> int:
    """SEV information: max version 63:48, min version 47:32, C-bit 31:24."""
    _fits(max_version, 16, "max protocol version")
    _fits(min_version, 16, "min protocol version")
    _fits(cbitpos, 8, "C-bit position")
    return (
        (max_version << SEV_INFO_MAX_SHIFT)
        | (min_version << SEV_INFO_MIN_SHIFT)
        | (cbitpos << SEV_INFO_CBIT_SHIFT)
        | GhcbMsr.SEV_INFO_RESP
    )


def decode_sev_info(value: int) -> SevInfo:
    _expect(value, GhcbMsr.SEV_INFO_RESP)
    return SevInfo(
        max_version=(value >> SEV_INFO_MAX_SHIFT) & 0xFFFF,
        min_version=(value >> SEV_INFO_MIN_SHIFT) & 0xFFFF,
        cbitpos=(value >> SEV_INFO_CBIT_SHIFT) & 0xFF,
    )


# CPUID ---------------------------------------------------------------------
def msr_cpuid_request(fn: int, reg: int) -> int:
    """CPUID request: function 63:32, register select 31:30."""
    _fits(fn, 32, "CPUID function")
    _fits(reg, 2, "CPUID register select")
    return (fn << CPUID_FN_SHIFT) | (reg << CPUID_REG_SHIFT) | GhcbMsr.CPUID_REQ


def decode_cpuid_request(value: int) -> tuple[int, CpuidReg]:
    """(function, register) of a CPUID request."""
    _expect(value, GhcbMsr.CPUID_REQ)
    return (value >> CPUID_FN_SHIFT) & 0xFFFF_FFFF, CpuidReg((value >> CPUID_REG_SHIFT) & 3)


def msr_cpuid_response(result: int, reg: int) -> int:
    """CPUID response: the 32-bit register value in 63:32.

    The register select is echoed in bits 31:30 as KVM does; OVMF's early
    #VC handler checks it (docs/design.md, "Exit path").
    """
    _fits(result, 32, "CPUID result")
    _fits(reg, 2, "CPUID register select")
    return (result << CPUID_FN_SHIFT) | (reg << CPUID_REG_SHIFT) | GhcbMsr.CPUID_RESP


def decode_cpuid_response(value: int) -> tuple[int, CpuidReg]:
    """(register value, echoed register select) of a CPUID response."""
    _expect(value, GhcbMsr.CPUID_RESP)
    return (value >> CPUID_FN_SHIFT) & 0xFFFF_FFFF, CpuidReg((value >> CPUID_REG_SHIFT) & 3)


# AP reset hold -------------------------------------------------------------
def msr_ap_reset_hold_request() -> int:
    return int(GhcbMsr.AP_RESET_HOLD_REQ)


def msr_ap_reset_hold_response(wake: bool = True) -> int:
    """AP reset hold response: GHCBData non-zero releases the AP."""
    return msr_encode(GhcbMsr.AP_RESET_HOLD_RESP, 1 if wake else 0)


# GHCB GPA: preferred and register -----------------------------------------
def msr_pref_gpa_request() -> int:
    return int(GhcbMsr.PREF_GPA_REQ)


def msr_pref_gpa_response(gfn: int = PREF_GPA_NONE) -> int:
    return msr_encode(GhcbMsr.PREF_GPA_RESP, gfn)


def msr_register_gpa_request(gfn: int) -> int:
    """Register the GHCB at frame ``gfn`` (GHCBData = GFN)."""
    return msr_encode(GhcbMsr.REG_GPA_REQ, gfn)


def msr_register_gpa_response(gfn: int) -> int:
    """Registration answer; the guest compares the GFN with its request."""
    return msr_encode(GhcbMsr.REG_GPA_RESP, gfn)


def decode_gfn(value: int, code: GhcbMsr) -> int:
    """The GFN of a preferred/register GPA message with GHCBInfo ``code``."""
    _expect(value, code)
    return (value >> GHCB_MSR_DATA_SHIFT) & GFN_MASK


# SNP page state change -----------------------------------------------------
def msr_psc_request(gfn: int, op: int) -> int:
    """Page state change of one 4 KiB page: op 55:52, GFN 51:12."""
    _fits(gfn, 40, "PSC GFN")
    _fits(op, 4, "PSC operation")
    return (op << PSC_OP_SHIFT) | (gfn << GHCB_MSR_DATA_SHIFT) | GhcbMsr.PSC_REQ


def decode_psc_request(value: int) -> tuple[int, int]:
    """(gfn, op) of a page state change request."""
    _expect(value, GhcbMsr.PSC_REQ)
    return (value >> GHCB_MSR_DATA_SHIFT) & PSC_GFN_MASK, (value >> PSC_OP_SHIFT) & 0xF


def msr_psc_response(error: int = 0) -> int:
    """Page state change answer: error code in 63:32 (0 = success)."""
    _fits(error, 32, "PSC error")
    return (error << 32) | GhcbMsr.PSC_RESP


# SNP run at VMPL -----------------------------------------------------------
def msr_vmpl_request(vmpl: int) -> int:
    _fits(vmpl, 8, "VMPL")
    return (vmpl << VMPL_SHIFT) | GhcbMsr.VMPL_REQ


def msr_vmpl_response(error: int = 0) -> int:
    _fits(error, 32, "VMPL error")
    return (error << VMPL_SHIFT) | GhcbMsr.VMPL_RESP


# Hypervisor features -------------------------------------------------------
def msr_hv_features_request() -> int:
    return int(GhcbMsr.HV_FEATURES_REQ)


def msr_hv_features_response(features: int) -> int:
    """Feature bitmap in GHCBData (63:12)."""
    return msr_encode(GhcbMsr.HV_FEATURES_RESP, features)


def decode_hv_features(value: int) -> HvFeature:
    _expect(value, GhcbMsr.HV_FEATURES_RESP)
    return HvFeature(value >> GHCB_MSR_DATA_SHIFT)


# Termination ---------------------------------------------------------------
def msr_terminate(reason_set: int, reason_code: int) -> int:
    """Termination request: reason set 15:12, reason code 23:16."""
    _fits(reason_set, 4, "reason set")
    _fits(reason_code, 8, "reason code")
    return (reason_set << TERM_SET_SHIFT) | (reason_code << TERM_CODE_SHIFT) | GhcbMsr.TERM_REQ


def decode_terminate(value: int) -> tuple[int, int]:
    """(reason set, reason code) of a termination request."""
    _expect(value, GhcbMsr.TERM_REQ)
    return (value >> TERM_SET_SHIFT) & 0xF, (value >> TERM_CODE_SHIFT) & 0xFF


def _expect(value: int, code: int) -> None:
    if value & GHCB_MSR_INFO_MASK != code:
        raise ValueError(
            f"GHCB MSR value {value:#x} has GHCBInfo {value & GHCB_MSR_INFO_MASK:#x},"
            f" expected {code:#x}"
        )
