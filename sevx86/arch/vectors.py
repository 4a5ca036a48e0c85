"""x86 exception and interrupt vector numbers.

Follows AMD APM vol 2 (24593), section 8.2 "Vectors" and table 8-1, plus the
SEV-ES additions: #VC (vector 29) from APM vol 2 section 15.35.5, #HV (28)
from the SEV-SNP restricted-injection chapter and #SX (30) from section 8.2.
The engine delivers every exception itself (Unicorn does not use the guest
IDT), so it needs to know which vectors push an error code.
"""

from __future__ import annotations

from enum import IntEnum


class Vector(IntEnum):
    """Architectural exception vectors (APM vol 2, table 8-1)."""

    DE = 0  # divide error
    DB = 1  # debug
    NMI = 2  # non-maskable interrupt
    BP = 3  # breakpoint (INT3)
    OF = 4  # overflow (INTO)
    BR = 5  # bound range
    UD = 6  # invalid opcode
    NM = 7  # device not available
    DF = 8  # double fault
    # Vector 9 (coprocessor segment overrun) is reserved on AMD64.
    TS = 10  # invalid TSS
    NP = 11  # segment not present
    SS = 12  # stack fault
    GP = 13  # general protection
    PF = 14  # page fault
    # Vector 15 is reserved.
    MF = 16  # x87 floating-point exception
    AC = 17  # alignment check
    MC = 18  # machine check
    XM = 19  # SIMD floating-point exception
    VE = 20  # virtualization exception (Intel; reserved on AMD, kept for names)
    CP = 21  # control-protection (CET)
    HV = 28  # hypervisor injection exception (SNP restricted injection)
    VC = 29  # VMM communication exception (SEV-ES)
    SX = 30  # security exception


# Vectors for which the processor pushes an error code when it delivers the
# exception (APM vol 2, table 8-1 "Error Code" column). #DF always pushes 0.
# #HV carries no error code; #VC carries the SVM exit code of the event.
ERROR_CODE_VECTORS: frozenset[int] = frozenset(
    {
        Vector.DF,
        Vector.TS,
        Vector.NP,
        Vector.SS,
        Vector.GP,
        Vector.PF,
        Vector.AC,
        Vector.CP,
        Vector.VC,
        Vector.SX,
    }
)

# Vectors 0-31 are reserved for exceptions; external interrupts use 32-255.
FIRST_USER_VECTOR = 32
NUM_VECTORS = 256


def has_error_code(vector: int) -> bool:
    """True if delivering ``vector`` as an exception pushes an error code."""
    return vector in ERROR_CODE_VECTORS


def vector_name(vector: int) -> str:
    """Mnemonic for an exception vector ("GP", "VC"), or its number."""
    try:
        return Vector(vector).name
    except ValueError:
        return str(vector)
