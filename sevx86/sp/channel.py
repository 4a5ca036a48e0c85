"""The SEV trusted channel: key agreement, transport keys and their MACs.

What the guest owner and the Secure Processor both compute (SEV API 55766,
chapter 2 "Key Management" and chapter 6 LAUNCH_START / LAUNCH_MEASURE /
LAUNCH_SECRET). Each step below was checked against AMD's SEV firmware
(AMD-ASPFW ``sev_channel.c``, ``sev_guest.c``) and two guest-owner tools
(AMD sev-tool, virtee ``sev`` crate), whose published test vectors
tests/sp/test_channel.py replays:

1. Z = ECDH(owner key, platform PDH), P-384, the shared point's x
   coordinate as the standard (big-endian) ECDH output;
2. master = KDF(Z, "sev-master-secret", context = the session NONCE);
   KEK = KDF(master, "sev-kek"); KIK = KDF(master, "sev-kik"); 128 bits each;
3. KDF: NIST SP 800-108 counter mode with HMAC-SHA-256, each block
   HMAC(key, i || label || 0x00 || context || L), ``i`` and ``L`` (bits)
   as 32-bit *little-endian* words;
4. WRAP_TK = AES-128-CTR(KEK, WRAP_IV, TEK || TIK); WRAP_MAC =
   HMAC-SHA-256(KIK, WRAP_TK); POLICY_MAC = HMAC-SHA-256(TIK, POLICY);
5. MEASURE = HMAC-SHA-256(TIK, 0x04 || API_MAJOR || API_MINOR || BUILD ||
   POLICY || DIGEST || MNONCE);
6. a LAUNCH_SECRET packet is AES-128-CTR(TEK, IV, secret) with MAC =
   HMAC-SHA-256(TIK, 0x01 || FLAGS || IV || GUEST_LENGTH || TRANS_LENGTH ||
   DATA || MEASURE), DATA the encrypted bytes.

A MAC that does not verify is the firmware's BAD_MEASUREMENT.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sevx86.sp.formats import (
    HMAC_SIZE,
    IV_SIZE,
    KDF_LABEL_KEK,
    KDF_LABEL_KIK,
    KDF_LABEL_MASTER_SECRET,
    MEASURE_MAC_INPUT,
    MEASUREMENT,
    NONCE_SIZE,
    PACKET_HEADER,
    PACKET_MAC_PREFIX,
    SESSION,
    TRANSPORT_KEY_SIZE,
    ChannelContext,
)

_KDF_BLOCK = hashlib.sha256().digest_size


class ChannelError(ValueError):
    """A MAC or length check of the trusted channel failed."""


def kdf(key: bytes, length: int, label: bytes, context: bytes = b"") -> bytes:
    """NIST SP 800-108 KDF in counter mode, HMAC-SHA-256, SEV's byte order."""
    bits = (8 * length).to_bytes(4, "little")
    out = bytearray()
    counter = 1
    while len(out) < length:
        message = counter.to_bytes(4, "little") + label + b"\x00" + context + bits
        out += hmac.new(key, message, hashlib.sha256).digest()
        counter += 1
    return bytes(out[:length])


