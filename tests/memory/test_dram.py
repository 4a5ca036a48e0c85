"""DRAM views: the guest's C=1 plaintext, the host's ciphertext, the C=0 alias."""

from __future__ import annotations

import pytest
from unicorn.x86_const import UC_X86_REG_RAX, UC_X86_REG_RBX, UC_X86_REG_RCX, UC_X86_REG_RDX

from sevx86.config import ConfigError, GuestConfig, GuestMode
from sevx86.memory.dram import PhysicalMemory, UnmappedAddress

from .conftest import make_machine

SECRET = 0x5EC2E7_C0FFEE_42
PAGE = 0x300000
PRIVATE_VA = 0x401000
SHARED_VA = 0x400000


def _map_both_views(m):
    m.tables.map(SHARED_VA, PAGE, 0x1000, private=False)
    m.tables.map(PRIVATE_VA, PAGE, 0x1000, private=True)


def test_secret_written_with_c1_is_plaintext_to_guest_and_absent_from_dram(machine):
    _map_both_views(machine)
    machine.run(
        f"mov rdi, {PRIVATE_VA}; mov rax, {SECRET}; mov [rdi+0x88], rax; mov rbx, [rdi+0x88]"
    )
    assert machine.uc.reg_read(UC_X86_REG_RBX) == SECRET
    needle = SECRET.to_bytes(8, "little")
    # Nowhere in the host's view of all of DRAM, at any alignment.
    for region, image in machine.memory.dram_image():
        assert needle not in image, region.name
    # ... while the private view (the CPU's plaintext) really holds it.
    assert machine.memory.read_private(PAGE + 0x88, 8) == needle


def test_c0_read_of_private_page_gives_exactly_the_host_bytes(machine):
    _map_both_views(machine)
    machine.run(
        f"mov rdi, {PRIVATE_VA}; mov rax, {SECRET}; mov [rdi+0x10], rax;"
        f"mov rsi, {SHARED_VA}; mov rbx, [rsi+0x10]; mov rcx, [rsi+0x18]"
    )
    host = machine.memory.read_dram(PAGE + 0x10, 16)
    seen = machine.uc.reg_read(UC_X86_REG_RBX).to_bytes(8, "little")
    seen += machine.uc.reg_read(UC_X86_REG_RCX).to_bytes(8, "little")
    assert seen == host
    assert seen[:8] != SECRET.to_bytes(8, "little")


def test_host_written_page_reads_unchanged_with_c0_and_as_garbage_with_c1(machine):
    _map_both_views(machine)
    message = b"hello from host!"  # 16 bytes
    machine.memory.write_dram(PAGE + 0x40, message)
    machine.run(
        f"mov rsi, {SHARED_VA}; mov rax, [rsi+0x40]; mov rbx, [rsi+0x48];"
        f"mov rdi, {PRIVATE_VA}; mov rcx, [rdi+0x40]"
    )
    shared = machine.uc.reg_read(UC_X86_REG_RAX).to_bytes(8, "little")
    shared += machine.uc.reg_read(UC_X86_REG_RBX).to_bytes(8, "little")
    assert shared == message
    assert machine.uc.reg_read(UC_X86_REG_RCX).to_bytes(8, "little") != message[:8]


def test_guest_c0_write_is_what_the_host_reads(machine):
    _map_both_views(machine)
    machine.run(f"mov rsi, {SHARED_VA}; mov rax, {SECRET}; mov [rsi+0x20], rax")
    assert machine.memory.read_dram(PAGE + 0x20, 8) == SECRET.to_bytes(8, "little")
    assert machine.memory.read_private(PAGE + 0x20, 8) != SECRET.to_bytes(8, "little")


def test_host_copy_of_ciphertext_to_another_address_decrypts_to_garbage(machine):
    _map_both_views(machine)
    machine.run(f"mov rdi, {PRIVATE_VA}; mov rax, {SECRET}; mov [rdi], rax")
    stolen = machine.memory.read_dram(PAGE, 16)
    machine.memory.write_dram(PAGE + 0x800, stolen)  # relocation attack
    assert machine.memory.read_private(PAGE + 0x800, 8) != SECRET.to_bytes(8, "little")
    machine.memory.write_dram(PAGE, stolen)  # replay at the same address
    assert machine.memory.read_private(PAGE, 8) == SECRET.to_bytes(8, "little")


def test_partial_host_write_keeps_the_rest_of_the_block():
    m = make_machine()
    m.memory.write_private(PAGE, bytes(range(16)))
    before = m.memory.read_dram(PAGE, 16)
    m.memory.write_dram(PAGE + 4, b"\xaa\xbb")
    after = m.memory.read_dram(PAGE, 16)
    assert after[:4] == before[:4] and after[6:] == before[6:] and after[4:6] == b"\xaa\xbb"


