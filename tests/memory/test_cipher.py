"""The AES-128 XEX engine: what SEV's memory encryption does and does not give."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sevx86.memory.cipher import CipherAlignmentError, MemoryCipher, aligned_span

KEY = bytes(range(32))


@pytest.fixture
def cipher() -> MemoryCipher:
    return MemoryCipher(KEY)


def test_ciphertext_differs_from_plaintext_and_round_trips(cipher):
    plain = b"top secret guest data!!!" * 16 + bytes(16)
    plain = plain[: len(plain) // 16 * 16]
    enc = cipher.encrypt(0x2000, plain)
    assert enc != plain
    # No 16-byte block of plaintext survives anywhere in the ciphertext.
    for i in range(0, len(plain), 16):
        assert plain[i : i + 16] not in enc
    assert cipher.decrypt(0x2000, enc) == plain


def test_moved_ciphertext_decrypts_to_garbage(cipher):
    plain = os.urandom(64)
    enc = cipher.encrypt(0x10000, plain)
    moved = cipher.decrypt(0x20000, enc)
    assert moved != plain
    # Every block is wrong, not just the first: the tweak is per block.
    for i in range(0, 64, 16):
        assert moved[i : i + 16] != plain[i : i + 16]


def test_equal_plaintext_at_two_addresses_differs(cipher):
    block = b"A" * 16
    assert cipher.encrypt(0x1000, block) != cipher.encrypt(0x1010, block)
    zeros = bytes(4096)
    page = cipher.encrypt(0x5000, zeros)
    blocks = {page[i : i + 16] for i in range(0, 4096, 16)}
    assert len(blocks) == 256


def test_same_plaintext_same_address_gives_same_ciphertext(cipher):
    # SEV-ES has no memory integrity: old ciphertext put back at the same
    # address decrypts fine (replay). Only SNP's RMP stops that.
    plain = os.urandom(48)
    assert cipher.encrypt(0x7000, plain) == cipher.encrypt(0x7000, plain)
    assert cipher.decrypt(0x7000, cipher.encrypt(0x7000, plain)) == plain


def test_blocks_are_independent_of_the_range_they_were_encrypted_in(cipher):
    data = os.urandom(0x20000)  # large enough for the scratch-buffer path
    whole = cipher.encrypt(0x40000, data)
    for off, length in ((0, 16), (0x30, 16), (0x1000, 0x40), (0x8000, 0x4000), (0x1FFF0, 16)):
        assert cipher.encrypt(0x40000 + off, data[off : off + length]) == whole[off : off + length]
        assert cipher.decrypt(0x40000 + off, whole[off : off + length]) == data[off : off + length]


def test_keys_matter():
    plain = bytes(32)
    assert MemoryCipher(KEY).encrypt(0, plain) != MemoryCipher(bytes(32)).encrypt(0, plain)
    assert "00 01" not in repr(MemoryCipher(KEY)) and KEY.hex() not in repr(MemoryCipher(KEY))


def test_refuses_unaligned_ranges_and_bad_keys(cipher):
    with pytest.raises(CipherAlignmentError):
        cipher.encrypt(0x1001, bytes(16))
    with pytest.raises(CipherAlignmentError):
        cipher.decrypt(0x1000, bytes(15))
    with pytest.raises(ValueError):
        MemoryCipher(bytes(16))


@pytest.mark.parametrize(
    "addr,size,expected",
    [(0x1000, 16, (0x1000, 16)), (0x1004, 4, (0x1000, 16)), (0x100C, 8, (0x1000, 32))],
)
def test_aligned_span(addr, size, expected):
    assert aligned_span(addr, size) == expected


@given(
    block=st.integers(min_value=0, max_value=(1 << 40) // 16),
    data=st.binary(min_size=1, max_size=300).map(lambda b: b * 16),
)
def test_round_trip_anywhere(block, data):
    c = MemoryCipher(KEY)
    spa = block * 16
    assert c.decrypt(spa, c.encrypt(spa, data)) == data


def test_threads_share_one_cipher_safely():
    # Parallel vCPUs reach the same guest's cipher at once. A cryptography
    # context refuses a second concurrent user ("Already borrowed"), so each
    # thread must get its own; results must equal the single-threaded ones.
    import threading

    c = MemoryCipher(KEY)
    jobs = [(n * 0x10000, os.urandom(0x10000)) for n in range(4)]
    expected = [MemoryCipher(KEY).encrypt(spa, data) for spa, data in jobs]
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        spa, data = jobs[i]
        start.wait()
        try:
            for _ in range(200):
                assert c.encrypt(spa, data) == expected[i]
                assert c.decrypt(spa, expected[i]) == data
                assert c.decrypt_block(spa, c.encrypt_block(spa, data[:16])) == data[:16]
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
