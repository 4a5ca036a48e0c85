"""The UEFI variable store in a flash firmware volume (edk2's format, as OVMF_VARS.fd).

Source: edk2 MdeModulePkg/Include/Guid/VariableFormat.h: the variable store
follows the FV header (``sevx86.arch.uefi_fv``) and starts with a
``VARIABLE_STORE_HEADER`` whose signature says which variable header follows;
each variable is a header, its UCS-2 name and its data, the next header on a
4-byte boundary (``HEADER_ALIGNMENT``). Flash is written by clearing bits, so
a variable's life is in its ``State`` byte: added (0x3F), then marked in
deleted transition and deleted by clearing more bits.
"""

from __future__ import annotations

import uuid
from enum import IntEnum

from sevx86.arch.layout import Field, Layout
from sevx86.arch.uefi_fv import GUID_SIZE

# EFI_SYSTEM_NV_DATA_FV_GUID: the FV file system GUID of a variable store FV.
SYSTEM_NV_DATA_FV_GUID = uuid.UUID("fff12b8d-7696-4c8b-a985-2747075b4f50")
# Signatures of the variable store: which variable header it holds.
VARIABLE_GUID = uuid.UUID("ddcf3616-3275-4164-98b6-fe85707ffe7d")
AUTHENTICATED_VARIABLE_GUID = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")

VARIABLE_STORE_FORMATTED = 0x5A
VARIABLE_STORE_HEALTHY = 0xFE
VARIABLE_DATA = 0x55AA  # StartId of every variable header
HEADER_ALIGNMENT = 4

VARIABLE_STORE_HEADER = Layout(
    "VARIABLE_STORE_HEADER",
    0x1C,
    [
        Field("signature", 0x00, GUID_SIZE),
        Field("size", 0x10, 4),  # the store including this header, not the FV header
        Field("format", 0x14, 1),
        Field("state", 0x15, 1),
        Field("reserved", 0x16, 2),
        Field("reserved1", 0x18, 4),
    ],
)
VARIABLE_HEADER = Layout(
    "VARIABLE_HEADER",
    0x20,
    [
        Field("start_id", 0x00, 2),
        Field("state", 0x02, 1),
        Field("reserved", 0x03, 1),
        Field("attributes", 0x04, 4),
        Field("name_size", 0x08, 4),
        Field("data_size", 0x0C, 4),
        Field("vendor_guid", 0x10, GUID_SIZE),
    ],
)
AUTHENTICATED_VARIABLE_HEADER = Layout(
    "AUTHENTICATED_VARIABLE_HEADER",
    0x3C,
    [
        Field("start_id", 0x00, 2),
        Field("state", 0x02, 1),
        Field("reserved", 0x03, 1),
        Field("attributes", 0x04, 4),
        Field("monotonic_count", 0x08, 8),
        Field("timestamp", 0x10, 16),  # EFI_TIME
        Field("pubkey_index", 0x20, 4),
        Field("name_size", 0x24, 4),
        Field("data_size", 0x28, 4),
        Field("vendor_guid", 0x2C, GUID_SIZE),
    ],
)


class VarState(IntEnum):
    """Variable header ``State`` values (each clears bits of the one before)."""

    HEADER_VALID_ONLY = 0x7F
    ADDED = 0x3F
    IN_DELETED_TRANSITION = 0xFE  # ANDed into ADDED: 0x3E
    DELETED = 0xFD  # ANDed in: 0x3C


__all__ = [
    "AUTHENTICATED_VARIABLE_GUID",
    "AUTHENTICATED_VARIABLE_HEADER",
    "HEADER_ALIGNMENT",
    "SYSTEM_NV_DATA_FV_GUID",
    "VARIABLE_DATA",
    "VARIABLE_GUID",
    "VARIABLE_HEADER",
    "VARIABLE_STORE_FORMATTED",
    "VARIABLE_STORE_HEADER",
    "VARIABLE_STORE_HEALTHY",
    "VarState",
]
