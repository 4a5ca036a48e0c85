"""SVM exit codes and SEV-ES software exit codes.

Hardware exit codes follow AMD APM vol 2 (24593), appendix C, table C-1 "SVM
Intercept Codes", cross-checked against Linux
``arch/x86/include/uapi/asm/svm.h``. Software-defined exit codes (the
non-automatic events a guest requests through the GHCB ``SW_EXITCODE`` field)
follow the GHCB specification (AMD 56421, versions 1 and 2), the table of
supported non-automatic events in the section on invoking VMGEXIT.

The same number is the #VC error code of a non-automatic exit (APM vol 2,
section 15.35, SEV-ES) and the EXITCODE of the VMCB control area for an
automatic exit.
"""

from __future__ import annotations

from enum import IntEnum
from functools import lru_cache

from sevx86.arch.vectors import vector_name

_U64 = (1 << 64) - 1


class SvmExit(IntEnum):
    """VMEXIT codes written to VMCB EXITCODE (APM vol 2, table C-1).

    The four negative error codes (VMEXIT_INVALID = -1, BUSY = -2, ...) are
    stored here as the unsigned 64-bit values found in the EXITCODE field,
    because that is what reading the field (``VMCB_CONTROL["exit_code"]``)
    returns; compare with ``SvmExit.INVALID``, never with -1.
    """

    # 0x00-0x0F: MOV from CRn; 0x10-0x1F: MOV to CRn. Only the CRs that exist
    # are named; cr_read()/cr_write() compute any of the sixteen.
    CR0_READ = 0x00
    CR2_READ = 0x02
    CR3_READ = 0x03
    CR4_READ = 0x04
    CR8_READ = 0x08
    CR0_WRITE = 0x10
    CR2_WRITE = 0x12
    CR3_WRITE = 0x13
    CR4_WRITE = 0x14
    CR8_WRITE = 0x18
    # 0x20-0x2F: MOV from DRn; 0x30-0x3F: MOV to DRn.
    DR0_READ = 0x20
    DR1_READ = 0x21
    DR2_READ = 0x22
    DR3_READ = 0x23
    DR4_READ = 0x24
    DR5_READ = 0x25
    DR6_READ = 0x26
    DR7_READ = 0x27
    DR0_WRITE = 0x30
    DR1_WRITE = 0x31
    DR2_WRITE = 0x32
    DR3_WRITE = 0x33
    DR4_WRITE = 0x34
    DR5_WRITE = 0x35
    DR6_WRITE = 0x36
    DR7_WRITE = 0x37
    # 0x40-0x5F: exception vector 0-31 (excp(vector) computes them).
    EXCP_BASE = 0x40
    EXCP_LAST = 0x5F
    INTR = 0x60
    NMI = 0x61
    SMI = 0x62
    INIT = 0x63
    VINTR = 0x64
    CR0_SEL_WRITE = 0x65
    IDTR_READ = 0x66
    GDTR_READ = 0x67
    LDTR_READ = 0x68
    TR_READ = 0x69
    IDTR_WRITE = 0x6A
    GDTR_WRITE = 0x6B
    LDTR_WRITE = 0x6C
    TR_WRITE = 0x6D
    RDTSC = 0x6E
    RDPMC = 0x6F
    PUSHF = 0x70
    POPF = 0x71
    CPUID = 0x72
    RSM = 0x73
    IRET = 0x74
    SWINT = 0x75
    INVD = 0x76
    PAUSE = 0x77
    HLT = 0x78
    INVLPG = 0x79
    INVLPGA = 0x7A
    IOIO = 0x7B
    MSR = 0x7C
    TASK_SWITCH = 0x7D
    FERR_FREEZE = 0x7E
    SHUTDOWN = 0x7F
    VMRUN = 0x80
    VMMCALL = 0x81
    VMLOAD = 0x82
    VMSAVE = 0x83
    STGI = 0x84
    CLGI = 0x85
    SKINIT = 0x86
    RDTSCP = 0x87
    ICEBP = 0x88
    WBINVD = 0x89
    MONITOR = 0x8A
    MWAIT = 0x8B
    MWAIT_COND = 0x8C
    XSETBV = 0x8D
    RDPRU = 0x8E
    # SEV-ES "trap" exits: reported after the write completed, with the new
    # value in EXITINFO1 (APM vol 2, section 15.35, control register write traps).
    EFER_WRITE_TRAP = 0x8F
    # 0x90-0x9F: CRn write traps (cr_write_trap(n) computes any of them).
    CR0_WRITE_TRAP = 0x90
    CR2_WRITE_TRAP = 0x92
    CR3_WRITE_TRAP = 0x93
    CR4_WRITE_TRAP = 0x94
    CR8_WRITE_TRAP = 0x98
    INVLPGB = 0xA0
    INVLPGB_ILLEGAL = 0xA1
    INVPCID = 0xA2
    MCOMMIT = 0xA3
    TLBSYNC = 0xA4
    BUSLOCK = 0xA5
    IDLE_HLT = 0xA6
    NPF = 0x400
    AVIC_INCOMPLETE_IPI = 0x401
    AVIC_NOACCEL = 0x402
    VMGEXIT = 0x403
    # VMRUN failures (negative in the APM, unsigned 64-bit here).
    INVALID = _U64  # -1: invalid guest state in the VMCB (or a VMSA check failed)
    BUSY = _U64 - 1  # -2: the VMSA's BUSY bit was set
    IDLE_REQUIRED = _U64 - 2  # -3: sibling thread not idle
    INVALID_PMC = _U64 - 3  # -4: invalid PMC state