def hmac_sha256(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


def aes128_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-128-CTR with a 128-bit big-endian counter block starting at ``iv``."""
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(data)


def ecdh_shared_secret(
    private_key: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey
) -> bytes:
    """Z: the x coordinate of the shared point, big-endian (48 bytes on P-384)."""
    return private_key.exchange(ec.ECDH(), peer)


@dataclass(frozen=True)
class SessionKeys:
    """KEK and KIK derived from the ECDH secret and the session nonce."""

    kek: bytes
    kik: bytes

    @classmethod
    def derive(cls, shared_secret: bytes, nonce: bytes) -> SessionKeys:
        master = kdf(shared_secret, TRANSPORT_KEY_SIZE, KDF_LABEL_MASTER_SECRET, nonce)
        return cls(
            kdf(master, TRANSPORT_KEY_SIZE, KDF_LABEL_KEK),
            kdf(master, TRANSPORT_KEY_SIZE, KDF_LABEL_KIK),
        )

    def __repr__(self) -> str:  # never show key material
        return "<SessionKeys>"


@dataclass(frozen=True)
class TransportKeys:
    """TEK (AES-128, encrypts packets) and TIK (HMAC key, authenticates them)."""

    tek: bytes
    tik: bytes

    def __post_init__(self) -> None:
        if len(self.tek) != TRANSPORT_KEY_SIZE or len(self.tik) != TRANSPORT_KEY_SIZE:
            raise ValueError(f"TEK and TIK are {TRANSPORT_KEY_SIZE} bytes each")

    @classmethod
    def generate(cls) -> TransportKeys:
        return cls(os.urandom(TRANSPORT_KEY_SIZE), os.urandom(TRANSPORT_KEY_SIZE))

    @classmethod
    def none(cls) -> TransportKeys:
        """The all-zero keys the firmware uses when LAUNCH_START has no session."""
        return cls(bytes(TRANSPORT_KEY_SIZE), bytes(TRANSPORT_KEY_SIZE))

    def to_bytes(self) -> bytes:
        """TEK || TIK, the plaintext of WRAP_TK (sev-tool's ``tmp_tk.bin``)."""
        return self.tek + self.tik

    @classmethod
    def from_bytes(cls, data: bytes) -> TransportKeys:
        if len(data) != 2 * TRANSPORT_KEY_SIZE:
            raise ValueError(f"TEK || TIK is {2 * TRANSPORT_KEY_SIZE} bytes, got {len(data)}")
        return cls(data[:TRANSPORT_KEY_SIZE], data[TRANSPORT_KEY_SIZE:])

    def __repr__(self) -> str:
        return "<TransportKeys>"


def build_session(
    keys: TransportKeys,
    policy: int,
    shared_secret: bytes,
    *,
    nonce: bytes | None = None,
    wrap_iv: bytes | None = None,
) -> bytes:
    """The owner's LAUNCH_START session buffer (``SESSION`` layout)."""
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    wrap_iv = os.urandom(IV_SIZE) if wrap_iv is None else wrap_iv
    session_keys = SessionKeys.derive(shared_secret, nonce)
    wrap_tk = aes128_ctr(session_keys.kek, wrap_iv, keys.to_bytes())
    buf = SESSION.new()
    SESSION["nonce"].write_bytes(buf, nonce)
    SESSION["wrap_tk"].write_bytes(buf, wrap_tk)
    SESSION["wrap_iv"].write_bytes(buf, wrap_iv)
    SESSION["wrap_mac"].write_bytes(buf, hmac_sha256(session_keys.kik, wrap_tk))
    SESSION["policy_mac"].write_bytes(buf, policy_mac(keys.tik, policy))
    return bytes(buf)


def open_session(session: bytes, shared_secret: bytes) -> TransportKeys:
    """The SP's side: check WRAP_MAC, unwrap TEK || TIK (POLICY_MAC is separate)."""
    if len(session) != SESSION.size:
        raise ChannelError(f"session is {len(session)} bytes, not {SESSION.size}")
    session_keys = SessionKeys.derive(shared_secret, SESSION["nonce"].read_bytes(session))
    wrap_tk = SESSION["wrap_tk"].read_bytes(session)
    expected = hmac_sha256(session_keys.kik, wrap_tk)
    if not hmac.compare_digest(expected, SESSION["wrap_mac"].read_bytes(session)):
        raise ChannelError("WRAP_MAC does not match: wrong PDH, owner key or nonce")
    plain = aes128_ctr(session_keys.kek, SESSION["wrap_iv"].read_bytes(session), wrap_tk)
    return TransportKeys.from_bytes(plain)


def policy_mac(tik: bytes, policy: int) -> bytes:
    return hmac_sha256(tik, int(policy).to_bytes(4, "little"))


def check_policy_mac(session: bytes, tik: bytes, policy: int) -> bool:
    return hmac.compare_digest(policy_mac(tik, policy), SESSION["policy_mac"].read_bytes(session))


@dataclass(frozen=True)
class Measurement:
    """LAUNCH_MEASURE's output: MEASURE (the HMAC) and MNONCE."""

    measure: bytes
    mnonce: bytes

    def to_bytes(self) -> bytes:
        buf = MEASUREMENT.new()
        MEASUREMENT["measure"].write_bytes(buf, self.measure)
        MEASUREMENT["mnonce"].write_bytes(buf, self.mnonce)
        return bytes(buf)

    @classmethod
    def from_bytes(cls, data: bytes) -> Measurement:
        if len(data) != MEASUREMENT.size:
            raise ValueError(f"a measurement is {MEASUREMENT.size} bytes, got {len(data)}")
        return cls(
            MEASUREMENT["measure"].read_bytes(data),
            MEASUREMENT["mnonce"].read_bytes(data),
        )


def measure_mac(
    tik: bytes,
    *,
    api_major: int,
    api_minor: int,
    build: int,
    policy: int,
    digest: bytes,
    mnonce: bytes,
) -> bytes:
    """MEASURE = HMAC(TIK, 0x04 || API_MAJOR || API_MINOR || BUILD || POLICY || LD || MNONCE)."""
    buf = MEASURE_MAC_INPUT.new()
    MEASURE_MAC_INPUT.write(buf, "context", ChannelContext.MEASURE)
    MEASURE_MAC_INPUT.write(buf, "api_major", api_major)
    MEASURE_MAC_INPUT.write(buf, "api_minor", api_minor)
    MEASURE_MAC_INPUT.write(buf, "build", build)
    MEASURE_MAC_INPUT.write(buf, "policy", int(policy))
    MEASURE_MAC_INPUT["digest"].write_bytes(buf, digest)
    MEASURE_MAC_INPUT["mnonce"].write_bytes(buf, mnonce)
    return hmac_sha256(tik, bytes(buf))


def packet_mac(
    tik: bytes,
    context: ChannelContext,
    flags: int,
    iv: bytes,
    guest_length: int,
    trans_data: bytes,
    measure: bytes = b"",
) -> bytes:
    """The MAC of a transport packet; ``measure`` only for LAUNCH_SECRET."""
    prefix = PACKET_MAC_PREFIX.new()
    PACKET_MAC_PREFIX.write(prefix, "context", context)
    PACKET_MAC_PREFIX.write(prefix, "flags", flags)
    PACKET_MAC_PREFIX["iv"].write_bytes(prefix, iv)
    PACKET_MAC_PREFIX.write(prefix, "guest_length", guest_length)
    PACKET_MAC_PREFIX.write(prefix, "trans_length", len(trans_data))
    return hmac_sha256(tik, bytes(prefix), trans_data, measure)


@dataclass(frozen=True)
class SecretPacket:
    """What LAUNCH_SECRET takes: the packet header and the transport data."""

    header: bytes
    data: bytes


def seal_secret(
    keys: TransportKeys,
    measure: bytes,
    secret: bytes,
    *,
    iv: bytes | None = None,
    flags: int = 0,
) -> SecretPacket:
    """Encrypt ``secret`` with TEK and bind it to this launch's MEASURE with TIK."""
    if len(measure) != HMAC_SIZE:
        raise ValueError(f"MEASURE is {HMAC_SIZE} bytes, got {len(measure)}")
    iv = os.urandom(IV_SIZE) if iv is None else iv
    data = aes128_ctr(keys.tek, iv, secret)
    mac = packet_mac(keys.tik, ChannelContext.SECRET, flags, iv, len(secret), data, measure)
    header = PACKET_HEADER.new()
    PACKET_HEADER.write(header, "flags", flags)
    PACKET_HEADER["iv"].write_bytes(header, iv)
    PACKET_HEADER["mac"].write_bytes(header, mac)
    return SecretPacket(bytes(header), data)


def open_secret(keys: TransportKeys, measure: bytes, header: bytes, data: bytes) -> bytes:
    """Check a LAUNCH_SECRET packet's MAC and decrypt it (the SP's side)."""
    if len(header) != PACKET_HEADER.size:
        raise ChannelError(f"packet header is {len(header)} bytes, not {PACKET_HEADER.size}")
    flags = PACKET_HEADER.read(header, "flags")
    iv = PACKET_HEADER["iv"].read_bytes(header)
    expected = packet_mac(keys.tik, ChannelContext.SECRET, flags, iv, len(data), data, measure)
    if not hmac.compare_digest(expected, PACKET_HEADER["mac"].read_bytes(header)):
        raise ChannelError("packet MAC does not match this launch's TIK and MEASURE")
    return aes128_ctr(keys.tek, iv, data)
