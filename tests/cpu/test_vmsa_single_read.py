"""VMRUN loads the VMSA page it verified: one read, no window for the host.

Issue 11 point 3: the SP used to check one read of the page and the CPU then
loaded a second read, so a host thread writing in between got unverified
state loaded. The interleaving is forced here deterministically: the moment
the VMSA is read, the "host thread" puts an older, once-valid ciphertext of
the VMSA back (a replay); whatever VMRUN loads must be what it checked.
"""

from __future__ import annotations

from sevx86.arch.exits import SvmExit
from sevx86.arch.vmsa import VMSA_SIZE

from .conftest import RESULTS, make_guest

# Three HLTs; RBX counts what ran. Resumed from the first HLT's state, RBX
# would end at 1; resumed as the CPU left it at the second, 11.
PROGRAM = f"""
start:
    xor rbx, rbx
    mov rdi, {RESULTS:#x}
    hlt                     ; exit 1: the VMSA the host will replay
    add rbx, 1
    mov [rdi], rbx
    hlt                     ; exit 2
    add rbx, 10
    mov [rdi], rbx
    hlt                     ; exit 3
"""


def _replay_on_first_read(guest, spa: int, old_ciphertext: bytes) -> list[str]:
    """Make the next read of the VMSA page trigger a host write of ``old_ciphertext``."""
    memory = guest.machine.memory
    original = memory.read_private
    log: list[str] = []

    def read_private(addr: int, size: int) -> bytes:
        data = original(addr, size)
        if addr == spa and size == VMSA_SIZE:
            log.append("read")
            if log.count("read") == 1:
                guest.host.memory.write(spa, old_ciphertext)  # the host thread's write
                log.append("host wrote")
        return data

    memory.read_private = read_private
    return log


def test_a_vmsa_rewritten_right_after_the_check_is_not_what_vmrun_loads():
    guest = make_guest(PROGRAM)
    spa = guest.vcpu.vmsa_gpa
    assert guest.run().code == SvmExit.HLT
    replayed = guest.host.memory.read(spa, VMSA_SIZE)  # ciphertext, sealed at exit 1
    assert guest.run().code == SvmExit.HLT
    log = _replay_on_first_read(guest, spa, replayed)
    exit = guest.run()
    assert log[:2] == ["read", "host wrote"]
    # VMRUN ran on the state it verified (the one left at exit 2): the guest
    # continued to exit 3, not back from exit 1.
    assert exit.code == SvmExit.HLT
    assert guest.results(1) == (11,)
    assert log.count("read") == 1  # and it read the page once