class SwExit(IntEnum):
    """Software-defined exit codes for VMGEXIT (GHCB spec 56421, NAE event table).

    These go in the GHCB ``SW_EXITCODE`` field; the automatic-exit codes that
    a #VC handler forwards (CPUID, IOIO, MSR, ...) are SvmExit values.
    """

    MMIO_READ = 0x8000_0001
    MMIO_WRITE = 0x8000_0002
    NMI_COMPLETE = 0x8000_0003
    AP_HLT_LOOP = 0x8000_0004  # "AP Reset Hold" in the spec
    AP_JUMP_TABLE = 0x8000_0005
    # GHCB protocol version 2 (SEV-SNP) additions.
    SNP_PAGE_STATE_CHANGE = 0x8000_0010
    GUEST_REQUEST = 0x8000_0011
    EXT_GUEST_REQUEST = 0x8000_0012
    AP_CREATION = 0x8000_0013
    SNP_RUN_VMPL = 0x8000_0018
    HV_FEATURES = 0x8000_FFFD
    TERMINATE = 0x8000_FFFE  # "Termination Request"
    UNSUPPORTED = 0x8000_FFFF  # guest reports an event it cannot handle


# SW_EXITINFO1 sub-functions of SwExit.AP_JUMP_TABLE (GHCB spec, AP jump table).
AP_JUMP_TABLE_SET = 0
AP_JUMP_TABLE_GET = 1

# SW_EXITINFO1[31:0] sub-functions of SwExit.AP_CREATION (GHCB spec v2, AP creation).
AP_CREATE_ON_INIT = 0
AP_CREATE = 1
AP_DESTROY = 2

# EXITINFO1 of an SvmExit.MSR exit: which instruction (APM vol 2, 15.11).
MSR_EXITINFO1_RDMSR = 0
MSR_EXITINFO1_WRMSR = 1

# Software may use exit codes from here up for its own purposes (APM
# table C-1: "reserved for software"); the hypervisor never sees them from
# hardware.
SVM_EXIT_SW = 0xF000_0000

NUM_CONTROL_REGISTERS = 16
NUM_DEBUG_REGISTERS = 16
NUM_EXCEPTION_EXITS = 32


def _check(index: int, limit: int, what: str) -> None:
    if not 0 <= index < limit:
        raise ValueError(f"{what} {index} out of range 0..{limit - 1}")


def cr_read(n: int) -> int:
    """Exit code of an intercepted MOV from CRn."""
    _check(n, NUM_CONTROL_REGISTERS, "CR")
    return 0x00 + n


