"""Guest DRAM: one authoritative copy per page, three views.

docs/design.md ("Memory model") gives the representation. Each page of a RAM region is
held in exactly one of two forms:

* **private form** (the default): the plaintext the CPU sees when it reads
  with C=1, in the region's buffer, mapped straight into every vCPU's
  Unicorn so guest code runs at JIT speed;
* **shared form**: the bytes as they sit in DRAM, in the region's *shadow*
  buffer, mapped into Unicorn at ``SHADOW_BASE + gpa``. A page the guest uses
  with C=0 (its GHCB) lives here, so both the guest's C=0 accesses and the
  host's reads and writes are plain memory accesses, with no AES at all.

Every view is computed from whichever form holds the page:

* DRAM as the host (or a DMA device) sees it is ``E(spa, private)`` for a
  page in private form, the shadow bytes for one in shared form; a host write
  of bytes ``B`` stores ``D(spa, B)`` or ``B`` respectively;
* a guest C=0 access sees DRAM; a guest C=1 access sees the plaintext.

A page changes form when the guest first touches it the other way: the MMU
refuses that TLB fill, the CPU engine calls ``make_shared``/``make_private``
(one page of AES) and flushes every vCPU's TLB, and the access is replayed.
Semantics are unchanged -- C=0 reads of a private page give ciphertext, a C=1
read of a page the host wrote gives garbage, and the GHCB round-trips -- only
the cost moves to the rare conversion.

``SHARED_ALIAS_BASE + gpa`` is a third mapping with the same meaning, served
by callbacks block by block; the MMU uses it when shadowing is off (vCPUs
running in parallel threads, where one vCPU cannot flush another's TLB).

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

from unicorn import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_PROT_ALL, Uc

from sevx86.arch.paging import PAGE_SIZE
from sevx86.config import GuestConfig
from sevx86.memory.cipher import BLOCK, MemoryCipher, PlaintextMemory, aligned_span

# Unicorn physical address of the callback-served C=0 alias of GPA 0.
SHARED_ALIAS_BASE = 1 << 44
# Unicorn physical address of the shadow (shared-form) copy of GPA 0.
SHADOW_BASE = 3 << 44
# Guest-inaccessible, guest-encrypted pages (VMSAs) start here.
HOST_OWNED_BASE = 1 << 45
PAGE_MASK = ~(PAGE_SIZE - 1)

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
    shadow: mmap.mmap | None = field(init=False, repr=False, default=None)
    shadow_view: memoryview | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.buffer = mmap.mmap(-1, self.size)
        self.view = memoryview(self.buffer)
        if self.guest_visible:
            # Anonymous memory: the OS only backs the pages that get shared.
            self.shadow = mmap.mmap(-1, self.size)
            self.shadow_view = memoryview(self.shadow)

    @property
    def end(self) -> int:
        return self.base + self.size

    @staticmethod
    def _address(buf: mmap.mmap) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))

    @property
    def address(self) -> int:
        """Host virtual address of the buffer, for ``Uc.mem_map_ptr``."""
        return self._address(self.buffer)

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
        # Page numbers (gpa >> 12) held in shared form.
        self.shared: set[int] = set()
        # Shadowing needs every vCPU's TLB flushed at a conversion; off when
        # vCPUs run in parallel threads.
        self.shadowing = not self.cipher.identity
        self.conversions = 0
        # Pages the CPU has fetched instructions from: writes to them from
        # Python must go through Unicorn so its translated code is dropped.
        self.code_pages: set[int] = set()
        # With vCPUs in parallel threads, touching every engine (TB
        # invalidation, TLB flush) must happen with the others stopped:
        # sevx86.cpu.parallel.World.exclusive, installed by Machine.enable_parallel.
        self.exclusive: Callable[[Callable[[], None]], None] | None = None
        # Page numbers of guest RAM the host has taken back for now (KVM: the
        # memslot is gone, e.g. a flash device out of read-array mode): every
        # guest access to them is a nested page fault, as for a GPA with no
        # RAM, and the host emulates it. The bytes stay where they are.
        self.trapping: set[int] = set()
        # ... and pages it lets the guest read but not write (KVM_MEM_READONLY:
        # a flash device in read-array mode): writes fault to the host.
        self.readonly: set[int] = set()
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
        """Map every region (private view, shadow, C=0 alias) into a vCPU's Unicorn."""
        self._engines.append(uc)
        for region in self.regions:
            self._map_region(uc, region)

    def _map_region(self, uc: Uc, region: RamRegion) -> None:
        uc.mem_map_ptr(region.base, region.size, UC_PROT_ALL, region.address)
        if region.guest_visible:
            assert region.shadow is not None
            uc.mem_map_ptr(
                SHADOW_BASE + region.base, region.size, UC_PROT_ALL, region._address(region.shadow)
            )
            base = region.base
            uc.mmio_map(
                SHARED_ALIAS_BASE + base,
                region.size,
                self._alias_reader(base),
                None,
                self._alias_writer(base),
                None,
            )

    def flush_tlbs(self) -> None:
        """Drop every vCPU's cached translations (after a page changed form)."""

        def flush() -> None:
            for uc in self._engines:
                uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

        self._on_all_engines(flush)

    def _on_all_engines(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (which touches every engine) safely: alone in parallel mode."""
        if self.exclusive is None:
            fn()
        else:
            self.exclusive(fn)

    def _alias_reader(self, base: int) -> Callable[[Uc, int, int, object], int]:
        def read(uc: Uc, offset: int, size: int, _data: object) -> int:
            return int.from_bytes(self.read_dram(base + offset, size), "little")

        return read

    def _alias_writer(self, base: int) -> Callable[[Uc, int, int, int, object], None]:
        def write(uc: Uc, offset: int, size: int, value: int, _data: object) -> None:
            self.write_dram(base + offset, value.to_bytes(size, "little"))

        return write

    # -- the host's memory map: RAM it emulates for a while ---------------------
    def set_trapping(self, gpa: int, size: int, on: bool) -> bool:
        """Make guest accesses to ``[gpa, gpa+size)`` trap to the host (or stop trapping).

        The range must be whole pages of guest RAM. Returns whether anything
        changed; a change flushes every vCPU's TLB, since Unicorn may hold
        translations of these pages (and the next fill asks the MMU again).
        Translated code needs nothing more: a flush also empties Unicorn's
        jump cache, so running code from a trapping page refills (and faults).
        """
        return self._set_pages(self.trapping, gpa, size, on)

    def set_readonly(self, gpa: int, size: int, on: bool) -> bool:
        """Let guest writes to ``[gpa, gpa+size)`` fault to the host while reads stay RAM.

        KVM's read-only memslots (``KVM_MEM_READONLY``), which back QEMU's
        ROM devices: the nested page table maps the pages present but not
        writable. Same rules as ``set_trapping``.
        """
        return self._set_pages(self.readonly, gpa, size, on)

    def _set_pages(self, pages_set: set[int], gpa: int, size: int, on: bool) -> bool:
        if gpa % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
            raise ValueError(f"range {gpa:#x}+{size:#x} is not page aligned")
        if self.guest_ram_at(gpa, size) is None:
            raise UnmappedAddress(gpa, size)
        pages = range(gpa >> 12, (gpa + size) >> 12)
        if on:
            if all(p in pages_set for p in pages):
                return False
            pages_set.update(pages)
        else:
            if not any(p in pages_set for p in pages):
                return False
            pages_set.difference_update(pages)
        self.flush_tlbs()
        return True

    def is_trapping(self, gpa: int) -> bool:
        return bool(self.trapping) and (gpa >> 12) in self.trapping

    def is_readonly(self, gpa: int) -> bool:
        return bool(self.readonly) and (gpa >> 12) in self.readonly

    # -- page forms -----------------------------------------------------------
    def is_shared(self, gpa: int) -> bool:
        return (gpa >> 12) in self.shared

    def make_shared(self, gpa: int) -> None:
        """Move a page to shared form: its DRAM bytes into the shadow."""
        page = gpa & PAGE_MASK
        if page >> 12 in self.shared:
            return
        region, off = self._locate(page, PAGE_SIZE)
        assert region.shadow_view is not None
        region.shadow_view[off : off + PAGE_SIZE] = self.cipher.encrypt(
            page, region.view[off : off + PAGE_SIZE]
        )
        self.shared.add(page >> 12)
        self.conversions += 1

    def make_private(self, gpa: int) -> None:
        """Move a page back to private form: decrypt the shadow into the buffer."""
        page = gpa & PAGE_MASK
        if page >> 12 not in self.shared:
            return
        region, off = self._locate(page, PAGE_SIZE)
        assert region.shadow_view is not None
        self.shared.discard(page >> 12)
        plain = self.cipher.decrypt(page, region.shadow_view[off : off + PAGE_SIZE])
        self._store(region, off, plain)
        self.conversions += 1

    def _store(self, region: RamRegion, off: int, data: bytes | bytearray | memoryview) -> None:
        """Write into a region's private buffer, dropping stale translated code."""
        addr = region.base + off
        first, last = addr >> 12, (addr + len(data) - 1) >> 12
        if self._engines and any(p in self.code_pages for p in range(first, last + 1)):
            self._mem_write_all(addr, bytes(data))
        else:
            region.view[off : off + len(data)] = data

    @staticmethod
    def _pages(addr: int, size: int) -> Iterator[tuple[int, int]]:
        """(address, length) pieces of a range, split at page boundaries."""
        end = addr + size
        while addr < end:
            n = min(end, (addr & PAGE_MASK) + PAGE_SIZE) - addr
            yield addr, n
            addr += n

    # -- private view: what the CPU sees with C=1 -------------------------------
    def read_private(self, addr: int, size: int) -> bytes:
        region, off = self._locate(addr, size)
        if not self.shared or not self._touches_shared(addr, size):
            return bytes(region.view[off : off + size])
        out = bytearray()
        for a, n in self._pages(addr, size):
            if a >> 12 in self.shared:
                out += self._decrypt_range(region, a, n, shadow=True)
            else:
                out += region.view[a - region.base : a - region.base + n]
        return bytes(out)

    def write_private(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        region, off = self._locate(addr, len(data))
        if not self.shared or not self._touches_shared(addr, len(data)):
            self._write_private_form(region, off, data)
            return
        pos = 0
        for a, n in self._pages(addr, len(data)):
            piece = data[pos : pos + n]
            if a >> 12 in self.shared:
                self._encrypt_into_shadow(region, a, piece)
            else:
                self._write_private_form(region, a - region.base, piece)
            pos += n

    def _write_private_form(self, region: RamRegion, off: int, data) -> None:
        if len(data) > PAGE_SIZE and self._engines:
            # Bulk: let Unicorn invalidate what it must.
            self._mem_write_all(region.base + off, bytes(data))
            return
        self._store(region, off, data)

    def _mem_write_all(self, addr: int, data: bytes) -> None:
        def write() -> None:
            for uc in self._engines:
                uc.mem_write(addr, data)

        self._on_all_engines(write)

    def _touches_shared(self, addr: int, size: int) -> bool:
        shared = self.shared
        if not shared:
            return False
        first, last = addr >> 12, (addr + size - 1) >> 12
        if first == last:
            return first in shared
        if last - first < len(shared):
            return any(p in shared for p in range(first, last + 1))
        return any(first <= p <= last for p in shared)

    # -- DRAM: what the host, DMA and C=0 guest accesses see ---------------------
    def read_dram(self, addr: int, size: int) -> bytes:
        """Bytes as they sit in DRAM: ciphertext for every encrypted page."""
        if self.cipher.identity:
            return self.read_private(addr, size)
        region, off = self._locate(addr, size)
        if not self._touches_shared(addr, size):
            return self._encrypt_range(region, addr, size)  # one AES call for the range
        out = bytearray()
        for a, n in self._pages(addr, size):
            o = a - region.base
            if a >> 12 in self.shared:
                assert region.shadow_view is not None
                out += region.shadow_view[o : o + n]
            else:
                out += self._encrypt_range(region, a, n)
        return bytes(out)

    def write_dram(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` into DRAM unencrypted (host, DMA or C=0 guest write)."""
        if self.cipher.identity:
            self.write_private(addr, data)
            return
        region, _off = self._locate(addr, len(data))
        if not self._touches_shared(addr, len(data)):
            self._decrypt_into_private(region, addr, data)  # one AES call for the range
            return
        pos = 0
        for a, n in self._pages(addr, len(data)):
            piece = data[pos : pos + n]
            o = a - region.base
            if a >> 12 in self.shared:
                assert region.shadow_view is not None
                region.shadow_view[o : o + n] = piece
            else:
                self._decrypt_into_private(region, a, piece)
            pos += n

    def dram_image(self) -> Iterator[tuple[RamRegion, bytes]]:
        """Every region as the host sees it, one region at a time."""
        for region in self.regions:
            yield region, self.read_dram(region.base, region.size)

    # -- the AES paths ------------------------------------------------------------
    def _encrypt_range(self, region: RamRegion, addr: int, size: int) -> bytes:
        """E(private) for [addr, addr+size) of a page in private form."""
        start, length = aligned_span(addr, size)
        o = start - region.base
        plain = region.view[o : o + length]
        if length == BLOCK:
            cipher = self.cipher.encrypt_block(start, plain)
        else:
            cipher = self.cipher.encrypt(start, plain)
        return cipher[addr - start : addr - start + size]

    def _decrypt_range(self, region: RamRegion, addr: int, size: int, *, shadow: bool) -> bytes:
        """D(shadow) for [addr, addr+size) of a page in shared form."""
        assert region.shadow_view is not None
        start, length = aligned_span(addr, size)
        o = start - region.base
        plain = self.cipher.decrypt(start, region.shadow_view[o : o + length])
        return plain[addr - start : addr - start + size]

    def _decrypt_into_private(self, region: RamRegion, addr: int, data) -> None:
        """A DRAM write to a page in private form: store D(B), keeping partial blocks."""
        start, length = aligned_span(addr, len(data))
        if start != addr or length != len(data):
            # A partial block keeps the rest of the block's DRAM bytes.
            current = bytearray(self._encrypt_range(region, start, length))
            current[addr - start : addr - start + len(data)] = data
            data = current
        if length == BLOCK:
            plain = self.cipher.decrypt_block(start, data)
        else:
            plain = self.cipher.decrypt(start, data)
        self._write_private_form(region, start - region.base, plain)

    def _encrypt_into_shadow(self, region: RamRegion, addr: int, data) -> None:
        """A private (C=1) write to a page in shared form: store E(P), keeping partial blocks."""
        assert region.shadow_view is not None
        start, length = aligned_span(addr, len(data))
        plain = bytearray(self._decrypt_range(region, start, length, shadow=True))
        plain[addr - start : addr - start + len(data)] = data
        o = start - region.base
        region.shadow_view[o : o + length] = self.cipher.encrypt(start, plain)

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
    "SHADOW_BASE",
    "SHARED_ALIAS_BASE",
    "UnmappedAddress",
]
