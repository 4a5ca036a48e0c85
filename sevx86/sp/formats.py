"""SEV API byte structures, each defined once as a ``Layout``.

Sources: SEV API (55766) chapter 6 (LAUNCH_START session buffer,
LAUNCH_MEASURE buffer, LAUNCH_SECRET packet header) and appendix C (SEV
certificate, ECDH public key), checked field by field against AMD's sev-tool
``sevapi.h`` (``SEV_SESSION_BUF``, ``SEV_MEASURE_BUF``, ``SEV_HDR_BUF``,
``SEV_CERT``, ``SEV_ECDH_PUBKEY``) and AMD's SEV firmware (AMD-ASPFW,
``sev_channel.h``/``sev_guest.c``) for the MAC inputs, whose byte order the
spec gives as a concatenation ``0x04 || API_MAJOR || ...``: here that
concatenation is a layout too, so the SP and the guest owner build it from
the same definition.
"""

from __future__ import annotations

from enum import IntEnum

from sevx86.arch.layout import Field, Layout

NONCE_SIZE = 16
IV_SIZE = 16
HMAC_SIZE = 32  # HMAC-SHA-256
TRANSPORT_KEY_SIZE = 16  # TEK and TIK are AES-128 / 128-bit HMAC keys
DIGEST_SIZE = 32  # the launch digest is SHA-256


class ChannelContext(IntEnum):
    """First byte of every trusted-channel MAC (firmware ``sev_channel_ctx``)."""

    SECRET = 0x01  # LAUNCH_SECRET packets
    DATA = 0x02  # SEND/RECEIVE_UPDATE_DATA packets
    VMSA = 0x03  # SEND/RECEIVE_UPDATE_VMSA packets
    MEASURE = 0x04  # the LAUNCH_MEASURE HMAC


# LAUNCH_START session data (SEV_SESSION_BUF): the guest owner's wrapped
# transport keys. WRAP_TK = AES-128-CTR(KEK, WRAP_IV, TEK || TIK),
# WRAP_MAC = HMAC-SHA-256(KIK, WRAP_TK), POLICY_MAC = HMAC-SHA-256(TIK, POLICY).
SESSION = Layout(
    "LAUNCH_START session",
    0x80,
    [
        Field("nonce", 0x00, NONCE_SIZE),
        Field("wrap_tk", 0x10, 2 * TRANSPORT_KEY_SIZE),
        Field("wrap_iv", 0x30, IV_SIZE),
        Field("wrap_mac", 0x40, HMAC_SIZE),
        Field("policy_mac", 0x60, HMAC_SIZE),
    ],
)

# LAUNCH_MEASURE output (SEV_MEASURE_BUF).
MEASUREMENT = Layout(
    "LAUNCH_MEASURE measurement",
    0x30,
    [
        Field("measure", 0x00, HMAC_SIZE),
        Field("mnonce", 0x20, NONCE_SIZE),
    ],
)

# The message LAUNCH_MEASURE's HMAC (keyed with TIK) covers:
# 0x04 || API_MAJOR || API_MINOR || BUILD || POLICY || DIGEST || MNONCE.
MEASURE_MAC_INPUT = Layout(
    "LAUNCH_MEASURE MAC input",
    0x38,
    [
        Field("context", 0x00, 1),
        Field("api_major", 0x01, 1),
        Field("api_minor", 0x02, 1),
        Field("build", 0x03, 1),
        Field("policy", 0x04, 4),
        Field("digest", 0x08, DIGEST_SIZE),
        Field("mnonce", 0x28, NONCE_SIZE),
    ],
)

# LAUNCH_SECRET / SEND / RECEIVE packet header (SEV_HDR_BUF).
PACKET_HEADER = Layout(
    "packet header",
    0x34,
    [
        Field("flags", 0x00, 4),
        Field("iv", 0x04, IV_SIZE),
        Field("mac", 0x14, HMAC_SIZE),
    ],
)
PACKET_FLAG_COMPRESSED = 1 << 0  # the firmware refuses it (UNSUPPORTED)

# Fixed start of the packet MAC's message; the transport data and, for
# LAUNCH_SECRET, the 32-byte MEASURE from LAUNCH_MEASURE follow it:
# CTX || FLAGS || IV || GUEST_LENGTH || TRANS_LENGTH || DATA || MEASURE.
PACKET_MAC_PREFIX = Layout(
    "packet MAC prefix",
    0x1D,
    [
        Field("context", 0x00, 1),
        Field("flags", 0x01, 4),
        Field("iv", 0x05, IV_SIZE),
        Field("guest_length", 0x15, 4),
        Field("trans_length", 0x19, 4),
    ],
)


class CertUsage(IntEnum):
    """Key usage codes (SEV API appendix C.1)."""

    ARK = 0x0000
    ASK = 0x0013
    INVALID = 0x1000
    OCA = 0x1001
    PEK = 0x1002
    PDH = 0x1003
    CEK = 0x1004


class CertAlgo(IntEnum):
    """Key algorithm codes (SEV API appendix C.1)."""

    INVALID = 0x000
    RSA_SHA256 = 0x001
    ECDSA_SHA256 = 0x002
    ECDH_SHA256 = 0x003
    RSA_SHA384 = 0x101
    ECDSA_SHA384 = 0x102
    ECDH_SHA384 = 0x103


class EcCurve(IntEnum):
    """Curve identifiers in SEV public keys (appendix C.3)."""

    P256 = 1
    P384 = 2


CERT_VERSION = 1
PUBKEY_AREA_SIZE = 0x404  # the RSA key form (4 + 512 + 512) sizes the union
SIGNATURE_AREA_SIZE = 0x200

# SEV certificate (appendix C, SEV_CERT): 0x824 bytes.
SEV_CERT = Layout(
    "SEV certificate",
    0x824,
    [
        Field("version", 0x000, 4),
        Field("api_major", 0x004, 1),
        Field("api_minor", 0x005, 1),
        Field("reserved0", 0x006, 1),
        Field("reserved1", 0x007, 1),
        Field("pubkey_usage", 0x008, 4),
        Field("pubkey_algo", 0x00C, 4),
        Field("pubkey", 0x010, PUBKEY_AREA_SIZE),
        Field("sig1_usage", 0x414, 4),
        Field("sig1_algo", 0x418, 4),
        Field("sig1", 0x41C, SIGNATURE_AREA_SIZE),
        Field("sig2_usage", 0x61C, 4),
        Field("sig2_algo", 0x620, 4),
        Field("sig2", 0x624, SIGNATURE_AREA_SIZE),
    ],
)

# An ECDH public key inside SEV_CERT["pubkey"] (appendix C.3.3): coordinates
# are little-endian, zero-padded to 576 bits.
EC_COORD_SIZE = 0x48
ECDH_PUBKEY = Layout(
    "ECDH public key",
    PUBKEY_AREA_SIZE,
    [
        Field("curve", 0x00, 4),
        Field("qx", 0x04, EC_COORD_SIZE),
        Field("qy", 0x4C, EC_COORD_SIZE),
    ],
)

# Labels of the NIST SP 800-108 KDF steps of the key agreement (firmware
# sev_channel.c, sev-tool crypto.h).
KDF_LABEL_MASTER_SECRET = b"sev-master-secret"
KDF_LABEL_KEK = b"sev-kek"
KDF_LABEL_KIK = b"sev-kik"