def cr_write(n: int) -> int:
    """Exit code of an intercepted MOV to CRn (before the write)."""
    _check(n, NUM_CONTROL_REGISTERS, "CR")
    return 0x10 + n


def dr_read(n: int) -> int:
    """Exit code of an intercepted MOV from DRn."""
    _check(n, NUM_DEBUG_REGISTERS, "DR")
    return 0x20 + n


def dr_write(n: int) -> int:
    """Exit code of an intercepted MOV to DRn."""
    _check(n, NUM_DEBUG_REGISTERS, "DR")
    return 0x30 + n


def excp(vector: int) -> int:
    """Exit code of an intercepted exception ``vector`` (0-31)."""
    _check(vector, NUM_EXCEPTION_EXITS, "exception vector")
    return SvmExit.EXCP_BASE + vector


def cr_write_trap(n: int) -> int:
    """Exit code of a SEV-ES CRn write trap (after the write)."""
    _check(n, NUM_CONTROL_REGISTERS, "CR")
    return SvmExit.CR0_WRITE_TRAP + n


def cr_write_trap_number(code: int) -> int:
    """n of the CRn write trap exit ``code`` (the inverse of ``cr_write_trap``)."""
    n = code - SvmExit.CR0_WRITE_TRAP
    _check(n, NUM_CONTROL_REGISTERS, "CR write trap")
    return n


# Every CRn write trap exit (0x90-0x9F): automatic exits under SEV-ES.
CR_WRITE_TRAPS: tuple[int, ...] = tuple(cr_write_trap(n) for n in range(NUM_CONTROL_REGISTERS))

# The instruction intercepts that become non-automatic exits under SEV-ES:
# the guest sees #VC and asks through the GHCB (GHCB spec 56421, "NAE
# events"; APM vol 2, 15.35.4). Without SEV-ES the host serves them directly.
NAE_INSTRUCTION_EXITS: tuple[SvmExit, ...] = (
    SvmExit.CPUID,
    SvmExit.IOIO,
    SvmExit.MSR,
    SvmExit.RDTSC,
    SvmExit.RDTSCP,
    SvmExit.RDPMC,
    SvmExit.INVD,
    SvmExit.WBINVD,
    SvmExit.VMMCALL,
    SvmExit.MONITOR,
    SvmExit.MWAIT,
    SvmExit.DR7_READ,
    SvmExit.DR7_WRITE,
)


# Cached: the run loop names every exit (counters, traces), a handful of
# codes over and over. Bounded, since a guest picks GHCB exit codes freely.
@lru_cache(maxsize=1024)
def exit_name(code: int) -> str:
    """A readable name for any SVM or software exit code.

    ``exit_name(0x72) == "CPUID"``, ``exit_name(0x94) == "CR4_WRITE_TRAP"``,
    ``exit_name(0x4D) == "EXCP_GP"``, ``exit_name(0x80000001) ==
    "MMIO_READ"``; unknown codes come back as hex. Negative codes are read
    as their 64-bit two's complement (``-1`` is ``"INVALID"``).
    """
    code &= _U64
    # Ranges first: their enum members (EXCP_BASE, EXCP_LAST) are aliases
    # of entries with a more useful name.
    if 0x00 <= code <= 0x0F:
        return f"CR{code}_READ"
    if 0x10 <= code <= 0x1F:
        return f"CR{code - 0x10}_WRITE"
    if 0x20 <= code <= 0x2F:
        return f"DR{code - 0x20}_READ"
    if 0x30 <= code <= 0x3F:
        return f"DR{code - 0x30}_WRITE"
    if SvmExit.EXCP_BASE <= code <= SvmExit.EXCP_LAST:
        return f"EXCP_{vector_name(code - SvmExit.EXCP_BASE)}"
    if code in CR_WRITE_TRAPS:
        return f"CR{code - SvmExit.CR0_WRITE_TRAP}_WRITE_TRAP"
    for enum in (SvmExit, SwExit):
        try:
            return enum(code).name
        except ValueError:
            pass
    return f"{code:#x}"
