"""The guest's linear memory as the processor's own accesses see it.

Exception delivery (IDT, GDT, TSS reads, stack pushes) and instruction
fetches for decoding go through the guest's page tables with the MMU,
honouring the C-bit (a C=0 stack page is written as shared), exactly as a
guest access would; a refusal is the guest fault the CPU would raise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from sevx86.arch.paging import PAGE_OFFSET_MASK, PAGE_SHIFT, PAGE_SIZE
from sevx86.arch.vectors import Vector
from sevx86.cpu.exceptions import GuestFault
from sevx86.memory.dram import PhysicalMemory
from sevx86.memory.mmu import MMU, Access, PageFault, PagingState, Translation

# Entries kept before the small TLB starts over (a guest's working set for
# delivery and decoding is a handful of pages).
_TLB_LIMIT = 4096


class GuestLinear:
    """Reads and writes at guest-linear addresses, with a small TLB of their own."""

    def __init__(self, mmu: MMU, memory: PhysicalMemory, paging_state: Callable[[], PagingState]):
        self._mmu = mmu
        self._memory = memory
        self._paging_state = paging_state
        # Like the hardware's TLB it may hold translations until CR3 is
        # written, INVLPG runs, or the paging controls change (APM vol 2,
        # 5.5): the engine flushes on the first two and the controls are
        # compared at every event.
        self._tlb: dict[tuple[int, Access, bool], Translation] = {}
        self._controls: tuple[int, int, int, int] | None = None
        self._state: PagingState | None = None
        self.fills = 0  # page walks done (tests count them)

    def begin_event(self) -> None:
        """A new event: re-read the paging controls; flush if they changed."""
        self._state = None

    def flush(self) -> None:
        self._tlb.clear()
        self._state = None

    def _paging(self) -> PagingState:
        st = self._state
        if st is None:
            st = self._state = self._paging_state()
            controls = (st.cr0, st.cr3, st.cr4, st.efer)
            if controls != self._controls:
                self._tlb.clear()
                self._controls = controls
        return st

    def _translate(self, addr: int, access: Access, user: bool) -> Translation:
        st = self._paging()
        key = (addr >> PAGE_SHIFT, access, user)
        hit = self._tlb.get(key)
        if hit is not None:
            return hit
        if user != st.user:
            st = PagingState(st.cr0, st.cr3, st.cr4, st.efer, 3 if user else 0)
        self.fills += 1
        res = self._mmu.walk(addr, access, st)
        if res.__class__ is PageFault:
            raise GuestFault(
                res.vector,
                res.error_code,
                cr2=addr if res.vector == Vector.PF else None,
                reason=res.reason,
            )
        if self._memory.guest_ram_at(res.gpa) is None:
            raise GuestFault(Vector.GP, 0, reason=f"linear {addr:#x} is not RAM ({res.gpa:#x})")
        if len(self._tlb) > _TLB_LIMIT:
            self._tlb.clear()
        self._tlb[key] = res
        return res

    @staticmethod
    def _chunks(addr: int, size: int) -> Iterator[tuple[int, int]]:
        while size > 0:
            n = min(size, PAGE_SIZE - (addr & PAGE_OFFSET_MASK))
            yield addr, n
            addr += n
            size -= n

    def read(self, addr: int, size: int, *, user: bool = False, fetch: bool = False) -> bytes:
        access = Access.FETCH if fetch else Access.READ
        if (addr & PAGE_OFFSET_MASK) + size <= PAGE_SIZE:  # the common case: one page
            t = self._translate(addr, access, user)
            return self._memory.read(t.gpa | (addr & PAGE_OFFSET_MASK), size, private=t.private)
        out = bytearray()
        for a, n in self._chunks(addr, size):
            t = self._translate(a, access, user)
            out += self._memory.read(t.gpa | (a & PAGE_OFFSET_MASK), n, private=t.private)
        return bytes(out)

    def check_write(self, addr: int, size: int, *, user: bool = False) -> None:
        for a, _n in self._chunks(addr, size):
            self._translate(a, Access.WRITE, user)

    def write(self, addr: int, data: bytes, *, user: bool = False) -> None:
        pos = 0
        for a, n in self._chunks(addr, len(data)):
            t = self._translate(a, Access.WRITE, user)
            gpa = t.gpa | (a & PAGE_OFFSET_MASK)
            self._memory.write(gpa, data[pos : pos + n], private=t.private)
            pos += n
