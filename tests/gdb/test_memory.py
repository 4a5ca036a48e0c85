"""The debugger's memory path: DBG_DECRYPT in 16-byte blocks, page walks with the C-bit, NODBG.

Independent expectations: DBG_DECRYPT takes 16-byte aligned blocks only
(SEV API 55766), so every request the SP sees must be aligned and within a
page (KVM's sev_dbg_crypt works a page at a time); the leaf entry's C-bit
says private or shared (APM vol 2, 15.34.5); under NODBG the SP refuses and
the host has only DRAM, which for a private page is ciphertext.
"""

from __future__ import annotations

import pytest

from sevx86.arch.cr import Cr0, Cr4
from sevx86.arch.msr import Efer
from sevx86.arch.vmsa import VMSA
from sevx86.config import GuestConfig, GuestMode
from sevx86.gdb.memory import DebugMemory, Door, Unreadable
from sevx86.memory.dram import PhysicalMemory
from sevx86.memory.pagetables import PageTableBuilder
from sevx86.sp.policy import GuestPolicy, PolicyFlag
from sevx86.sp.secure_processor import SecureProcessor

RAM = 0x40000
VADDR = 0x7F00_0040_0000
PRIVATE_PAGE, SHARED_PAGE = 0x10000, 0x11000
SECRET = b"the owner's secret, 30 bytes.."


def _guest(nodbg: bool):
    sp = SecureProcessor()
    flags = PolicyFlag.ES | (PolicyFlag.NODBG if nodbg else 0)
    handle = sp.launch_start(GuestPolicy.make(flags))
    config = GuestConfig(mode=GuestMode.SEV_ES, memory=RAM)
    memory = PhysicalMemory(config, sp.memory_cipher(handle))
    sp.activate(handle, 1)
    tables = PageTableBuilder(memory, 0x1000, 0x8000, config.c_bit)
    tables.map(VADDR, PRIVATE_PAGE, 0x1000)
    tables.map(VADDR + 0x1000, SHARED_PAGE, 0x1000, private=False)
    memory.write_private(PRIVATE_PAGE + 0x7, SECRET)
    memory.write_dram(SHARED_PAGE + 0x7, b"shared, in the clear")
    calls = []

    def decrypt(spa, n):
        calls.append((spa, n))
        return sp.dbg_decrypt(handle, memory, spa, n)

    door = Door(
        decrypt,
        lambda spa, data: sp.dbg_encrypt(handle, memory, spa, data),
        memory.read_dram,
        memory.write_dram,
        lambda gpa, n: memory.guest_ram_at(gpa, n) is not None,
    )
    refusals = []
    debug = DebugMemory(door, config, refusals.append)
    regs = VMSA.new()
    VMSA.write(regs, "cr0", Cr0.PG | Cr0.PE)
    VMSA.write(regs, "cr3", tables.cr3)
    VMSA.write(regs, "cr4", Cr4.PAE)
    VMSA.write(regs, "efer", Efer.LME | Efer.LMA)
    return debug, memory, bytes(regs), calls, refusals


def test_unaligned_virtual_read_is_widened_to_aligned_blocks():
    debug, _, regs, calls, refusals = _guest(nodbg=False)
    assert debug.read_virtual(VADDR + 0x7, len(SECRET), regs) == SECRET
    assert calls and all(spa % 16 == 0 and n % 16 == 0 for spa, n in calls)
    assert all(spa // 0x1000 == (spa + n - 1) // 0x1000 for spa, n in calls)
    assert refusals == []


def test_c_bit_clear_leaf_reads_the_shared_dram_as_is():
    debug, _, regs, _, _ = _guest(nodbg=False)
    t = debug.translate(VADDR + 0x1007, regs)
    assert (t.gpa, t.private) == (SHARED_PAGE + 0x7, False)
    assert debug.read_virtual(VADDR + 0x1007, 20, regs) == b"shared, in the clear"
    assert debug.translate(VADDR + 0x7, regs).private


def test_a_read_across_pages_splits_at_the_boundary():
    debug, memory, _, calls, _ = _guest(nodbg=False)
    memory.write_private(0x12FF8, b"ABCDEFGHIJKLMNOP")
    assert debug.read_physical(0x12FF8, 16) == b"ABCDEFGHIJKLMNOP"
    assert sorted(calls) == [(0x12FF0, 0x10), (0x13000, 0x10)]


def test_writes_go_through_dbg_encrypt_and_keep_the_neighbours():
    debug, memory, regs, _, _ = _guest(nodbg=False)
    debug.write_virtual(VADDR + 0x9, b"XY", regs)
    assert memory.read_private(PRIVATE_PAGE + 0x7, 6) == SECRET[:2] + b"XY" + SECRET[4:6]


def test_nodbg_gives_the_hosts_ciphertext_and_says_so_once():
    debug, memory, regs, _, refusals = _guest(nodbg=True)
    # No registers (SEV-ES): addresses are taken as guest-physical.
    first = debug.read_virtual(PRIVATE_PAGE + 0x7, len(SECRET), None)
    again = debug.read_physical(PRIVATE_PAGE + 0x7, len(SECRET))
    assert first == again == memory.read_dram(PRIVATE_PAGE + 0x7, len(SECRET))
    assert first != SECRET
    assert len(refusals) == 1 and refusals[0].status.name == "POLICY_FAILURE"


def test_nodbg_cannot_walk_encrypted_tables_even_with_registers():
    # Plain SEV leaves the registers to the host, but the tables are private.
    debug, _, regs, _, refusals = _guest(nodbg=True)
    assert debug.translate(VADDR + 0x7, regs).gpa == VADDR + 0x7
    assert len(refusals) == 1


def test_unmapped_addresses_are_unreadable():
    debug, _, regs, _, _ = _guest(nodbg=False)
    with pytest.raises(Unreadable):
        debug.read_virtual(VADDR + 0x5000, 4, regs)
    with pytest.raises(Unreadable):
        debug.read_physical(RAM + 0x100000, 4)