def test_mode_none_host_sees_plaintext():
    m = make_machine(GuestMode.NONE)
    m.tables.map(PRIVATE_VA, PAGE, 0x1000)
    m.run(f"mov rdi, {PRIVATE_VA}; mov rax, {SECRET}; mov [rdi], rax")
    assert m.memory.read_dram(PAGE, 8) == SECRET.to_bytes(8, "little")


def test_regions_are_checked():
    mem = PhysicalMemory(GuestConfig(memory=1 << 20))
    with pytest.raises(ValueError, match="overlaps"):
        mem.add_region("dup", 0x80000, 0x1000)
    with pytest.raises(ValueError, match="page aligned"):
        mem.add_region("odd", 0x200800, 0x1000)
    with pytest.raises(ConfigError, match="reduced address bits"):
        mem.add_region("high", 1 << 47, 0x1000)
    vmsa = mem.allocate_host_page("vmsa0")
    assert mem.guest_ram_at(vmsa.base) is None and mem.region_at(vmsa.base) is vmsa
    with pytest.raises(UnmappedAddress):
        mem.read_private(0x200000, 4)


def test_page_changes_form_both_ways_without_changing_what_anyone_sees():
    m = make_machine(shadowing=True)
    _map_both_views(m)
    m.run(f"mov rdi, {PRIVATE_VA}; mov rax, {SECRET}; mov [rdi], rax")
    assert not m.memory.is_shared(PAGE)
    dram_before = m.memory.read_dram(PAGE, 16)
    # A C=0 read moves the page to shared form; the bytes seen are DRAM's.
    m.run(f"mov rsi, {SHARED_VA}; mov rbx, [rsi]")
    assert m.memory.is_shared(PAGE)
    assert m.uc.reg_read(UC_X86_REG_RBX).to_bytes(8, "little") == dram_before[:8]
    assert m.memory.read_dram(PAGE, 16) == dram_before
    assert m.memory.read_private(PAGE, 8) == SECRET.to_bytes(8, "little")
    # The host writes the shared page: a plain copy, seen as is through C=0.
    m.memory.write_dram(PAGE + 0x100, b"hello from host!")
    m.run(f"mov rsi, {SHARED_VA}; mov rax, [rsi + 0x100]")
    assert m.uc.reg_read(UC_X86_REG_RAX).to_bytes(8, "little") == b"hello fr"
    # A C=1 access moves it back; the secret is intact, the host's bytes are garbage.
    m.run(f"mov rdi, {PRIVATE_VA}; mov rcx, [rdi]; mov rdx, [rdi + 0x100]")
    assert not m.memory.is_shared(PAGE)
    assert m.uc.reg_read(UC_X86_REG_RCX) == SECRET
    assert m.uc.reg_read(UC_X86_REG_RDX).to_bytes(8, "little") != b"hello fr"
    assert m.memory.conversions == 2


def test_python_side_private_access_to_a_shared_form_page():
    m = make_machine(shadowing=True)
    _map_both_views(m)
    m.run(f"mov rsi, {SHARED_VA}; mov rbx, [rsi]")  # now in shared form
    m.memory.write_private(PAGE + 0x7, b"\x01\x02\x03")  # straddles nothing, partial block
    assert m.memory.read_private(PAGE + 0x7, 3) == b"\x01\x02\x03"
    assert m.memory.is_shared(PAGE)
    m.memory.make_private(PAGE)
    assert m.memory.read_private(PAGE + 0x7, 3) == b"\x01\x02\x03"


def test_ranges_mixing_page_forms_read_and_write_like_their_pages():
    m = make_machine(shadowing=True)
    m.memory.write_private(PAGE - 0x1000, bytes(range(256)) * 48)  # three pages
    before = m.memory.read_dram(PAGE - 0x1000, 0x3000)
    m.memory.make_shared(PAGE)  # the middle page changes form
    assert m.memory.read_dram(PAGE - 0x1000, 0x3000) == before
    pieces = b"".join(m.memory.read_dram(PAGE - 0x1000 + i * 0x1000, 0x1000) for i in range(3))
    assert pieces == before
    m.memory.write_dram(PAGE - 0x10, b"\x11" * 0x20)  # straddles private and shared
    assert m.memory.read_dram(PAGE - 0x10, 0x20) == b"\x11" * 0x20
    assert m.memory.read_private(PAGE - 0x1000, 0x10) == bytes(range(16))
