"""Guest memory as the host's debugger reaches it: through the SP's debug door.

Private guest memory is read with DBG_DECRYPT and written with DBG_ENCRYPT
(SEV API 55766, "DBG_DECRYPT"/"DBG_ENCRYPT"): 16-byte aligned blocks, so a
request is widened to whole blocks and split at page boundaries, the way
KVM's ``sev_dbg_crypt`` serves ``KVM_SEV_DBG_DECRYPT`` (a bounce buffer for
unaligned ends, one page at a time). Shared pages (C=0) are plain DRAM the
host reads directly. Under a NODBG policy the SP refuses; the debugger then
shows what the host really has: the DRAM bytes, i.e. ciphertext.

Virtual addresses are translated by walking the guest's page tables from the
stopped vCPU's CR3 (APM vol 2, 5.3 "Long-Mode Page Translation", 5.2 for
legacy and PAE paging). Table reads are private, as the CPU's walk is
(APM vol 2, 15.34.5), and the leaf's C-bit decides whether the data page is
private. Without the registers (NODBG under SEV-ES) there is no CR3 to walk
from: addresses are then taken as guest-physical, which our firmware's
identity map makes the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sevx86.arch.cr import Cr0, Cr4
from sevx86.arch.msr import Efer
from sevx86.arch.paging import ENTRY_SIZE, INDEX_MASK, LEVEL_SHIFTS, PAGE_SIZE_4K, Pte
from sevx86.arch.vmsa import VMSA
from sevx86.config import GuestConfig
from sevx86.sp.errors import SevApiStatus, SevError

BLOCK = 16  # DBG_DECRYPT/DBG_ENCRYPT work on 16-byte blocks


class Unreadable(Exception):
    """No guest RAM behind the address, or no translation for it."""


@dataclass(frozen=True)
class Translated:
    gpa: int
    private: bool


class Door:
    """What the stub needs of ``Machine`` (the SP's debug commands) and the host's DRAM."""

    def __init__(
        self,
        decrypt: Callable[[int, int], bytes],
        encrypt: Callable[[int, bytes], None],
        read_dram: Callable[[int, int], bytes],
        write_dram: Callable[[int, bytes], None],
        contains: Callable[[int, int], bool],
    ):
        self.decrypt, self.encrypt = decrypt, encrypt
        self.read_dram, self.write_dram, self.contains = read_dram, write_dram, contains


class DebugMemory:
    """Physical and virtual reads and writes of one guest, policy honoured."""

    def __init__(self, door: Door, config: GuestConfig, on_refusal: Callable[[SevError], None]):
        self._door = door
        self._config = config
        self._c_bit = config.c_bit if config.mode.encrypted else 0
        self._frame = ((1 << config.guest_phys_bits) - 1) & ~(PAGE_SIZE_4K - 1) & ~self._c_bit
        self._on_refusal = on_refusal
        self.refused = False

    # -- physical ------------------------------------------------------------------------
    def read_physical(self, gpa: int, size: int, *, private: bool = True) -> bytes:
        out = bytearray()
        for addr, n in _pages(gpa, size):
            if not self._door.contains(addr, n):
                raise Unreadable(f"no guest RAM at {addr:#x}")
            out += self._read_page_part(addr, n) if private else self._door.read_dram(addr, n)
        return bytes(out)

    def _read_page_part(self, addr: int, n: int) -> bytes:
        if self.refused:
            return self._door.read_dram(addr, n)
        start = addr & ~(BLOCK - 1)
        end = (addr + n + BLOCK - 1) & ~(BLOCK - 1)
        try:
            blocks = self._door.decrypt(start, end - start)
        except SevError as exc:
            if exc.status is not SevApiStatus.POLICY_FAILURE:
                raise Unreadable(str(exc)) from None
            self._refuse(exc)
            return self._door.read_dram(addr, n)
        return blocks[addr - start : addr - start + n]

    def write_physical(self, gpa: int, data: bytes, *, private: bool = True) -> None:
        pos = 0
        for addr, n in _pages(gpa, len(data)):
            if not self._door.contains(addr, n):
                raise Unreadable(f"no guest RAM at {addr:#x}")
            chunk = data[pos : pos + n]
            pos += n
            if not private or self.refused:
                # What a host write does to a private page: garbage for the guest.
                self._door.write_dram(addr, chunk)
                continue
            start = addr & ~(BLOCK - 1)
            end = (addr + n + BLOCK - 1) & ~(BLOCK - 1)
            try:
                blocks = bytearray(self._door.decrypt(start, end - start))
                blocks[addr - start : addr - start + n] = chunk
                self._door.encrypt(start, bytes(blocks))
            except SevError as exc:
                if exc.status is not SevApiStatus.POLICY_FAILURE:
                    raise Unreadable(str(exc)) from None
                self._refuse(exc)
                self._door.write_dram(addr, chunk)

    def _refuse(self, exc: SevError) -> None:
        self.refused = True
        self._on_refusal(exc)

    # -- virtual -------------------------------------------------------------------------
    def read_virtual(self, vaddr: int, size: int, regs: bytes | None) -> bytes:
        out = bytearray()
        for addr, n in _pages(vaddr, size):
            t = self.translate(addr, regs)
            out += self.read_physical(t.gpa, n, private=t.private)
        return bytes(out)

    def write_virtual(self, vaddr: int, data: bytes, regs: bytes | None) -> None:
        pos = 0
        for addr, n in _pages(vaddr, len(data)):
            t = self.translate(addr, regs)
            self.write_physical(t.gpa, data[pos : pos + n], private=t.private)
            pos += n

    def translate(self, vaddr: int, regs: bytes | None) -> Translated:
        """The guest-physical address of ``vaddr`` for the vCPU whose registers are ``regs``."""
        if regs is None or self.refused:
            return Translated(vaddr, True)  # no CR3 to walk from (see the module docstring)
        cr0, cr3, cr4, efer = (VMSA.read(regs, n) for n in ("cr0", "cr3", "cr4", "efer"))
        if not cr0 & Cr0.PG:
            return Translated(vaddr & 0xFFFF_FFFF, True)
        try:
            if efer & Efer.LMA:
                t = self._walk_long(vaddr, cr3)
            elif cr4 & Cr4.PAE:
                t = self._walk_pae(vaddr & 0xFFFF_FFFF, cr3)
            else:
                t = self._walk_legacy(vaddr & 0xFFFF_FFFF, cr3, bool(cr4 & Cr4.PSE))
        except Unreadable:
            if not self.refused:
                raise
            t = Translated(vaddr, True)
        # The tables themselves were refused (plain SEV under NODBG: registers
        # are the host's, memory is not): what was "walked" was ciphertext.
        return Translated(vaddr, True) if self.refused else t

    def _entry(self, addr: int, size: int = ENTRY_SIZE) -> int:
        return int.from_bytes(self.read_physical(addr, size), "little")

    def _walk_long(self, vaddr: int, cr3: int) -> Translated:
        table = cr3 & self._frame
        for level, shift in enumerate(LEVEL_SHIFTS):
            entry = self._entry(table + ((vaddr >> shift) & INDEX_MASK) * ENTRY_SIZE)
            if not entry & Pte.P:
                raise Unreadable(f"{vaddr:#x} is not mapped")
            leaf = level == 3 or (level in (1, 2) and entry & Pte.PS)
            if leaf:
                size = 1 << shift
                frame = entry & self._frame & ~(size - 1)
                # The leaf's C-bit decides; without encryption all is private.
                private = not self._c_bit or bool(entry & self._c_bit)
                return Translated(frame | (vaddr & (size - 1)), private)
            table = entry & self._frame
        raise AssertionError("unreachable")

    def _walk_pae(self, vaddr: int, cr3: int) -> Translated:
        # Before long mode every access is private (docs/memory: no C-bit there).
        pdpte = self._entry((cr3 & 0xFFFF_FFE0) + ((vaddr >> 30) & 3) * 8)
        if not pdpte & Pte.P:
            raise Unreadable(f"{vaddr:#x} is not mapped")
        pde = self._entry((pdpte & self._frame) + ((vaddr >> 21) & INDEX_MASK) * 8)
        if not pde & Pte.P:
            raise Unreadable(f"{vaddr:#x} is not mapped")
        if pde & Pte.PS:
            return Translated((pde & self._frame & ~0x1F_FFFF) | (vaddr & 0x1F_FFFF), True)
        pte = self._entry((pde & self._frame) + ((vaddr >> 12) & INDEX_MASK) * 8)
        if not pte & Pte.P:
            raise Unreadable(f"{vaddr:#x} is not mapped")
        return Translated((pte & self._frame) | (vaddr & 0xFFF), True)

    def _walk_legacy(self, vaddr: int, cr3: int, pse: bool) -> Translated:
        pde = self._entry((cr3 & 0xFFFF_F000) + (vaddr >> 22) * 4, 4)
        if not pde & Pte.P:
            raise Unreadable(f"{vaddr:#x} is not mapped")
        if pse and pde & Pte.PS:
            return Translated((pde & 0xFFC0_0000) | (vaddr & 0x3F_FFFF), True)
        pte = self._entry((pde & 0xFFFF_F000) + ((vaddr >> 12) & 0x3FF) * 4, 4)
        if not pte & Pte.P:
            raise Unreadable(f"{vaddr:#x} is not mapped")
        return Translated((pte & 0xFFFF_F000) | (vaddr & 0xFFF), True)


def _pages(addr: int, size: int):
    """``(address, length)`` pieces of a range that do not cross a 4 KiB page."""
    end = addr + size
    while addr < end:
        n = min(end, (addr | (PAGE_SIZE_4K - 1)) + 1) - addr
        yield addr, n
        addr += n
