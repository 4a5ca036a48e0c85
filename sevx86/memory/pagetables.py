"""Build 4-level page tables in guest memory (for tests and host-side set-up).

Guest code normally builds its own tables (our firmware does, in assembly);
this builder exists so tests and users can put a guest straight into long
mode with a chosen mix of private and shared pages. Tables are written
through the private view, as a guest writing them with C=1 would.
"""

from __future__ import annotations

from sevx86.arch.paging import (
    ENTRY_SIZE,
    INDEX_MASK,
    LEVEL_SHIFTS,
    PAGE_SIZE_1G,
    PAGE_SIZE_2M,
    PAGE_SIZE_4K,
    Pte,
)
from sevx86.memory.dram import PhysicalMemory


class PageTableBuilder:
    """Allocates table pages from ``[pool, pool + pool_size)`` and maps pages."""

    def __init__(self, memory: PhysicalMemory, pool: int, pool_size: int, c_bit: int = 0):
        if pool % PAGE_SIZE_4K or pool_size % PAGE_SIZE_4K:
            raise ValueError("page-table pool must be page aligned")
        self.memory = memory
        self.c_bit = c_bit
        self._next = pool
        self._end = pool + pool_size
        self.cr3 = self._new_table()

    def _new_table(self) -> int:
        if self._next >= self._end:
            raise MemoryError("page-table pool exhausted")
        table = self._next
        self._next += PAGE_SIZE_4K
        self.memory.write_private(table, bytes(PAGE_SIZE_4K))
        return table

    def _read(self, table: int, index: int) -> int:
        return int.from_bytes(self.memory.read_private(table + index * ENTRY_SIZE, 8), "little")

    def _write(self, table: int, index: int, value: int) -> None:
        self.memory.write_private(table + index * ENTRY_SIZE, value.to_bytes(8, "little"))

    def map(
        self,
        vaddr: int,
        gpa: int,
        size: int,
        *,
        writable: bool = True,
        user: bool = False,
        nx: bool = False,
        private: bool = True,
        page_size: int = PAGE_SIZE_4K,
    ) -> None:
        """Map ``[vaddr, vaddr+size)`` to ``gpa`` with pages of ``page_size``."""
        if page_size not in (PAGE_SIZE_4K, PAGE_SIZE_2M, PAGE_SIZE_1G):
            raise ValueError(f"page size {page_size:#x} is not 4K, 2M or 1G")
        if vaddr % page_size or gpa % page_size or size % page_size:
            raise ValueError("mapping not aligned to its page size")
        leaf_level = {PAGE_SIZE_1G: 1, PAGE_SIZE_2M: 2, PAGE_SIZE_4K: 3}[page_size]
        flags = Pte.P | (Pte.RW if writable else 0) | (Pte.US if user else 0)
        flags |= Pte.NX if nx else 0
        for off in range(0, size, page_size):
            leaf = (gpa + off) | flags | (self.c_bit if private else 0)
            if page_size != PAGE_SIZE_4K:
                leaf |= Pte.PS
            self.set_entry(vaddr + off, leaf_level, leaf)

    def set_entry(self, vaddr: int, level: int, value: int) -> int:
        """Write the raw entry at ``level`` (0 = PML4E .. 3 = PTE) for ``vaddr``.

        Intermediate tables are created (present, writable, user, C=1 as
        needed). Returns the guest-physical address of the entry so a test can
        corrupt it later.
        """
        table = self.cr3
        for lvl in range(level):
            index = (vaddr >> LEVEL_SHIFTS[lvl]) & INDEX_MASK
            entry = self._read(table, index)
            if not entry & Pte.P:
                child = self._new_table()
                entry = child | Pte.P | Pte.RW | Pte.US | self.c_bit
                self._write(table, index, entry)
            table = entry & 0x000F_FFFF_FFFF_F000 & ~self.c_bit
        index = (vaddr >> LEVEL_SHIFTS[level]) & INDEX_MASK
        self._write(table, index, value)
        return table + index * ENTRY_SIZE

    def entry_address(self, vaddr: int, level: int) -> int:
        """Guest-physical address of the existing entry at ``level`` for ``vaddr``."""
        table = self.cr3
        for lvl in range(level):
            entry = self._read(table, (vaddr >> LEVEL_SHIFTS[lvl]) & INDEX_MASK)
            if not entry & Pte.P:
                raise LookupError(f"{vaddr:#x} has no table at level {lvl + 1}")
            table = entry & 0x000F_FFFF_FFFF_F000 & ~self.c_bit
        return table + ((vaddr >> LEVEL_SHIFTS[level]) & INDEX_MASK) * ENTRY_SIZE

    def identity_map(
        self, size: int, *, page_size: int = PAGE_SIZE_2M, private: bool = True
    ) -> None:
        self.map(0, 0, size, page_size=page_size, private=private)
