"""Guest DRAM: one plaintext copy, three views.

DESIGN.md ("Memory") gives the exact representation used here. Each RAM
region keeps the plaintext the CPU sees when it reads with C=1 -- the
*private view* -- in one host buffer that is mapped straight into every
vCPU's Unicorn instance, so guest code runs at JIT speed. The other views are
computed from it:

* DRAM as the host (or a DMA device) sees it is ``E(spa, private)`` for every
  16-byte block; a host write of bytes ``B`` stores ``D(spa, B)``.
* A guest access with C=0 (a shared page) sees DRAM, so it goes through the
  same two functions. Unicorn reaches it through an ``mmio_map`` alias at
  ``SHARED_ALIAS_BASE + gpa`` whose callbacks land here.

Everything else follows without per-page state: C=0 reads of a private page
give ciphertext, a C=1 read of a page the host wrote gives garbage, and a page
both sides treat as shared (the GHCB) round-trips unchanged.

System physical addresses (the cipher's tweak) equal guest physical addresses
for guest RAM; pages the guest cannot address (each vCPU's VMSA) live in
host-owned regions above ``HOST_OWNED_BASE`` and are still encrypted with the
guest's key, as the real VMSA is.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from unicorn import UC_PROT_ALL, Uc

from sevx86.config import PAGE_SIZE, GuestConfig
from sevx86.memory.cipher import BLOCK, MemoryCipher, PlaintextMemory, aligned_span

# Unicorn physical address of the C=0 alias of guest physical address 0.
# Guest memory must stay below it (16 TiB); the MMU adds it for shared pages.
SHARED_ALIAS_BASE = 1 << 44
# Guest-inaccessible, guest-encrypted pages (VMSAs) start here.
HOST_OWNED_BASE = 1 << 45

Cipher = MemoryCipher | PlaintextMemory


class MemoryError_(Exception):
    """Base for DRAM errors (the trailing underscore avoids the builtin)."""


class UnmappedAddress(MemoryError_):
    def __init__(self, addr: int, size: int):
        super().__init__(f"no RAM at {addr:#x}+{size:#x}")
        self.addr = addr
        self.size = size


@dataclass
class RamRegion:
    """A contiguous run of RAM (guest memory, flash, or a host-owned page)."""

    name: str
    base: int
    size: int
    guest_visible: bool = True
    writable: bool = True
    buffer: mmap.mmap = field(init=False, repr=False)
    view: memoryview = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.buffer = mmap.mmap(-1, self.size)
        self.view = memoryview(self.buffer)

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def address(self) -> int:
        """Host virtual address of the buffer, for ``Uc.mem_map_ptr``."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))

    def contains(self, addr: int, size: int = 1) -> bool:
        return self.base <= addr and addr + size <= self.end


