"""The memory controller's AES engine: AES-128 in XEX form per 16-byte block.

SEV encrypts each 16-byte block of DRAM with the guest's key and a tweak that
depends on the block's system physical address (AMD APM vol 2, 7.10 and 15.34;
the tweak is why identical plaintext at two addresses gives different
ciphertext). sevx86 uses the XEX construction:

    C = E_K1(P xor T) xor T,   T = E_K2(block index),  block index = spa >> 4

Properties this gives, and which the tests check:

* moving ciphertext to another physical address decrypts to garbage;
* the same plaintext at the same address always gives the same ciphertext,
  so a host that puts back old ciphertext ("replay") is *not* detected.
  SEV and SEV-ES have no memory integrity; that only arrives with SEV-SNP's
  reverse map table. The VMSA is the exception: the Secure Processor keeps an
  integrity tag for it (see sevx86.sp).

Speed: T for a whole range is the AES-CTR keystream of K2 starting at the
range's first block index (CTR encrypts consecutive counters, which are
exactly the block indices), and "P xor T" is what CTR encryption of P
computes. A range of any length therefore costs three OpenSSL calls:
CTR_K2, ECB_K1, CTR_K2 -- never a Python loop over blocks.

The keys are never module globals: the Secure Processor creates them and hands
this object, not the key, to the memory controller.
"""

from __future__ import annotations

import threading

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16
# From this size on, the passes write into reused scratch buffers: letting
# OpenSSL allocate a fresh output per pass costs more than the AES itself.
_SCRATCH_FROM = 0x4000
# Tweaks of recently touched blocks (a GHCB page is 256 of them).
_TWEAK_CACHE = 1 << 16
KEY_BYTES = 32  # K1 (data) || K2 (tweak), two AES-128 keys


class CipherAlignmentError(ValueError):
    """The engine only encrypts whole, aligned 16-byte blocks."""


class MemoryCipher:
    """AES-128 XEX bound to one guest's key (the VEK)."""

    __slots__ = (
        "_data_key",
        "_tweak_key",
        "_local",
        "_tweaks",
    )

    def __init__(self, key: bytes):
        if len(key) != KEY_BYTES:
            raise ValueError(f"memory key must be {KEY_BYTES} bytes, got {len(key)}")
        self._data_key = algorithms.AES(key[:16])
        self._tweak_key = algorithms.AES(key[16:])
        # ECB contexts carry no chaining state, so one of each is reused --
        # per thread: a cryptography context is a Rust object that refuses a
        # second concurrent user ("Already borrowed"), which parallel vCPUs
        # reaching shared memory at once would be.
        self._local = threading.local()  # ECB contexts and scratch buffers, per thread
        self._tweaks: dict[int, int] = {}  # block SPA -> T, for single-block accesses

    @property
    def identity(self) -> bool:
        return False

    def __repr__(self) -> str:  # never show key material
        return "<MemoryCipher AES-128-XEX>"

    def _ecb(self) -> tuple:
        """This thread's (data encryptor, data decryptor, tweak encryptor)."""
        ctx = getattr(self._local, "ecb", None)
        if ctx is None:
            ctx = self._local.ecb = (
                Cipher(self._data_key, modes.ECB()).encryptor(),
                Cipher(self._data_key, modes.ECB()).decryptor(),
                Cipher(self._tweak_key, modes.ECB()).encryptor(),
            )
        return ctx

    def _whiten(self, spa: int, data: bytes | bytearray | memoryview) -> bytes:
        """data xor T for the blocks starting at ``spa`` (small ranges)."""
        if len(data) == BLOCK:
            tweak = self._ecb()[2].update((spa >> 4).to_bytes(BLOCK, "big"))
            return (int.from_bytes(data, "little") ^ int.from_bytes(tweak, "little")).to_bytes(
                BLOCK, "little"
            )
        counter = (spa >> 4).to_bytes(BLOCK, "big")
        return Cipher(self._tweak_key, modes.CTR(counter)).encryptor().update(data)

    def _scratch(self, size: int) -> tuple[memoryview, memoryview]:
        pair = getattr(self._local, "pair", None)
        if pair is None or len(pair[0]) < size + BLOCK:
            # update_into wants room for one more block than it writes.
            pair = (bytearray(size + BLOCK), bytearray(size + BLOCK))
            self._local.pair = pair
        return memoryview(pair[0]), memoryview(pair[1])

    def _xex(self, spa: int, data: bytes | bytearray | memoryview, ecb) -> bytes:
        if len(data) % BLOCK or spa % BLOCK:
            raise CipherAlignmentError(f"range {spa:#x}+{len(data):#x} is not 16-byte aligned")
        n = len(data)
        if n < _SCRATCH_FROM:
            return self._whiten(spa, ecb.update(self._whiten(spa, data))) if n else b""
        a, b = self._scratch(n)
        counter = (spa >> 4).to_bytes(BLOCK, "big")
        Cipher(self._tweak_key, modes.CTR(counter)).encryptor().update_into(data, a)
        ecb.update_into(a[:n], b)
        Cipher(self._tweak_key, modes.CTR(counter)).encryptor().update_into(b[:n], a)
        return bytes(a[:n])

    def _tweak(self, spa: int) -> int:
        tweak = self._tweaks.get(spa)
        if tweak is None:
            if len(self._tweaks) >= _TWEAK_CACHE:
                self._tweaks.clear()
            raw = self._ecb()[2].update((spa >> 4).to_bytes(BLOCK, "big"))
            tweak = self._tweaks[spa] = int.from_bytes(raw, "little")
        return tweak

    def encrypt_block(self, spa: int, data: bytes | bytearray | memoryview) -> bytes:
        """One aligned 16-byte block (the hot path of C=0 guest accesses)."""
        t = self._tweak(spa)
        x = self._ecb()[0].update((int.from_bytes(data, "little") ^ t).to_bytes(BLOCK, "little"))
        return (int.from_bytes(x, "little") ^ t).to_bytes(BLOCK, "little")

    def decrypt_block(self, spa: int, data: bytes | bytearray | memoryview) -> bytes:
        t = self._tweak(spa)
        x = self._ecb()[1].update((int.from_bytes(data, "little") ^ t).to_bytes(BLOCK, "little"))
        return (int.from_bytes(x, "little") ^ t).to_bytes(BLOCK, "little")

    def encrypt(self, spa: int, data: bytes | bytearray | memoryview) -> bytes:
        """Ciphertext of ``data`` stored at system physical address ``spa``."""
        return self._xex(spa, data, self._ecb()[0])

    def decrypt(self, spa: int, data: bytes | bytearray | memoryview) -> bytes:
        """Plaintext of ciphertext ``data`` found at ``spa``."""
        return self._xex(spa, data, self._ecb()[1])


class PlaintextMemory:
    """The memory controller with encryption off (mode ``none``, C=0 host pages)."""

    __slots__ = ()

    @property
    def identity(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "<PlaintextMemory>"

    def encrypt(self, spa: int, data: bytes | bytearray | memoryview) -> bytes:
        return bytes(data)

    def decrypt(self, spa: int, data: bytes | bytearray | memoryview) -> bytes:
        return bytes(data)

    encrypt_block = encrypt
    decrypt_block = decrypt


def aligned_span(addr: int, size: int) -> tuple[int, int]:
    """The 16-byte aligned range ``(start, length)`` covering ``[addr, addr+size)``."""
    start = addr & ~(BLOCK - 1)
    end = (addr + size + BLOCK - 1) & ~(BLOCK - 1)
    return start, end - start
