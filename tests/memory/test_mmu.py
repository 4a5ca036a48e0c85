"""Page walks: faults with architectural error codes, large pages, the C-bit."""

from __future__ import annotations

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from unicorn.x86_const import UC_X86_REG_RAX

from sevx86.arch.cr import Cr0, Cr4
from sevx86.arch.msr import Efer
from sevx86.arch.paging import PfErr, Pte
from sevx86.arch.vectors import Vector
from sevx86.config import GuestConfig, GuestMode
from sevx86.memory.dram import SHARED_ALIAS_BASE, PhysicalMemory
from sevx86.memory.mmu import (
    MMU,
    Access,
    NestedFault,
    PageFault,
    PagingState,
    Translation,
)
from sevx86.memory.pagetables import PageTableBuilder

from .conftest import CODE

CFG = GuestConfig(mode=GuestMode.SEV_ES, memory=8 << 20)  # cbitpos 51, MAXPHYADDR 47
C_BIT = 1 << 51
LONG = int(Efer.LME | Efer.LMA | Efer.NXE)
CR0 = int(Cr0.PE | Cr0.PG | Cr0.WP | Cr0.ET)
CR4 = int(Cr4.PAE)


def setup(config: GuestConfig = CFG):
    mem = PhysicalMemory(config)
    tables = PageTableBuilder(mem, 0x200000, 0x100000, config.c_bit)
    return mem, tables, MMU(mem, config)


def state(tables, *, cpl=0, efer=LONG, cr0=CR0, cr4=CR4):
    return PagingState(cr0, tables.cr3, cr4, efer, cpl)


def fault_code(result) -> int:
    assert isinstance(result, PageFault), result
    assert result.vector == Vector.PF
    return result.error_code


def test_not_present_read_write_user_fetch():
    mem, t, mmu = setup()
    va = 0x40_0000
    assert fault_code(mmu.walk(va, Access.READ, state(t))) == 0
    assert fault_code(mmu.walk(va, Access.WRITE, state(t))) == PfErr.WR
    assert fault_code(mmu.walk(va, Access.READ, state(t, cpl=3))) == PfErr.US
    assert fault_code(mmu.walk(va, Access.FETCH, state(t))) == PfErr.ID
    # Without NX and SMEP the I/D bit is not reported (APM vol 2, 8.4.2).
    no_nx = state(t, efer=int(Efer.LME | Efer.LMA))
    assert fault_code(mmu.walk(va, Access.FETCH, no_nx)) == 0


def test_write_to_read_only_page():
    mem, t, mmu = setup()
    t.map(0x40_0000, 0x10_0000, 0x1000, writable=False)
    assert fault_code(mmu.walk(0x40_0010, Access.WRITE, state(t))) == PfErr.P | PfErr.WR
    assert isinstance(mmu.walk(0x40_0010, Access.READ, state(t)), Translation)
    # CR0.WP=0 lets the supervisor write read-only pages, not the user.
    no_wp = state(t, cr0=CR0 & ~Cr0.WP)
    assert isinstance(mmu.walk(0x40_0010, Access.WRITE, no_wp), Translation)


def test_cr0_wp_clear_gives_unicorn_write_permission_on_read_only_pages():
    # OVMF's DxeIpl clears CR0.WP to edit page tables it has made read-only;
    # without the write permission Unicorn refused the store itself and the
    # run ended in an emulation error instead of the write the CPU allows.
    from unicorn import UC_PROT_WRITE

    mem, t, mmu = setup()
    t.map(0x40_0000, 0x10_0000, 0x1000, writable=False)
    no_wp = state(t, cr0=CR0 & ~Cr0.WP)
    paddr, perms = mmu.unicorn_entry(mmu.walk(0x40_0010, Access.WRITE, no_wp), Access.WRITE)
    assert paddr == 0x10_0000 and perms & UC_PROT_WRITE
    # With WP set the same page stays read-only for the supervisor.
    _, perms = mmu.unicorn_entry(mmu.walk(0x40_0010, Access.READ, state(t)), Access.READ)
    assert not perms & UC_PROT_WRITE
    # And the user never writes it, WP or not.
    user = state(t, cr0=CR0 & ~Cr0.WP, cpl=3)
    t.map(0x50_0000, 0x11_0000, 0x1000, writable=False, user=True)
    assert fault_code(mmu.walk(0x50_0000, Access.WRITE, user)) == PfErr.P | PfErr.WR | PfErr.US


