"""What the guest_asm #VC handlers promise: their termination reasons and defaults.

The GHCB specification (AMD 56421, "Termination Request") defines reason
set 0 only (general request, protocol unsupported, SNP unsupported); Linux
and OVMF both put their own codes in set 1. The handlers in guest_asm/ use
set 0 where the spec has a fitting code and their own set
``GUEST_ASM_REASON_SET`` otherwise, so a host or a test can tell which
check fired. ``sevx86.asm.gen_includes`` writes these numbers into
``guest_asm/include/vc_abi.inc``; the assembly never retypes them.
"""

from __future__ import annotations

from enum import IntEnum

# Reason-code set of the guest_asm handlers (not 0: the spec's; not 1: Linux/OVMF).
GUEST_ASM_REASON_SET = 2


class VcReason(IntEnum):
    """Reason codes of set ``GUEST_ASM_REASON_SET``."""

    UNSUPPORTED_EXIT = 1  # a #VC error code the handler does not serve
    HV_ERROR = 2  # SW_EXITINFO1 said error (2) or held an unknown value
    MISSING_OUTPUT = 3  # the hypervisor left an output register's valid bit clear
    DECODE = 4  # the bytes at RIP are not an instruction of that exit code
    MMIO_PRIVATE = 5  # MMIO through a C=1 mapping: the host must not see it
    BAD_EXCEPTION = 6  # asked to take an exception other than #GP/#UD, or no gate
    NO_GHCB = 7  # no GHCB address was set before the first #VC
    NESTED = 8  # a #VC while the handler itself was running
    MSR_PROTOCOL = 9  # wrong GHCB MSR protocol response code or register echo
    CPUID_SANITY = 10  # CPUID answers that deny the SEV the guest runs under
    PAGE_WALK = 11  # the MMIO address has no present mapping
    NO_CBIT = 12  # MMIO before the C-bit position is known
    AP_NO_JUMP_TABLE = 13  # an AP was woken but the AP jump table has no entry
    AP_NOT_WOKEN = 14  # AP reset hold returned without a wake-up (a host error)


# What each reason means for the person reading a failed run (guest_asm/README.md
# has the same table): which side broke the protocol, and how.
VC_REASON_TEXT: dict[int, str] = {
    VcReason.UNSUPPORTED_EXIT: "the #VC carried an exit code the handler does not serve",
    VcReason.HV_ERROR: (
        "the hypervisor answered the request with SW_EXITINFO1 neither 0 (done) "
        "nor 1 (inject an exception): it refused it or broke the protocol"
    ),
    VcReason.MISSING_OUTPUT: (
        "the hypervisor's answer lacks the valid bit of a register the instruction "
        "returns, so the handler will not use a stale value"
    ),
    VcReason.DECODE: (
        "the bytes at RIP are not an instruction that raises that exit code "
        "(a #VC the hypervisor injected, or code the handler cannot decode)"
    ),
    VcReason.MMIO_PRIVATE: "MMIO through a C=1 mapping: the access would hand private data out",
    VcReason.BAD_EXCEPTION: (
        "the hypervisor asked to inject an exception other than #GP or #UD, "
        "or the guest has no IDT gate for it"
    ),
    VcReason.NO_GHCB: "a #VC came before the program set its GHCB address",
    VcReason.NESTED: (
        "a #VC inside the #VC handler (the handler is not re-entrant: an instruction "
        "it runs, or a hypervisor that injects #VC)"
    ),
    VcReason.MSR_PROTOCOL: "a GHCB MSR protocol answer with the wrong code or register echo",
    VcReason.CPUID_SANITY: "CPUID denies the SEV features the guest runs with",
    VcReason.PAGE_WALK: "the MMIO address is not mapped in the guest's page tables",
    VcReason.NO_CBIT: "MMIO before the C-bit position is known",
    VcReason.AP_NO_JUMP_TABLE: "an AP was woken but the AP jump table has no entry",
    VcReason.AP_NOT_WOKEN: "AP reset hold returned without a wake-up (a hypervisor error)",
}


class VcPercpu(IntEnum):
    """The per-vCPU state of ``vc_handler`` built with ``%define VC_PERCPU``.

    Offsets of qwords in a block that sits right after each vCPU's 64-bit TSS
    (``VC_PERCPU_TSS_OFFSET``); the handler finds it with STR and SGDT, which
    never exit, so every vCPU gets its own GHCB, DR7 shadow and nesting flag.
    Without ``VC_PERCPU`` the same fields are the labels ``vc_ghcb_va`` ...
    of the program's single data block.
    """

    GHCB_VA = 0x00
    GHCB_PA = 0x08
    DR7 = 0x10
    COUNT = 0x18
    ACTIVE = 0x20
    FORWARD_TARGET = 0x28


VC_PERCPU_SIZE = 0x30
VC_PERCPU_TSS_OFFSET = 0x68  # the 64-bit TSS is 0x68 bytes (APM vol 2, 12.2.5)


# Where the #VC handlers keep state when a program does not say otherwise.
DR7_RESET = 0x400  # DR7 after RESET (APM vol 2, debug registers): bit 10 reads as 1
# DR7 bits a MOV to DR7 may set (Linux masks writes the same way): the rest
# of the low 32 bits are reserved, and bit 10 always reads as one.
DR7_WRITABLE = 0xFFFF_23FF
