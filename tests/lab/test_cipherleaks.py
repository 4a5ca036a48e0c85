"""CipherLeaks: the host reads a secret register from VMSA ciphertext alone.

The mechanism (Li et al., USENIX Security 2021): the same plaintext at the
same physical address encrypts to the same ciphertext, and the VMSA stays
at one address. So the attack must recover every bit of the secret from the
ciphertext of R15's block, and nothing once that block never repeats.
"""

from __future__ import annotations

import pytest

from sevx86.lab import cipherleaks


@pytest.mark.parametrize("seed", [1, 7])
def test_every_secret_bit_is_recovered_from_ciphertext_only(seed):
    secret = cipherleaks.make_secret(seed)
    outcome = cipherleaks.attack(secret, no_repeat=False)
    assert outcome["guest run"] == "exit-status 0"
    assert outcome["bits recovered"] == cipherleaks.SECRET_BITS
    assert outcome["bits correct"] == cipherleaks.SECRET_BITS
    assert outcome["secret recovered"] == f"{secret:#010x}"
    assert outcome["exits to build the dictionary"] == cipherleaks.WARMUP_ROUNDS
    assert outcome["exits observed"] == cipherleaks.WARMUP_ROUNDS + cipherleaks.SECRET_BITS


def test_the_dictionary_holds_ciphertext_not_plaintext():
    from sevx86.lab.guest import launch

    guest = launch(
        "cipherleaks",
        "sev-es",
        defines={"SECRET": 5, "SECRET_BITS": 8, "WARMUP_ROUNDS": 2},
        vc_handler=False,
    )
    host = cipherleaks.CipherLeaksHost(guest.hv)
    assert guest.hv.run(timeout=60).ok
    # The plaintext block is (R14 = 0, R15 = k); the host must never have seen it.
    plaintexts = {bytes(8) + k.to_bytes(8, "little") for k in range(2)}
    assert len(host.dictionary) == 2 and not plaintexts & set(host.dictionary)
    assert host.recovered() == [1, 0, 1, 0, 0, 0, 0, 0]  # 5, least significant bit first


def test_a_guest_that_never_repeats_a_register_value_leaks_nothing():
    outcome = cipherleaks.attack(cipherleaks.make_secret(3), no_repeat=True)
    assert outcome["guest run"] == "exit-status 0"
    assert outcome["exits observed"] == cipherleaks.WARMUP_ROUNDS + cipherleaks.SECRET_BITS
    assert outcome["bits recovered"] == 0


def test_it_applies_to_sev_es_only():
    assert cipherleaks.SCENARIO.modes == ("sev-es",)