def test_nx_fetch():
    mem, t, mmu = setup()
    t.map(0x40_0000, 0x10_0000, 0x1000, nx=True)
    assert fault_code(mmu.walk(0x40_0000, Access.FETCH, state(t))) == PfErr.P | PfErr.ID
    assert isinstance(mmu.walk(0x40_0000, Access.READ, state(t)), Translation)


def test_user_access_to_supervisor_page():
    mem, t, mmu = setup()
    t.map(0x40_0000, 0x10_0000, 0x1000, user=False)
    code = fault_code(mmu.walk(0x40_0000, Access.WRITE, state(t, cpl=3)))
    assert code == PfErr.P | PfErr.WR | PfErr.US
    t.map(0x50_0000, 0x10_0000, 0x1000, user=True)
    assert isinstance(mmu.walk(0x50_0000, Access.WRITE, state(t, cpl=3)), Translation)


def corrupt(mem, tables, vaddr, level, bits):
    addr = tables.entry_address(vaddr, level)
    value = int.from_bytes(mem.read_private(addr, 8), "little")
    mem.write_private(addr, (value | bits).to_bytes(8, "little"))


@pytest.mark.parametrize(
    "bit,level,why",
    [
        (47, 3, "first bit above the reduced MAXPHYADDR (48 - 1)"),
        (48, 3, "between the reduced MAXPHYADDR and the C-bit"),
        (50, 1, "just below the C-bit, in a PDPE"),
        (49, 0, "in a PML4E"),
        (63, 2, "NX while EFER.NXE is clear (checked with NXE off)"),
    ],
)
def test_reserved_bits(bit, level, why):
    mem, t, mmu = setup()
    t.map(0x40_0000, 0x10_0000, 0x1000)
    assert isinstance(mmu.walk(0x40_0000, Access.READ, state(t)), Translation)
    corrupt(mem, t, 0x40_0000, level, 1 << bit)
    efer = int(Efer.LME | Efer.LMA) if bit == 63 else LONG
    code = fault_code(mmu.walk(0x40_0000, Access.READ, state(t, efer=efer)))
    assert code == PfErr.P | PfErr.RSVD, why


def test_c_bit_itself_is_not_reserved_and_selects_private():
    mem, t, mmu = setup()
    t.map(0x40_0000, 0x10_0000, 0x1000, private=True)
    t.map(0x40_1000, 0x10_0000, 0x1000, private=False)
    private = mmu.walk(0x40_0000, Access.READ, state(t))
    shared = mmu.walk(0x40_1000, Access.READ, state(t))
    assert private.private and private.gpa == 0x10_0000
    assert not shared.private and shared.gpa == 0x10_0000
    # Instruction fetches are private even through a C=0 mapping.
    assert mmu.walk(0x40_1000, Access.FETCH, state(t)).private
    assert mmu.unicorn_entry(shared, Access.READ)[0] == SHARED_ALIAS_BASE + 0x10_0000
    assert mmu.unicorn_entry(private, Access.READ)[0] == 0x10_0000


def test_ps_in_pml4e_is_reserved():
    mem, t, mmu = setup()
    t.map(0x40_0000, 0x10_0000, 0x1000)
    corrupt(mem, t, 0x40_0000, 0, Pte.PS)
    assert fault_code(mmu.walk(0x40_0000, Access.READ, state(t))) == PfErr.P | PfErr.RSVD


def test_2m_and_1g_pages_translate():
    cfg = GuestConfig(memory=64 << 20)
    mem, t, mmu = setup(cfg)
    t.map(0x4000_0000, 0x20_0000, 0x20_0000, page_size=0x20_0000)
    r = mmu.walk(0x4001_2345, Access.READ, state(t))
    assert r.page_size == 0x20_0000 and r.gpa == 0x21_2000
    t.map(0x80_0000_0000, 0x4000_0000, 0x4000_0000, page_size=0x4000_0000)
    r = mmu.walk(0x80_0345_6789, Access.WRITE, state(t))
    assert r.page_size == 0x4000_0000 and r.gpa == 0x4345_6000
    # That GPA lies beyond the 64 MiB of RAM: the host gets an NPF for it.
    assert isinstance(mmu.unicorn_entry(r, Access.WRITE), NestedFault)


