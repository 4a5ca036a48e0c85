"""A small flash image with an OVMF-style footer GUID table, built by hand.

Built with ``struct`` from the layout QEMU's ``pc_system_parse_ovmf_flash``
and OVMF's ResetVectorVtf0.asm describe (entries ``data || u16 len || GUID``
growing down from a footer ``u16 table-len || footer GUID`` that ends 0x20
bytes before the image end), independently of ``sevx86.boot.ovmf``.
"""

from __future__ import annotations

import hashlib
import struct
import uuid

FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
RESET_BLOCK_GUID = uuid.UUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
SECRET_AREA_GUID = uuid.UUID("4c2eb361-7d9b-4cc3-8081-127c90d3d294")
UNRELATED_GUID = uuid.UUID("12345678-9abc-4def-8123-456789abcdef")

DEFAULT_SIZE = 0x10000
DEFAULT_AP_RESET = 0xFFFF_E004
DEFAULT_SECRET_AREA = (0x5000, 0x1000)


def entry(guid: uuid.UUID, data: bytes) -> bytes:
    return data + struct.pack("<H", len(data) + 18) + guid.bytes_le


def body(size: int, seed: bytes = b"sevx86 synthetic firmware") -> bytearray:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        counter += 1
    return out[:size]


def build(
    *,
    size: int = DEFAULT_SIZE,
    ap_reset: int | None = DEFAULT_AP_RESET,
    secret_area: tuple[int, int] | None = DEFAULT_SECRET_AREA,
    legacy: bool = False,
) -> bytes:
    """An image whose footer table holds the given entries.

    ``legacy``: the reset block alone right below the last 0x20 bytes, as
    OVMF did before the GUID table (QEMU still accepts it).
    """
    image = body(size)
    # The reset vector: 16 bytes at 0xFFF0 of the top page, then padding.
    image[-0x20:] = b"\xf4" * 0x20
    if legacy:
        assert ap_reset is not None
        table = entry(RESET_BLOCK_GUID, struct.pack("<I", ap_reset))
    else:
        entries = entry(UNRELATED_GUID, b"\x01\x02\x03\x04\x05\x06")
        if secret_area is not None:
            entries += entry(SECRET_AREA_GUID, struct.pack("<II", *secret_area))
        if ap_reset is not None:
            entries += entry(RESET_BLOCK_GUID, struct.pack("<I", ap_reset))
        table = entries + struct.pack("<H", len(entries) + 18) + FOOTER_GUID.bytes_le
    end = size - 0x20
    image[end - len(table) : end] = table
    return bytes(image)