class PhysicalMemory:
    """The RAM of one guest and the memory controller's AES engine in front of it."""

    def __init__(self, config: GuestConfig, cipher: Cipher | None = None):
        self.config = config
        self.cipher: Cipher = cipher if cipher is not None else PlaintextMemory()
        self.regions: list[RamRegion] = []
        self._engines: list[Uc] = []
        self._next_host_page = HOST_OWNED_BASE
        self._last: RamRegion | None = None
        # Pages the CPU has fetched instructions from: writes to them from
        # Python must go through Unicorn so its translated code is dropped.
        self.code_pages: set[int] = set()
        self.add_region("ram", 0, config.memory)

    # -- layout -----------------------------------------------------------
    def add_region(
        self,
        name: str,
        base: int,
        size: int,
        *,
        guest_visible: bool = True,
        writable: bool = True,
    ) -> RamRegion:
        if base % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
            raise ValueError(f"region {name} {base:#x}+{size:#x} is not page aligned")
        if guest_visible:
            self.config.check_range(base, size, f"region {name}")
            if base + size > SHARED_ALIAS_BASE:
                raise ValueError(f"region {name} reaches the shared alias")
        for r in self.regions:
            if base < r.end and r.base < base + size:
                raise ValueError(f"region {name} overlaps {r.name}")
        region = RamRegion(name, base, size, guest_visible, writable)
        self.regions.append(region)
        self.regions.sort(key=lambda r: r.base)
        for uc in self._engines:
            self._map_region(uc, region)
        return region

    def allocate_host_page(self, name: str) -> RamRegion:
        """A guest-encrypted page the guest cannot address (e.g. a VMSA)."""
        region = self.add_region(name, self._next_host_page, PAGE_SIZE, guest_visible=False)
        self._next_host_page += PAGE_SIZE
        return region

    def region_at(self, addr: int, size: int = 1) -> RamRegion | None:
        last = self._last
        if last is not None and last.base <= addr and addr + size <= last.base + last.size:
            return last  # most accesses hit the region the previous one did
        for r in self.regions:
            if r.base <= addr and addr + size <= r.base + r.size:
                self._last = r
                return r
        return None

    def guest_ram_at(self, gpa: int, size: int = 1) -> RamRegion | None:
        r = self.region_at(gpa, size)
        return r if r is not None and r.guest_visible else None

    def guest_regions(self) -> Iterator[RamRegion]:
        return (r for r in self.regions if r.guest_visible)

    def _locate(self, addr: int, size: int) -> tuple[RamRegion, int]:
        r = self.region_at(addr, size)
        if r is None:
            raise UnmappedAddress(addr, size)
        return r, addr - r.base

    # -- Unicorn ------------------------------------------------------------
    def attach(self, uc: Uc) -> None:
        """Map every region (private view and C=0 alias) into a vCPU's Unicorn."""
        self._engines.append(uc)
        for region in self.regions:
            self._map_region(uc, region)

    def _map_region(self, uc: Uc, region: RamRegion) -> None:
        uc.mem_map_ptr(region.base, region.size, UC_PROT_ALL, region.address)
        if region.guest_visible:
            base = region.base
            uc.mmio_map(
                SHARED_ALIAS_BASE + base,
                region.size,
                self._alias_reader(base),
                None,
                self._alias_writer(base),
                None,
            )

    def _alias_reader(self, base: int) -> Callable[[Uc, int, int, object], int]:
        region = self.region_at(base)
        assert region is not None
        view = region.view
        cipher = self.cipher

        def read(uc: Uc, offset: int, size: int, _data: object) -> int:
            # Unicorn splits accesses into 1/2/4 bytes, so one block suffices
            # unless the access straddles two.
            start = offset & ~(BLOCK - 1)
            if offset + size <= start + BLOCK and not cipher.identity:
                block = cipher.encrypt_block(base + start, view[start : start + BLOCK])
                rel = offset - start
                return int.from_bytes(block[rel : rel + size], "little")
            return int.from_bytes(self.read_dram(base + offset, size), "little")

        return read

    def _alias_writer(self, base: int) -> Callable[[Uc, int, int, int, object], None]:
        region = self.region_at(base)
        assert region is not None
        view = region.view
        cipher = self.cipher

        def write(uc: Uc, offset: int, size: int, value: int, _data: object) -> None:
            start = offset & ~(BLOCK - 1)
            if offset + size <= start + BLOCK and not cipher.identity:
                spa = base + start
                dram = bytearray(cipher.encrypt_block(spa, view[start : start + BLOCK]))
                rel = offset - start
                dram[rel : rel + size] = value.to_bytes(size, "little")
                self._store(region, start, cipher.decrypt_block(spa, dram))
                return
            self.write_dram(base + offset, value.to_bytes(size, "little"))

        return write

    def _store(self, region: RamRegion, off: int, data: bytes | bytearray) -> None:
        """Write into a region's private view, dropping stale translated code."""
        addr = region.base + off
        first, last = addr >> 12, (addr + len(data) - 1) >> 12
        if self._engines and (first in self.code_pages or last in self.code_pages):
            for uc in self._engines:
                uc.mem_write(addr, bytes(data))
        else:
            region.view[off : off + len(data)] = data

    # -- private view: what the CPU sees with C=1 -------------------------------
    def read_private(self, addr: int, size: int) -> bytes:
        region, off = self._locate(addr, size)
        return bytes(region.view[off : off + size])

    def write_private(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        region, off = self._locate(addr, len(data))
        if len(data) > PAGE_SIZE and self._engines:
            for uc in self._engines:  # bulk: let Unicorn invalidate what it must
                uc.mem_write(addr, bytes(data))
            return
        self._store(region, off, data)

    # -- DRAM: what the host, DMA and C=0 guest accesses see ---------------------
    def read_dram(self, addr: int, size: int) -> bytes:
        """Bytes as they sit in DRAM: ciphertext for every encrypted page."""
        if self.cipher.identity:
            return self.read_private(addr, size)
        start, length = aligned_span(addr, size)
        if length == BLOCK:
            block = self.cipher.encrypt_block(start, self.read_private(start, BLOCK))
            return block[addr - start : addr - start + size]
        plain = self.read_private(start, length)
        cipher = self.cipher.encrypt(start, plain)
        return cipher[addr - start : addr - start + size]

    def write_dram(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` into DRAM unencrypted (host, DMA or C=0 guest write)."""
        if self.cipher.identity:
            self.write_private(addr, data)
            return
        start, length = aligned_span(addr, len(data))
        if start != addr or length != len(data):
            # A partial block keeps the rest of the block's DRAM bytes.
            current = bytearray(self.read_dram(start, length))
            current[addr - start : addr - start + len(data)] = data
            data = current
        if length == BLOCK:
            self.write_private(start, self.cipher.decrypt_block(start, data))
            return
        self.write_private(start, self.cipher.decrypt(start, data))

    def dram_image(self) -> Iterator[tuple[RamRegion, bytes]]:
        """Every region as the host sees it, one region at a time."""
        for region in self.regions:
            yield region, self.read_dram(region.base, region.size)

    # -- C-bit aware guest access (used by the CPU engine for its own accesses) --
    def read(self, addr: int, size: int, *, private: bool = True) -> bytes:
        return self.read_private(addr, size) if private else self.read_dram(addr, size)

    def write(self, addr: int, data: bytes, *, private: bool = True) -> None:
        if private:
            self.write_private(addr, data)
        else:
            self.write_dram(addr, data)


__all__ = [
    "BLOCK",
    "HOST_OWNED_BASE",
    "PhysicalMemory",
    "RamRegion",
    "SHARED_ALIAS_BASE",
    "UnmappedAddress",
]
