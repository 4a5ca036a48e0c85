"""Control-register and RFLAGS bits.

CR0, CR4 and RFLAGS bits follow AMD APM vol 2 (24593) section 3.1
"System-Control Registers" (the CR0, CR4 and RFLAGS register figures).
"""

from __future__ import annotations

from enum import IntFlag


class Cr0(IntFlag):
    """CR0 bits."""

    PE = 1 << 0  # protection enable
    MP = 1 << 1  # monitor coprocessor
    EM = 1 << 2  # emulation
    TS = 1 << 3  # task switched
    ET = 1 << 4  # extension type: reads as 1 on AMD64, keep it set on writes
    NE = 1 << 5  # numeric error
    WP = 1 << 16  # write protect
    AM = 1 << 18  # alignment mask
    NW = 1 << 29  # not write-through
    CD = 1 << 30  # cache disable
    PG = 1 << 31  # paging


# CR0 after RESET: CD | NW | ET = 0x6000_0010 (APM vol 2 chapter 14, initial
# processor state table).
CR0_RESET = Cr0.CD | Cr0.NW | Cr0.ET


class Cr4(IntFlag):
    """CR4 bits."""

    VME = 1 << 0  # virtual-8086 mode extensions
    PVI = 1 << 1  # protected-mode virtual interrupts
    TSD = 1 << 2  # time stamp disable
    DE = 1 << 3  # debugging extensions
    PSE = 1 << 4  # page size extensions
    PAE = 1 << 5  # physical address extension
    MCE = 1 << 6  # machine check enable
    PGE = 1 << 7  # page global enable
    PCE = 1 << 8  # performance counter enable
    OSFXSR = 1 << 9  # OS supports FXSAVE/FXRSTOR
    OSXMMEXCPT = 1 << 10  # OS supports #XM
    UMIP = 1 << 11  # user-mode instruction prevention
    LA57 = 1 << 12  # 5-level paging
    FSGSBASE = 1 << 16  # RD/WR FS/GS BASE instructions
    PCIDE = 1 << 17  # process-context identifiers
    OSXSAVE = 1 << 18  # XSAVE and XGETBV/XSETBV enabled
    SMEP = 1 << 20  # supervisor-mode execution prevention
    SMAP = 1 << 21  # supervisor-mode access prevention
    PKE = 1 << 22  # protection keys
    CET = 1 << 23  # control-flow enforcement


class Rflags(IntFlag):
    """RFLAGS bits."""

    CF = 1 << 0
    FIXED1 = 1 << 1  # reserved, always reads as 1
    PF = 1 << 2
    AF = 1 << 4
    ZF = 1 << 6
    SF = 1 << 7
    TF = 1 << 8
    IF = 1 << 9
    DF = 1 << 10
    OF = 1 << 11
    IOPL = 3 << 12  # two-bit field: I/O privilege level
    NT = 1 << 14
    RF = 1 << 16
    VM = 1 << 17
    AC = 1 << 18
    VIF = 1 << 19
    VIP = 1 << 20
    ID = 1 << 21


RFLAGS_IOPL_SHIFT = 12
# RFLAGS after RESET: only the always-one bit.
RFLAGS_RESET = int(Rflags.FIXED1)

# Arithmetic status flags (what an emulated CMP/TEST rewrites).
RFLAGS_STATUS = Rflags.CF | Rflags.PF | Rflags.AF | Rflags.ZF | Rflags.SF | Rflags.OF
