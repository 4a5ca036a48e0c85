"""Ciphertext relocation and replay on a guest variable.

Expectations from the cipher (AES-XEX, tweak = physical address; no
integrity in SEV/SEV-ES): a block moved to another address decrypts to
something else, the old block put back at its own address decrypts to the
old value; without encryption both moves copy plaintext.
"""

from __future__ import annotations

import pytest

from sevx86.lab import relocation


@pytest.mark.parametrize("mode", ["sev", "sev-es"])
def test_encrypted_relocation_gives_garbage_and_replay_the_old_value(mode):
    outcome = relocation.run([mode], seed=1).mode(mode)
    assert outcome["guest run"] == "exit-status 0"
    assert outcome["counter read after replay"] == relocation.FIRST_VALUE
    copy = int(outcome["copy read after relocation"], 16)
    assert copy not in (relocation.FIRST_VALUE, relocation.COPY_VALUE)
    assert outcome["relocated block read as the original"] is False
    assert outcome["guest stopped or refused"] is False


def test_without_encryption_both_moves_copy_plaintext():
    outcome = relocation.run(["none"], seed=1).mode("none")
    assert outcome["counter read after replay"] == relocation.FIRST_VALUE
    assert int(outcome["copy read after relocation"], 16) == relocation.FIRST_VALUE


def test_an_honest_host_leaves_the_counter_at_its_last_value():
    """The control: without the hostile host the guest reads what it wrote."""
    from sevx86.lab.guest import launch

    guest = launch("relocation", "sev-es")
    assert guest.hv.run(timeout=60).ok
    assert guest.private_u64("results") == relocation.SECOND_VALUE
    assert guest.machine.memory.read_private(guest.symbol("results") + 8, 8) == bytes(8)
