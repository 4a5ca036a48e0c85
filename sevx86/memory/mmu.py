"""The guest MMU: page walks with the C-bit, on Unicorn's virtual-TLB hook.

Unicorn 2.1 lets us replace QEMU's page walker (``UC_TLB_VIRTUAL`` plus a
``UC_HOOK_TLB_FILL`` hook; docs/engine.md, "Translations: what is cached and
when it is flushed"). The hook runs on TLB misses only; it walks the guest's
tables here and answers with a *Unicorn* physical address:

* the private view (the guest physical address itself) for C=1 accesses,
* the C=0 alias (``SHARED_ALIAS_BASE + gpa``) for shared data accesses,
* a refusal for a fault or for guest-physical addresses without RAM.

SEV rules (AMD APM vol 2, 15.34.5; docs/design.md "Memory model"): instruction fetches and
page-table walks are always private; the C-bit of the *leaf* entry decides
for data. With paging off, or in legacy 32-bit and PAE paging (before long
mode, where docs/design.md treats the C-bit as inexpressible), every access is
private -- which is why early boot cannot share a page and must use the GHCB
MSR protocol.

Fault reporting follows APM vol 2, 8.4.2 "#PF error code": P (protection
violation vs not present), W/R, U/S (CPL 3), RSVD, I/D (fetch, when NX or
SMEP is enabled). Reserved bits of a long-mode entry are those from the
reduced MAXPHYADDR up to bit 51, except the C-bit, plus bit 63 when EFER.NXE
is clear, plus PS in a PML4E and the low frame bits of a large page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum

from unicorn import (
    UC_HOOK_TLB_FILL,
    UC_MEM_FETCH,
    UC_MEM_WRITE,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    UC_TLB_VIRTUAL,
    Uc,
)

from sevx86.arch.cr import Cr0, Cr4
from sevx86.arch.msr import Efer
from sevx86.arch.paging import (
    ENTRY_SIZE,
    INDEX_MASK,
    LEVEL_SHIFTS,
    PAGE_SIZE_1G,
    PAGE_SIZE_2M,
    PAGE_SIZE_4K,
    PfErr,
    Pte,
)
from sevx86.arch.vectors import Vector, vector_name
from sevx86.config import GuestConfig
from sevx86.memory.dram import SHADOW_BASE, SHARED_ALIAS_BASE, PhysicalMemory

# Plain ints on the hot path: IntFlag arithmetic costs about a microsecond a
# bit test, and a walk does dozens.
_CR0_PG = int(Cr0.PG)
_CR0_WP = int(Cr0.WP)
_CR4_PAE = int(Cr4.PAE)
_CR4_PSE = int(Cr4.PSE)
_CR4_SMEP = int(Cr4.SMEP)
_EFER_LMA = int(Efer.LMA)
_EFER_NXE = int(Efer.NXE)
_PTE_P = int(Pte.P)
_PTE_RW = int(Pte.RW)
_PTE_US = int(Pte.US)
_PTE_A = int(Pte.A)
_PTE_D = int(Pte.D)
_PTE_PS = int(Pte.PS)
_PTE_NX = int(Pte.NX)
_PF_P = int(PfErr.P)
_PF_WR = int(PfErr.WR)
_PF_US = int(PfErr.US)
_PF_RSVD = int(PfErr.RSVD)
_PF_ID = int(PfErr.ID)

LONG_MODE_LEVEL_NAMES = ("PML4E", "PDPE", "PDE", "PTE")


class Access(IntEnum):
    READ = 0
    WRITE = 1
    FETCH = 2

    @classmethod
    def from_unicorn(cls, uc_access: int) -> Access:
        if uc_access == UC_MEM_WRITE:
            return cls.WRITE
        if uc_access == UC_MEM_FETCH:
            return cls.FETCH
        return cls.READ


class PagingState:
    """The control state a page walk depends on, decoded once per walk."""

    __slots__ = (
        "cr0",
        "cr3",
        "cr4",
        "efer",
        "cpl",
        "paging",
        "long_mode",
        "pae",
        "nxe",
        "user",
        "wp",
        "smep",
        "pse",
    )

    def __init__(self, cr0: int, cr3: int, cr4: int, efer: int, cpl: int = 0):
        self.cr0, self.cr3, self.cr4, self.efer, self.cpl = cr0, cr3, cr4, efer, cpl
        self.paging = bool(cr0 & _CR0_PG)
        self.long_mode = self.paging and bool(efer & _EFER_LMA)
        self.pae = bool(cr4 & _CR4_PAE)
        self.nxe = bool(efer & _EFER_NXE)
        self.user = cpl == 3
        self.wp = bool(cr0 & _CR0_WP)
        self.smep = bool(cr4 & _CR4_SMEP)
        self.pse = bool(cr4 & _CR4_PSE)

    def __repr__(self) -> str:
        return (
            f"PagingState(cr0={self.cr0:#x}, cr3={self.cr3:#x}, cr4={self.cr4:#x}, "
            f"efer={self.efer:#x}, cpl={self.cpl})"
        )


@dataclass(frozen=True)
class Translation:
    """Where a linear page lives and what it allows."""

    vaddr: int  # linear page base (4 KiB aligned)
    gpa: int  # guest physical address of that 4 KiB page, C-bit stripped
    private: bool  # C=1 (or an access that is always private)
    writable: bool
    user: bool
    executable: bool
    page_size: int = PAGE_SIZE_4K
    dirty: bool = True  # leaf D bit (False: grant no write, so the next write sets it)


@dataclass(frozen=True)
class PageFault:
    """A refused translation: #PF with CR2 = ``vaddr`` and ``error_code``.

    A non-canonical address is refused too, but the architecture raises #GP(0)
    for it, not #PF: ``vector`` says which.
    """

    vaddr: int
    error_code: int
    reason: str
    vector: int = Vector.PF

    def __str__(self) -> str:
        name = vector_name(self.vector)
        return f"#{name} at {self.vaddr:#x} error {self.error_code:#x} ({self.reason})"


@dataclass(frozen=True)
class NestedFault:
    """A guest-physical address with no RAM behind it (or RAM the host made trap): an NPF.

    Under SEV-ES the CPU turns this into #VC with error code 0x400 (NPF); in
    the other modes the host emulates the access (MMIO).
    """

    vaddr: int
    gpa: int
    private: bool
    access: Access
    # A write to RAM the host mapped read-only (set_readonly): the nested
    # entry is present but not writable, which is not the reserved-bit fault
    # SEV-ES turns into #VC, so the host gets the NPF itself.
    readonly: bool = False


@dataclass(frozen=True)
class FormChange:
    """The page must change form before the access can be mapped.

    A C=0 access to a page held in private form (or a C=1 access to one held
    in shared form): the CPU engine converts the page (sevx86.memory.dram),
    flushes the TLBs and replays the access. Nothing is visible to the guest.
    """

    gpa: int
    to_shared: bool


WalkResult = Translation | PageFault


class MMU:
    """Page walker for one guest; stateless apart from the memory it reads."""

    def __init__(self, memory: PhysicalMemory, config: GuestConfig):
        self.memory = memory
        self.config = config
        self.c_bit = config.c_bit
        # Long-mode reserved bits: reduced MAXPHYADDR .. 51, minus the C-bit.
        reserved = ((1 << 52) - 1) & ~((1 << config.guest_phys_bits) - 1)
        self.reserved_mask = reserved & ~self.c_bit
        self.frame_mask = ((1 << config.guest_phys_bits) - 1) & ~(PAGE_SIZE_4K - 1)
        self.walks = 0

    # -- reading tables (always private) -------------------------------------
    def _entry(self, table_gpa: int, index: int, size: int = ENTRY_SIZE) -> int | None:
        addr = table_gpa + index * size
        memory = self.memory
        region = memory.guest_ram_at(addr, size)
        if region is None:
            return None
        if memory.shared and (addr >> 12) in memory.shared:
            # Table walks are private: a table page the guest shared reads as
            # the decryption of its DRAM bytes.
            return int.from_bytes(memory.read_private(addr, size), "little")
        off = addr - region.base
        return int.from_bytes(region.view[off : off + size], "little")

    def _set_bits(self, table_gpa: int, index: int, old: int, bits: int, size: int) -> None:
        """Set A/D bits the way the hardware does: in place, no exit."""
        if old & bits == bits:
            return
        addr = table_gpa + index * size
        memory = self.memory
        region = memory.guest_ram_at(addr, size)
        if region is None:
            return
        value = (old | bits).to_bytes(size, "little")
        if memory.shared and (addr >> 12) in memory.shared:
            memory.write_private(addr, value)
            return
        off = addr - region.base
        region.view[off : off + size] = value

    # -- the walk ----------------------------------------------------------
    def walk(self, vaddr: int, access: Access, state: PagingState) -> WalkResult:
        """Translate the linear page containing ``vaddr``."""
        self.walks += 1
        page = vaddr & ~(PAGE_SIZE_4K - 1)
        if not state.paging:
            return Translation(page, page & 0xFFFF_FFFF_FFFF_F000, True, True, True, True)
        if state.long_mode:
            result = self._walk_long(vaddr, page, access, state)
        elif state.pae:
            result = self._walk_pae(vaddr, page, access, state)
        else:
            result = self._walk_legacy(vaddr, page, access, state)
        if not state.wp and not state.user and result.__class__ is Translation:
            # CR0.WP=0: the supervisor may write read-only pages (APM vol 2,
            # 5.6.4), so the translation is writable for it -- Unicorn must get
            # the write permission or it refuses the store on its own.
            if not result.writable:  # type: ignore[union-attr]
                result = replace(result, writable=True)  # type: ignore[type-var]
        return result

    def _fault(
        self,
        vaddr: int,
        access: Access,
        state: PagingState,
        *,
        present: bool,
        rsvd: bool = False,
        reason: str,
    ) -> PageFault:
        code = _PF_P if present else 0
        if access is Access.WRITE:
            code |= _PF_WR
        if state.user:
            code |= _PF_US
        if rsvd:
            code |= _PF_RSVD | _PF_P
        if access is Access.FETCH and (state.nxe or state.smep):
            code |= _PF_ID
        return PageFault(vaddr, int(code), reason)

    def _check_rights(
        self, vaddr: int, access: Access, state: PagingState, writable: bool, user: bool, nx: bool
    ) -> PageFault | None:
        if state.user and not user:
            return self._fault(
                vaddr, access, state, present=True, reason="user access to a supervisor page"
            )
        if access is Access.WRITE and not writable and (state.user or state.wp):
            return self._fault(
                vaddr, access, state, present=True, reason="write to a read-only page"
            )
        if access is Access.FETCH:
            if nx:
                return self._fault(
                    vaddr, access, state, present=True, reason="fetch from a no-execute page"
                )
            if user and not state.user and state.smep:
                return self._fault(
                    vaddr,
                    access,
                    state,
                    present=True,
                    reason="supervisor fetch from a user page (SMEP)",
                )
        return None

    def _walk_long(self, vaddr: int, page: int, access: Access, state: PagingState) -> WalkResult:
        top = vaddr >> 47
        if top not in (0, (1 << 17) - 1):
            # Non-canonical: the architecture raises #GP(0), not #PF.
            return PageFault(vaddr, 0, "non-canonical address", Vector.GP)
        reserved = self.reserved_mask | (0 if state.nxe else _PTE_NX)
        table = state.cr3 & self.frame_mask
        writable = user = True
        nx = False
        entries: list[tuple[int, int, int]] = []
        for level, shift in enumerate(LEVEL_SHIFTS):
            index = (vaddr >> shift) & INDEX_MASK
            entry = self._entry(table, index)
            name = LONG_MODE_LEVEL_NAMES[level]
            if entry is None:
                return self._fault(
                    vaddr,
                    access,
                    state,
                    present=False,
                    reason=f"{name} table at {table:#x} is not RAM",
                )
            if not entry & _PTE_P:
                return self._fault(
                    vaddr, access, state, present=False, reason=f"{name} not present"
                )
            leaf = level == 3 or (level in (1, 2) and entry & _PTE_PS)
            bad = entry & reserved
            if level == 0 and entry & _PTE_PS:
                bad |= _PTE_PS
            if leaf and level == 1:
                bad |= entry & (PAGE_SIZE_1G - 1) & ~0x1FFF  # bits 29:13
            elif leaf and level == 2:
                bad |= entry & (PAGE_SIZE_2M - 1) & ~0x1FFF  # bits 20:13
            if bad:
                return self._fault(
                    vaddr,
                    access,
                    state,
                    present=True,
                    rsvd=True,
                    reason=f"reserved bits {bad:#x} set in {name}",
                )
            writable = writable and bool(entry & _PTE_RW)
            user = user and bool(entry & _PTE_US)
            nx = nx or (state.nxe and bool(entry & _PTE_NX))
            entries.append((table, index, entry))
            if leaf:
                size = (PAGE_SIZE_1G, PAGE_SIZE_2M, PAGE_SIZE_4K)[level - 1]
                fault = self._check_rights(vaddr, access, state, writable, user, nx)
                if fault is not None:
                    return fault
                for t, i, e in entries:
                    self._set_bits(t, i, e, _PTE_A, ENTRY_SIZE)
                dirty = bool(entry & _PTE_D)
                if access is Access.WRITE and not dirty:
                    self._set_bits(table, index, entry | _PTE_A, _PTE_A | _PTE_D, ENTRY_SIZE)
                    dirty = True
                frame = entry & self.frame_mask & ~(size - 1)
                gpa = frame | (vaddr & (size - 1) & ~(PAGE_SIZE_4K - 1))
                private = access is Access.FETCH or not self.c_bit or bool(entry & self.c_bit)
                return Translation(page, gpa, private, writable, user, not nx, size, dirty)
            table = entry & self.frame_mask
        raise AssertionError("unreachable: level 3 is always a leaf")

    def _walk_pae(self, vaddr: int, page: int, access: Access, state: PagingState) -> WalkResult:
        # Legacy PAE: a 4-entry PDPT, then PD and PT; the C-bit cannot take
        # effect before long mode, so it is stripped and the page is private.
        vaddr &= 0xFFFF_FFFF
        mask = self.frame_mask | self.c_bit
        strip = ~self.c_bit
        reserved = self.reserved_mask | (0 if state.nxe else _PTE_NX)
        pdpte = self._entry(state.cr3 & 0xFFFF_FFE0, (vaddr >> 30) & 3)
        if pdpte is None or not pdpte & _PTE_P:
            return self._fault(vaddr, access, state, present=False, reason="PDPTE not present")
        table = pdpte & mask & strip
        writable = user = True
        nx = False
        for level, shift in ((2, 21), (3, 12)):
            index = (vaddr >> shift) & INDEX_MASK
            entry = self._entry(table, index)
            if entry is None or not entry & _PTE_P:
                return self._fault(
                    vaddr,
                    access,
                    state,
                    present=False,
                    reason=f"{LONG_MODE_LEVEL_NAMES[level]} not present",
                )
            if entry & reserved:
                return self._fault(
                    vaddr, access, state, present=True, rsvd=True, reason="reserved bits set"
                )
            writable = writable and bool(entry & _PTE_RW)
            user = user and bool(entry & _PTE_US)
            nx = nx or (state.nxe and bool(entry & _PTE_NX))
            leaf = level == 3 or bool(entry & _PTE_PS)
            if leaf:
                size = PAGE_SIZE_4K if level == 3 else PAGE_SIZE_2M
                fault = self._check_rights(vaddr, access, state, writable, user, nx)
                if fault is not None:
                    return fault
                self._set_bits(
                    table,
                    index,
                    entry,
                    _PTE_A | (_PTE_D if access is Access.WRITE else 0),
                    ENTRY_SIZE,
                )
                frame = entry & mask & strip & ~(size - 1)
                gpa = frame | (vaddr & (size - 1) & ~(PAGE_SIZE_4K - 1))
                return Translation(page & 0xFFFF_FFFF, gpa, True, writable, user, not nx, size)
            table = entry & mask & strip
        raise AssertionError("unreachable")

    def _walk_legacy(self, vaddr: int, page: int, access: Access, state: PagingState) -> WalkResult:
        # 32-bit paging: two levels of 4-byte entries, 4 MiB pages with PSE.
        vaddr &= 0xFFFF_FFFF
        pde = self._entry(state.cr3 & 0xFFFF_F000, vaddr >> 22, 4)
        if pde is None or not pde & _PTE_P:
            return self._fault(vaddr, access, state, present=False, reason="PDE not present")
        writable, user = bool(pde & _PTE_RW), bool(pde & _PTE_US)
        if pde & _PTE_PS and state.pse:
            fault = self._check_rights(vaddr, access, state, writable, user, False)
            if fault is not None:
                return fault
            self._set_bits(
                state.cr3 & 0xFFFF_F000,
                vaddr >> 22,
                pde,
                _PTE_A | (_PTE_D if access is Access.WRITE else 0),
                4,
            )
            gpa = (pde & 0xFFC0_0000) | (vaddr & 0x003F_F000)
            return Translation(page & 0xFFFF_FFFF, gpa, True, writable, user, True, 1 << 22)
        pte = self._entry(pde & 0xFFFF_F000, (vaddr >> 12) & 0x3FF, 4)
        if pte is None or not pte & _PTE_P:
            return self._fault(vaddr, access, state, present=False, reason="PTE not present")
        writable = writable and bool(pte & _PTE_RW)
        user = user and bool(pte & _PTE_US)
        fault = self._check_rights(vaddr, access, state, writable, user, False)
        if fault is not None:
            return fault
        self._set_bits(state.cr3 & 0xFFFF_F000, vaddr >> 22, pde, _PTE_A, 4)
        self._set_bits(
            pde & 0xFFFF_F000,
            (vaddr >> 12) & 0x3FF,
            pte,
            _PTE_A | (_PTE_D if access is Access.WRITE else 0),
            4,
        )
        return Translation(page & 0xFFFF_FFFF, pte & 0xFFFF_F000, True, writable, user, True)

    # -- the answer for Unicorn ----------------------------------------------
    def unicorn_entry(
        self, t: Translation, access: Access
    ) -> tuple[int, int] | NestedFault | FormChange:
        """Unicorn physical address and permissions for a translation."""
        private = t.private
        memory = self.memory
        if memory.guest_ram_at(t.gpa, PAGE_SIZE_4K) is None or (
            memory.trapping and (t.gpa >> 12) in memory.trapping
        ):
            # No RAM there, or RAM the host emulates for now (set_trapping).
            return NestedFault(t.vaddr, t.gpa, private, access)
        rom = bool(memory.readonly) and (t.gpa >> 12) in memory.readonly
        if rom and access is Access.WRITE:
            return NestedFault(t.vaddr, t.gpa, private, access, readonly=True)
        shared_form = memory.shared and (t.gpa >> 12) in memory.shared
        if private and shared_form:
            return FormChange(t.gpa, to_shared=False)
        if access is Access.FETCH:
            # Fetches are always private, so a fill for a fetch maps the
            # plaintext even on a C=0 page; grant only execute there so a
            # later data access to the shared page refills.
            perms = UC_PROT_EXEC if not private else UC_PROT_EXEC | UC_PROT_READ
            if private and t.writable and t.dirty:
                perms |= UC_PROT_WRITE
            if not t.executable:
                perms &= ~UC_PROT_EXEC
            if rom:
                perms &= ~UC_PROT_WRITE  # a later write refills, and faults
            return t.gpa, perms
        perms = UC_PROT_READ
        if t.writable and (t.dirty or access is Access.WRITE) and not rom:
            perms |= UC_PROT_WRITE
        if private:
            # No execute right from a data fill: the first fetch from the page
            # then fills again as a fetch, so the engine learns every page it
            # runs code from (code_pages, and the atomics watch of parallel mode).
            return t.gpa, perms
        if not memory.shadowing:
            return SHARED_ALIAS_BASE + t.gpa, perms
        if not shared_form:
            return FormChange(t.gpa, to_shared=True)
        return SHADOW_BASE + t.gpa, perms


StateReader = Callable[[], PagingState]


class TlbFiller:
    """The ``UC_HOOK_TLB_FILL`` callback: walk, then answer Unicorn.

    A refusal leaves the reason in ``pending`` (a ``PageFault`` or a
    ``NestedFault``); Unicorn then stops with the PC on the faulting
    instruction and the CPU engine delivers the exception.
    """

    def __init__(self, mmu: MMU, state: StateReader):
        self.mmu = mmu
        self.state = state
        self.pending: PageFault | NestedFault | FormChange | None = None
        self.fills = 0

    def install(self, uc: Uc) -> None:
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        uc.hook_add(UC_HOOK_TLB_FILL, self.fill)

    def translate(self, vaddr: int, access: Access) -> Translation | PageFault | NestedFault:
        """One translation as the hook would do it, without touching Unicorn."""
        result = self.mmu.walk(vaddr, access, self.state())
        if isinstance(result, PageFault):
            return result
        memory = self.mmu.memory
        if memory.guest_ram_at(result.gpa) is None or memory.is_trapping(result.gpa):
            return NestedFault(vaddr, result.gpa, result.private, access)
        if access is Access.WRITE and memory.is_readonly(result.gpa):
            return NestedFault(vaddr, result.gpa, result.private, access, readonly=True)
        return result

    def fill(self, uc: Uc, vaddr: int, uc_access: int, entry, _data: object) -> bool:
        self.fills += 1
        access = Access.from_unicorn(uc_access)
        result = self.mmu.walk(vaddr, access, self.state())
        if result.__class__ is PageFault:
            self.pending = result
            return False
        answer = self.mmu.unicorn_entry(result, access)
        if answer.__class__ is not tuple:
            self.pending = answer  # NestedFault or FormChange
            return False
        entry.paddr, entry.perms = answer
        if access is Access.FETCH:
            self.mmu.memory.code_pages.add(result.gpa >> 12)
        return True
