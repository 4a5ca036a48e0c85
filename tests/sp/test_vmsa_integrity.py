"""Runtime VMSA integrity: what the CPU engine relies on at every VMRUN."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sevx86.arch.vmsa import VMSA, VMSA_SIZE
from sevx86.sp.errors import SevApiStatus, SevError
from sevx86.sp.policy import GuestPolicy, PolicyFlag
from sevx86.sp.secure_processor import SecureProcessor
from tests.sp.conftest import ES_POLICY, guest_memory

SPAS = (0x20000, 0x21000)


def _running_guest(sp: SecureProcessor, *, finish: bool = True):
    handle = sp.launch_start(ES_POLICY)
    memory = guest_memory(sp, handle)
    for vcpu, spa in enumerate(SPAS):
        page = VMSA.new()
        VMSA.write(page, "rip", 0xFFF0 + vcpu)
        VMSA.write(page, "rdx", 0x800F12)
        memory.write_dram(spa, bytes(page))
        sp.launch_update_vmsa(handle, memory, spa, vcpu)
    sp.launch_measure(handle)
    if finish:
        sp.launch_finish(handle)
    return handle, memory


def test_untouched_vmsa_passes():
    sp = SecureProcessor()
    handle, memory = _running_guest(sp)
    assert sp.vmsa_check(handle, 0, memory, SPAS[0])
    assert sp.vmsa_check(handle, 1, memory, SPAS[1])


@settings(max_examples=150, deadline=None)
@given(offset=st.integers(0, VMSA_SIZE - 1), bit=st.integers(0, 7))
def test_any_flipped_dram_bit_fails_the_check(offset, bit):
    sp = SecureProcessor()
    handle, memory = _running_guest(sp)
    spa = SPAS[0]
    original = memory.read_dram(spa + offset, 1)
    memory.write_dram(spa + offset, bytes([original[0] ^ (1 << bit)]))  # the host's write
    assert not sp.vmsa_check(handle, 0, memory, spa)
    memory.write_dram(spa + offset, original)  # the same ciphertext back: unchanged VMSA
    assert sp.vmsa_check(handle, 0, memory, spa)


def test_rollback_to_an_older_vmsa_fails():
    sp = SecureProcessor()
    handle, memory = _running_guest(sp)
    spa = SPAS[0]
    old_ciphertext = memory.read_dram(spa, VMSA_SIZE)
    # An automatic exit: the CPU writes the new state and has the SP seal it.
    page = bytearray(memory.read_private(spa, VMSA_SIZE))
    VMSA.write(page, "rip", 0x1234)
    VMSA.write(page, "rax", 0xDEAD)
    memory.write_private(spa, bytes(page))
    sp.vmsa_seal(handle, 0, memory, spa)
    assert sp.vmsa_check(handle, 0, memory, spa)
    memory.write_dram(spa, old_ciphertext)  # the host replays the earlier VMSA
    assert memory.read_private(spa, VMSA_SIZE) != bytes(page)
    assert not sp.vmsa_check(handle, 0, memory, spa)


def test_a_change_without_a_seal_fails():
    sp = SecureProcessor()
    handle, memory = _running_guest(sp)
    memory.write_private(SPAS[0] + VMSA["rip"].offset, (0x4242).to_bytes(8, "little"))
    assert not sp.vmsa_check(handle, 0, memory, SPAS[0])


def test_another_vcpus_vmsa_or_address_fails():
    sp = SecureProcessor()
    handle, memory = _running_guest(sp)
    assert not sp.vmsa_check(handle, 0, memory, SPAS[1])
    assert not sp.vmsa_check(handle, 1, memory, SPAS[0])
    assert not sp.vmsa_check(handle, 7, memory, SPAS[0])
    # vCPU 1's plaintext moved into vCPU 0's page is still not vCPU 0's VMSA.
    memory.write_private(SPAS[0], memory.read_private(SPAS[1], VMSA_SIZE))
    assert not sp.vmsa_check(handle, 0, memory, SPAS[0])


def test_vmsa_tags_are_per_guest():
    sp = SecureProcessor()
    a, mem_a = _running_guest(sp)
    b, mem_b = _running_guest(sp)
    assert sp.vmsa_check(a, 0, mem_a, SPAS[0]) and sp.vmsa_check(b, 0, mem_b, SPAS[0])
    assert not sp.vmsa_check(a, 0, mem_b, SPAS[0])  # the other guest's memory and key


def test_no_vmrun_before_launch_finish():
    sp = SecureProcessor()
    handle, memory = _running_guest(sp, finish=False)
    assert not sp.vmsa_check(handle, 0, memory, SPAS[0])
    with pytest.raises(SevError) as e:
        sp.vmsa_seal(handle, 0, memory, SPAS[0])
    assert e.value.status is SevApiStatus.INVALID_GUEST_STATE
    sp.launch_finish(handle)
    assert sp.vmsa_check(handle, 0, memory, SPAS[0])


def test_seal_refuses_unknown_vcpu_or_moved_vmsa():
    sp = SecureProcessor()
    handle, memory = _running_guest(sp)
    with pytest.raises(SevError) as e:
        sp.vmsa_seal(handle, 5, memory, SPAS[0])
    assert e.value.status is SevApiStatus.INVALID_PARAM
    with pytest.raises(SevError) as e:
        sp.vmsa_seal(handle, 0, memory, SPAS[1])
    assert e.value.status is SevApiStatus.INVALID_ADDRESS


def test_launch_vmsa_is_measured_encrypted_and_sealed():
    sp = SecureProcessor()
    handle = sp.launch_start(ES_POLICY)
    memory = guest_memory(sp, handle)
    page = os.urandom(VMSA_SIZE)
    memory.write_dram(SPAS[0], page)
    sp.launch_update_vmsa(handle, memory, SPAS[0], 0)
    assert memory.read_private(SPAS[0], VMSA_SIZE) == page
    assert memory.read_dram(SPAS[0], VMSA_SIZE) != page
    with pytest.raises(SevError) as e:
        sp.launch_update_vmsa(handle, memory, SPAS[1], 0)
    assert e.value.status is SevApiStatus.INVALID_PARAM
    sp.launch_measure(handle)
    sp.launch_finish(handle)
    assert sp.vmsa_check(handle, 0, memory, SPAS[0])


def _debuggable_running_guest(sp: SecureProcessor):
    handle = sp.launch_start(GuestPolicy.make(PolicyFlag.ES))  # ES, no NODBG
    memory = guest_memory(sp, handle)
    for vcpu, spa in enumerate(SPAS):
        page = VMSA.new()
        VMSA.write(page, "rip", 0xFFF0 + vcpu)
        memory.write_dram(spa, bytes(page))
        sp.launch_update_vmsa(handle, memory, spa, vcpu)
    sp.launch_measure(handle)
    sp.launch_finish(handle)
    return handle, memory


def test_dbg_encrypt_of_a_vmsa_is_sealed_by_the_sp():
    # A debugger the owner allowed writes registers through DBG_ENCRYPT; the SP
    # made that write, so VMRUN accepts the page (and loads the new RAX).
    sp = SecureProcessor()
    handle, memory = _debuggable_running_guest(sp)
    page = bytearray(sp.dbg_decrypt(handle, memory, SPAS[1], VMSA_SIZE))
    VMSA.write(page, "rax", 0x1234)
    sp.dbg_encrypt(handle, memory, SPAS[1], bytes(page))
    assert sp.vmsa_check(handle, 1, memory, SPAS[1])
    assert VMSA.read(memory.read_private(SPAS[1], VMSA_SIZE), "rax") == 0x1234
    assert sp.vmsa_check(handle, 0, memory, SPAS[0])  # the other vCPU's seal is untouched


def test_a_write_that_is_not_dbg_encrypt_still_fails_after_one():
    sp = SecureProcessor()
    handle, memory = _debuggable_running_guest(sp)
    sp.dbg_encrypt(handle, memory, SPAS[0], bytes(16))  # first 16 bytes (ES selector etc.)
    assert sp.vmsa_check(handle, 0, memory, SPAS[0])
    memory.write_private(SPAS[0] + 0x1F8, (7).to_bytes(8, "little"))  # not through the SP
    assert not sp.vmsa_check(handle, 0, memory, SPAS[0])
