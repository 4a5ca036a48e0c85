"""The trusted-channel crypto against published vectors and the spec's formulas.

Known answers come from the virtee ``sev`` crate's unit tests
(``src/session/key.rs``, ``src/session/mod.rs``), an independent guest-owner
implementation of the same SEV API steps; the measurement vector there is a
real platform's (API 0.18 build 15).
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sevx86.sp.certs import CertificateError, decode_ecdh_cert, encode_ecdh_cert
from sevx86.sp.channel import (
    ChannelError,
    Measurement,
    TransportKeys,
    build_session,
    ecdh_shared_secret,
    kdf,
    measure_mac,
    open_secret,
    open_session,
    seal_secret,
)
from sevx86.sp.formats import CertUsage

ZERO16 = bytes(16)


def test_kdf_known_answer():
    master = kdf(ZERO16, 16, b"sev-master-secret", ZERO16)
    assert master == bytes.fromhex("ab4d269fcc62bedb4511d56c386ce706")


def test_kdf_longer_than_one_block_uses_counter_2():
    out = kdf(b"k" * 16, 40, b"label", b"ctx")
    bits = (40 * 8).to_bytes(4, "little")
    block = [
        hmac.new(b"k" * 16, i.to_bytes(4, "little") + b"label\x00ctx" + bits, "sha256").digest()
        for i in (1, 2)
    ]
    assert out == (block[0] + block[1])[:40]


def test_session_known_answer():
    session = build_session(TransportKeys(ZERO16, ZERO16), 0, ZERO16, nonce=ZERO16, wrap_iv=ZERO16)
    assert session[0x00:0x10] == ZERO16  # nonce
    assert session[0x10:0x30] == bytes.fromhex(
        "2137bc7f9bb8bd7c3e55a576a15d3454b3856b8ba27afadf46dcfee9f02c02c4"
    )
    assert session[0x30:0x40] == ZERO16  # wrap IV
    assert session[0x40:0x60] == bytes.fromhex(
        "3176c0752738bd9d5e86689534020f528c088f16238826b000b327dee6aeed7d"
    )
    assert session[0x60:0x80] == bytes.fromhex(
        "aa7855e13839dd767cd5da7c1ff5036540c9264b7a803029315e55375287b4af"
    )


def test_measure_known_answer():
    tik = bytes.fromhex("66320db73158a35a255d051758e95ed4")
    measure = measure_mac(
        tik,
        api_major=0x00,
        api_minor=0x12,
        build=0x0F,
        policy=0,
        digest=hashlib.sha256(b"").digest(),
        mnonce=bytes.fromhex("4fbe0bedbad6c86ae8f68971d103e554"),
    )
    assert measure == bytes.fromhex(
        "6faab2daae389bcd3405a05d6cafe33c0414f7bedd0bae19ba5f38b7fd1664ea"
    )


def test_measure_is_the_spec_concatenation():
    tik, digest, mnonce = b"T" * 16, b"D" * 32, b"N" * 16
    by_hand = hmac.new(
        tik, b"\x04" + bytes([1, 55, 21]) + (0x5).to_bytes(4, "little") + digest + mnonce, "sha256"
    ).digest()
    ours = measure_mac(
        tik, api_major=1, api_minor=55, build=21, policy=5, digest=digest, mnonce=mnonce
    )
    assert ours == by_hand


def test_session_round_trip_and_tamper():
    keys = TransportKeys.generate()
    shared = b"z" * 48
    session = build_session(keys, 5, shared)
    assert open_session(session, shared) == keys
    with pytest.raises(ChannelError):
        open_session(session, b"y" * 48)
    for offset in (0x00, 0x10, 0x30, 0x40):  # nonce, WRAP_TK, WRAP_IV, WRAP_MAC
        bad = bytearray(session)
        bad[offset] ^= 1
        if offset == 0x30:
            # A changed IV still passes WRAP_MAC but unwraps other keys.
            assert open_session(bytes(bad), shared) != keys
        else:
            with pytest.raises(ChannelError):
                open_session(bytes(bad), shared)


def test_secret_packet_is_the_spec_construction():
    keys = TransportKeys(b"E" * 16, b"I" * 16)
    measure, iv, secret = b"M" * 32, b"V" * 16, b"S" * 32
    packet = seal_secret(keys, measure, secret, iv=iv)
    data = Cipher(algorithms.AES(keys.tek), modes.CTR(iv)).encryptor().update(secret)
    length = len(secret).to_bytes(4, "little")
    mac = hmac.new(
        keys.tik, b"\x01" + bytes(4) + iv + length + length + data + measure, "sha256"
    ).digest()
    assert packet.data == data
    assert packet.header == bytes(4) + iv + mac
    assert open_secret(keys, measure, packet.header, packet.data) == secret


@pytest.mark.parametrize("where", ["flags", "iv", "mac", "data", "measure", "tik"])
def test_tampered_secret_packet_is_refused(where):
    keys = TransportKeys.generate()
    measure = b"M" * 32
    packet = seal_secret(keys, measure, b"S" * 16)
    header, data = bytearray(packet.header), bytearray(packet.data)
    if where == "flags":
        header[0] ^= 2
    elif where == "iv":
        header[4] ^= 1
    elif where == "mac":
        header[-1] ^= 1
    elif where == "data":
        data[0] ^= 1
    elif where == "measure":
        measure = b"m" * 32
    else:
        keys = TransportKeys(keys.tek, bytes(16))
    with pytest.raises(ChannelError):
        open_secret(keys, measure, bytes(header), bytes(data))


def test_measurement_bytes_are_measure_then_mnonce():
    m = Measurement(b"A" * 32, b"B" * 16)
    assert m.to_bytes() == b"A" * 32 + b"B" * 16
    assert Measurement.from_bytes(m.to_bytes()) == m
    with pytest.raises(ValueError):
        Measurement.from_bytes(b"x" * 47)


def test_ecdh_both_sides_agree_and_cert_round_trips():
    platform = ec.generate_private_key(ec.SECP384R1())
    owner = ec.generate_private_key(ec.SECP384R1())
    cert = encode_ecdh_cert(platform.public_key())
    assert len(cert) == 0x824
    x = platform.public_key().public_numbers().x
    assert cert[0x14 : 0x14 + 72] == x.to_bytes(72, "little")  # QX, little-endian
    assert int.from_bytes(cert[0x08:0x0C], "little") == 0x1003  # usage PDH
    pdh = decode_ecdh_cert(cert)
    z1 = ecdh_shared_secret(owner, pdh)
    z2 = ecdh_shared_secret(platform, owner.public_key())
    assert z1 == z2 and len(z1) == 48


def test_bad_certificates_are_refused():
    cert = bytearray(encode_ecdh_cert(ec.generate_private_key(ec.SECP384R1()).public_key()))
    with pytest.raises(CertificateError):
        decode_ecdh_cert(bytes(cert[:-1]))
    with pytest.raises(CertificateError):
        decode_ecdh_cert(bytes(cert), CertUsage.PEK)
    off_curve = bytearray(cert)
    off_curve[0x14] ^= 1
    with pytest.raises(CertificateError):
        decode_ecdh_cert(bytes(off_curve))
    with pytest.raises(CertificateError):
        encode_ecdh_cert(ec.generate_private_key(ec.SECP256R1()).public_key())
