"""SEV certificates holding an ECDH P-384 public key (PDH and owner DH keys).

Format: SEV API (55766) appendix C, laid out in ``sevx86.sp.formats``
(``SEV_CERT``, ``ECDH_PUBKEY``). The platform exports its PDH this way
(PDH_CERT_EXPORT) and the guest owner hands its own DH key to LAUNCH_START
the same way (QEMU's ``dh-cert-file``). Coordinates are stored
little-endian, zero-padded to 72 bytes.

sevx86 does not model the signing chain (PEK, OCA, CEK, ASK, ARK): both
signature slots are left empty (usage INVALID), as for an owner's own DH
certificate. A guest owner therefore has to trust the PDH it is given.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from sevx86.sp.formats import (
    CERT_VERSION,
    EC_COORD_SIZE,
    ECDH_PUBKEY,
    SEV_CERT,
    CertAlgo,
    CertUsage,
    EcCurve,
)

P384_COORD_BYTES = 48
_ECDH_ALGOS = (CertAlgo.ECDH_SHA256, CertAlgo.ECDH_SHA384)


class CertificateError(ValueError):
    """Bytes that are not a usable SEV ECDH certificate."""


def encode_ecdh_cert(
    public_key: ec.EllipticCurvePublicKey,
    usage: CertUsage = CertUsage.PDH,
    *,
    algo: CertAlgo = CertAlgo.ECDH_SHA256,
    api_major: int = 0,
    api_minor: int = 0,
) -> bytes:
    if not isinstance(public_key.curve, ec.SECP384R1):
        raise CertificateError("SEV key agreement uses curve P-384")
    numbers = public_key.public_numbers()
    cert = SEV_CERT.new()
    SEV_CERT.write(cert, "version", CERT_VERSION)
    SEV_CERT.write(cert, "api_major", api_major)
    SEV_CERT.write(cert, "api_minor", api_minor)
    SEV_CERT.write(cert, "pubkey_usage", usage)
    SEV_CERT.write(cert, "pubkey_algo", algo)
    key = ECDH_PUBKEY.new()
    ECDH_PUBKEY.write(key, "curve", EcCurve.P384)
    ECDH_PUBKEY["qx"].write_bytes(key, numbers.x.to_bytes(EC_COORD_SIZE, "little"))
    ECDH_PUBKEY["qy"].write_bytes(key, numbers.y.to_bytes(EC_COORD_SIZE, "little"))
    SEV_CERT["pubkey"].write_bytes(cert, bytes(key))
    for slot in ("sig1", "sig2"):
        SEV_CERT.write(cert, f"{slot}_usage", CertUsage.INVALID)
        SEV_CERT.write(cert, f"{slot}_algo", CertAlgo.INVALID)
    return bytes(cert)


def decode_ecdh_cert(data: bytes, usage: CertUsage = CertUsage.PDH) -> ec.EllipticCurvePublicKey:
    """The public key of an SEV ECDH certificate, after the checks the SP makes."""
    if len(data) != SEV_CERT.size:
        raise CertificateError(f"a SEV certificate is {SEV_CERT.size:#x} bytes, got {len(data):#x}")
    if SEV_CERT.read(data, "version") != CERT_VERSION:
        raise CertificateError(f"certificate version {SEV_CERT.read(data, 'version')} is not 1")
    if SEV_CERT.read(data, "pubkey_usage") != usage:
        raise CertificateError(
            f"key usage {SEV_CERT.read(data, 'pubkey_usage'):#x} is not {usage.name}"
        )
    if SEV_CERT.read(data, "pubkey_algo") not in _ECDH_ALGOS:
        raise CertificateError(f"key algorithm {SEV_CERT.read(data, 'pubkey_algo'):#x} is not ECDH")
    key = SEV_CERT["pubkey"].read_bytes(data)
    if ECDH_PUBKEY.read(key, "curve") != EcCurve.P384:
        raise CertificateError(f"curve {ECDH_PUBKEY.read(key, 'curve')} is not P-384")
    x = ECDH_PUBKEY.read(key, "qx")
    y = ECDH_PUBKEY.read(key, "qy")
    if x >> (8 * P384_COORD_BYTES) or y >> (8 * P384_COORD_BYTES):
        raise CertificateError("coordinates wider than P-384")
    try:
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1()).public_key()
    except ValueError as exc:
        raise CertificateError(f"not a point on P-384: {exc}") from None