def test_large_page_reserved_frame_bits():
    mem, t, mmu = setup()
    addr = t.set_entry(0x4000_0000, 2, 0x20_0000 | Pte.P | Pte.PS | C_BIT | (1 << 13))
    assert addr
    assert fault_code(mmu.walk(0x4000_0000, Access.READ, state(t))) == PfErr.P | PfErr.RSVD


def test_accessed_and_dirty_bits_are_set():
    mem, t, mmu = setup()
    leaf = t.set_entry(0x40_0000, 3, 0x10_0000 | Pte.P | Pte.RW | C_BIT)
    mmu.walk(0x40_0000, Access.READ, state(t))
    value = int.from_bytes(mem.read_private(leaf, 8), "little")
    assert value & Pte.A and not value & Pte.D
    r = mmu.walk(0x40_0000, Access.READ, state(t))
    assert not r.dirty  # so the engine grants no write until the D bit is set
    mmu.walk(0x40_0000, Access.WRITE, state(t))
    assert int.from_bytes(mem.read_private(leaf, 8), "little") & Pte.D


def test_paging_off_is_identity_and_private():
    mem, t, mmu = setup()
    r = mmu.walk(0xFFFF_FFF0, Access.FETCH, PagingState(0x10, 0, 0, 0))
    assert r.gpa == 0xFFFF_F000 and r.private


def test_legacy_and_pae_paging_are_private():
    mem, t, mmu = setup()
    # 32-bit paging, 4 MiB page with PSE.
    pd = 0x300000
    mem.write_private(pd + 4 * 1, (0x40_0000 | Pte.P | Pte.RW | Pte.PS).to_bytes(4, "little"))
    r = mmu.walk(0x45_6789, Access.READ, PagingState(CR0, pd, int(Cr4.PSE), 0))
    assert r.gpa == 0x45_6000 and r.private
    # PAE: PDPT -> PD (2 MiB page carrying the C-bit, stripped and private).
    pdpt, pd2 = 0x310000, 0x311000
    mem.write_private(pdpt, (pd2 | Pte.P).to_bytes(8, "little"))
    mem.write_private(pd2 + 8 * 2, (0x60_0000 | Pte.P | Pte.PS | C_BIT).to_bytes(8, "little"))
    r = mmu.walk(0x40_1000, Access.READ, PagingState(CR0, pdpt, CR4, int(Efer.NXE)))
    assert r.gpa == 0x60_1000 and r.private


def test_non_canonical_address_is_gp():
    mem, t, mmu = setup()
    r = mmu.walk(0x0000_8000_0000_0000, Access.READ, state(t))
    assert isinstance(r, PageFault) and r.vector == Vector.GP


def test_fault_under_unicorn_stops_on_the_instruction(machine):
    machine.tables.map(0x40_0000, 0x30_0000, 0x1000, writable=False)
    fault, rip = machine.run_fault("mov rdi, 0x400000; mov rax, [rdi]; mov [rdi], rax")
    assert isinstance(fault, PageFault)
    assert fault.vaddr == 0x40_0000 and fault.error_code == PfErr.P | PfErr.WR
    # Stopped on the store itself, not after it: it can be restarted.
    insn = next(Cs(CS_ARCH_X86, CS_MODE_64).disasm(machine.memory.read_private(rip, 15), rip))
    assert rip > CODE and insn.mnemonic == "mov" and insn.op_str == "qword ptr [rdi], rax"
    assert machine.uc.reg_read(UC_X86_REG_RAX) == 0


def test_unbacked_gpa_is_a_nested_fault_under_unicorn(machine):
    machine.tables.map(0x40_0000, 0xFEC0_0000, 0x1000, private=False)
    fault, _ = machine.run_fault("mov rdi, 0x400000; mov eax, [rdi]")
    assert isinstance(fault, NestedFault)
    assert fault.gpa == 0xFEC0_0000 and not fault.private and fault.access is Access.READ
