"""Model-specific register numbers and the bits we use.

Numbers follow AMD APM vol 2 (24593), appendix A "MSR Cross-Reference", the
SEV-ES chapter (section 15.35: SEV_ES_GHCB, SEV_STATUS) and the SVM chapter
(VM_CR, VM_HSAVE_PA), cross-checked against Linux
``arch/x86/include/asm/msr-index.h``. EFER bits follow APM vol 2 section 3.1.7
"Extended Feature Enable Register".
"""

from __future__ import annotations

from enum import IntEnum, IntFlag


class Msr(IntEnum):
    """MSR numbers (ECX operand of RDMSR/WRMSR)."""

    TSC = 0x0000_0010
    APIC_BASE = 0x0000_001B
    MTRRCAP = 0x0000_00FE
    SYSENTER_CS = 0x0000_0174
    SYSENTER_ESP = 0x0000_0175
    SYSENTER_EIP = 0x0000_0176
    MISC_ENABLE = 0x0000_01A0  # Intel-defined; firmware probes it
    DEBUGCTL = 0x0000_01D9
    MTRR_PHYSBASE0 = 0x0000_0200  # variable-range pairs: base 0x200 + 2n
    MTRR_PHYSMASK0 = 0x0000_0201  # mask 0x201 + 2n
    MTRR_FIX_64K_00000 = 0x0000_0250
    PAT = 0x0000_0277
    MTRR_DEF_TYPE = 0x0000_02FF
    X2APIC_BASE = 0x0000_0800  # first of the x2APIC MSR range
    XSS = 0x0000_0DA0
    EFER = 0xC000_0080
    STAR = 0xC000_0081
    LSTAR = 0xC000_0082
    CSTAR = 0xC000_0083
    SFMASK = 0xC000_0084
    FS_BASE = 0xC000_0100
    GS_BASE = 0xC000_0101
    KERNEL_GS_BASE = 0xC000_0102
    TSC_AUX = 0xC000_0103
    SYSCFG = 0xC001_0010
    VM_CR = 0xC001_0114
    VM_HSAVE_PA = 0xC001_0117
    # SEV-ES: the GHCB MSR is read/written by the guest without an exit
    # (the hardware keeps it in the VMSA) and carries the GHCB MSR protocol.
    SEV_ES_GHCB = 0xC001_0130
    # Read-only in the guest: which SEV features are active.
    SEV_STATUS = 0xC001_0131


# STAR (MSR 0xC000_0081) fields, APM vol 2, 6.1.1 "SYSCALL and SYSRET": bits
# 31:0 the legacy-mode SYSCALL target EIP, 47:32 the selector SYSCALL loads
# into CS (SS is that + 8), 63:48 the selector base SYSRET returns through.
STAR_EIP_MASK = 0xFFFF_FFFF
STAR_SYSCALL_CS_SHIFT = 32
STAR_SYSRET_CS_SHIFT = 48

# x2APIC registers occupy MSRs 0x800-0x8FF (APIC register offset >> 4).
X2APIC_FIRST = 0x800
X2APIC_LAST = 0x8FF


class Efer(IntFlag):
    """EFER (MSR 0xC000_0080) bits, APM vol 2 section 3.1.7."""

    SCE = 1 << 0  # SYSCALL/SYSRET enable
    LME = 1 << 8  # long mode enable
    LMA = 1 << 10  # long mode active (read-only to software)
    NXE = 1 << 11  # no-execute enable
    SVME = 1 << 12  # secure virtual machine enable (must be set in a VMSA)
    LMSLE = 1 << 13  # long mode segment limit enable
    FFXSR = 1 << 14  # fast FXSAVE/FXRSTOR
    TCE = 1 << 15  # translation cache extension


class SevStatus(IntFlag):
    """SEV_STATUS (MSR 0xC001_0131) bits, APM vol 2 section 15.34 (SEV)."""

    SEV_ENABLED = 1 << 0
    SEV_ES_ENABLED = 1 << 1
    SNP_ENABLED = 1 << 2


class ApicBase(IntFlag):
    """APIC_BASE (MSR 0x1B) bits."""

    BSP = 1 << 8  # this processor is the bootstrap processor
    X2APIC_ENABLE = 1 << 10
    APIC_ENABLE = 1 << 11


# APIC_BASE bits 51:12 hold the APIC MMIO page frame; reset value 0xFEE00000.
APIC_BASE_ADDR_MASK = 0x000F_FFFF_FFFF_F000
APIC_DEFAULT_BASE = 0xFEE0_0000

# PAT reset value (APM vol 2, page attribute table section): WB, WT, UC-,
# UC, repeated in both halves.
PAT_RESET = 0x0007_0406_0007_0406

# VM_CR: SVMDIS, when set, makes EFER.SVME writes fault (APM vol 2, SVM
# chapter, VM_CR MSR).
VM_CR_SVMDIS = 1 << 4
