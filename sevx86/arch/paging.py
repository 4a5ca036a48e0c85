"""Long-mode page-table entries and the #PF error code.

Follows AMD APM vol 2 (24593) chapter 5 "Page Translation and Protection"
(sections "Long-Mode Page Translation" for 4 KiB / 2 MiB / 1 GiB pages and
"Page-Translation-Table Entry Fields") and chapter 8 ("#PF--Page-Fault
Exception" and "Page-Fault Error Code"). The C-bit is not a fixed PTE bit: its
position comes from CPUID 0x8000_001F EBX (see ``sevx86.arch.cpuid``).
"""

from __future__ import annotations

from enum import IntFlag


class Pte(IntFlag):
    """Bits common to PML4E/PDPE/PDE/PTE entries."""

    P = 1 << 0  # present
    RW = 1 << 1  # writable
    US = 1 << 2  # user accessible
    PWT = 1 << 3  # page-level write-through
    PCD = 1 << 4  # page-level cache disable
    A = 1 << 5  # accessed
    D = 1 << 6  # dirty (leaf entries only)
    PS = 1 << 7  # page size: leaf at PDPE (1 GiB) or PDE (2 MiB); PAT in a PTE
    G = 1 << 8  # global (leaf entries only)
    NX = 1 << 63  # no-execute, honoured when EFER.NXE = 1


# In a 4 KiB PTE bit 7 is the PAT bit; in a 2 MiB/1 GiB leaf the PAT bit
# moves to bit 12 because bit 7 is PS there.
PTE_PAT_4K = 1 << 7
PTE_PAT_LARGE = 1 << 12

PAGE_SHIFT = 12
PAGE_SIZE_4K = 1 << 12
PAGE_SIZE_2M = 1 << 21
PAGE_SIZE_1G = 1 << 30
PAGE_SIZE = PAGE_SIZE_4K

# Long mode supports at most 52 physical address bits; bits 51:12 of an entry
# hold the next table or page frame. The masks below cover
# that full width; the C-bit and any reduced bits sit inside it and must be
# stripped by the walker according to CPUID 0x8000_001F.
MAX_PHYS_BITS = 52
PHYS_ADDR_MASK = ((1 << MAX_PHYS_BITS) - 1) & ~(PAGE_SIZE_4K - 1)
PHYS_ADDR_MASK_2M = ((1 << MAX_PHYS_BITS) - 1) & ~(PAGE_SIZE_2M - 1)
PHYS_ADDR_MASK_1G = ((1 << MAX_PHYS_BITS) - 1) & ~(PAGE_SIZE_1G - 1)
PAGE_OFFSET_MASK = PAGE_SIZE_4K - 1

# 4-level paging: 9 index bits per level, 512 entries of 8 bytes per table.
ENTRIES_PER_TABLE = 512
ENTRY_SIZE = 8
LEVEL_SHIFTS = (39, 30, 21, 12)  # PML4, PDPT, PD, PT
INDEX_MASK = 0x1FF

# CR3 in long mode (no PCID): bits 51:12 are the PML4 base; bits 3 and 4 are
# PWT/PCD for the PML4 access.
CR3_ADDR_MASK = PHYS_ADDR_MASK


class PfErr(IntFlag):
    """#PF error code bits (APM vol 2, "#PF—Page-Fault Exception")."""

    P = 1 << 0  # 0: not present; 1: protection violation
    WR = 1 << 1  # the access was a write
    US = 1 << 2  # the access came from CPL 3
    RSVD = 1 << 3  # a reserved bit was set in some entry
    ID = 1 << 4  # the access was an instruction fetch
    PK = 1 << 5  # protection-key violation
    SS = 1 << 6  # shadow-stack access
    RMP = 1 << 31  # SEV-SNP: RMP check failed


def canonical(vaddr: int, bits: int = 48) -> bool:
    """True if ``vaddr`` is canonical for ``bits``-wide linear addresses."""
    top = vaddr >> (bits - 1)
    return top == 0 or top == (1 << (64 - bits + 1)) - 1


def table_index(vaddr: int, level: int) -> int:
    """Index into the table at ``level`` (0 = PML4 ... 3 = PT) for ``vaddr``."""
    return (vaddr >> LEVEL_SHIFTS[level]) & INDEX_MASK
