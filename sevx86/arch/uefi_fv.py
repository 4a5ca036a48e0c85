"""UEFI PI firmware volumes: the FV, FFS file and section headers, as data.

Source: UEFI Platform Initialization specification, volume 3 ("Shared
Architectural Elements"), chapter 3 "Firmware Storage Code Definitions":
``EFI_FIRMWARE_VOLUME_HEADER`` (3.2.1.1), ``EFI_FIRMWARE_VOLUME_EXT_HEADER``
(3.2.1.2), ``EFI_FFS_FILE_HEADER``/``EFI_FFS_FILE_HEADER2`` (3.2.3),
``EFI_COMMON_SECTION_HEADER``/``2`` and the section types (3.2.4, 3.2.5).
All fields are little-endian; GUIDs are stored in the Microsoft byte order
(``uuid.UUID.bytes_le``).
"""

from __future__ import annotations

import uuid
from enum import IntEnum

from sevx86.arch.layout import Field, Layout

GUID_SIZE = 16
FV_SIGNATURE = b"_FVH"
# EFI_FVB_ATTRIBUTES_2: erased flash reads as ones, so every FFS state bit
# is stored inverted (PI vol 3, 3.2.1.1 and 3.2.3.1).
FVB2_ERASE_POLARITY = 0x0000_0800

# EFI_FIRMWARE_FILE_SYSTEM2_GUID / 3_GUID: the FVs that hold FFS files.
FFS2_GUID = uuid.UUID("8c8ce578-8a3d-4f1c-9935-896185c32dd3")
FFS3_GUID = uuid.UUID("5473c07a-3dcb-4dca-bd6f-1e9689e7349a")
FFS_FILE_SYSTEMS = (FFS2_GUID, FFS3_GUID)

FV_HEADER = Layout(
    "EFI_FIRMWARE_VOLUME_HEADER",
    0x38,  # the fixed part; the block map follows
    [
        Field("zero_vector", 0x00, 16),
        Field("file_system_guid", 0x10, GUID_SIZE),
        Field("fv_length", 0x20, 8),
        Field("signature", 0x28, 4),
        Field("attributes", 0x2C, 4),
        Field("header_length", 0x30, 2),
        Field("checksum", 0x32, 2),
        Field("ext_header_offset", 0x34, 2),
        Field("reserved", 0x36, 1),
        Field("revision", 0x37, 1),
    ],
)
FV_EXT_HEADER = Layout(
    "EFI_FIRMWARE_VOLUME_EXT_HEADER",
    0x14,
    [Field("fv_name", 0x00, GUID_SIZE), Field("ext_header_size", 0x10, 4)],
)

FFS_FILE_HEADER = Layout(
    "EFI_FFS_FILE_HEADER",
    0x18,
    [
        Field("name", 0x00, GUID_SIZE),
        Field("integrity_check", 0x10, 2),
        Field("type", 0x12, 1),
        Field("attributes", 0x13, 1),
        Field("size", 0x14, 3),
        Field("state", 0x17, 1),
    ],
)
# EFI_FFS_FILE_HEADER2: FFS_ATTRIB_LARGE_FILE set, size 0, the 64-bit size after.
FFS_FILE_HEADER2_EXTENDED_SIZE = Field("extended_size", 0x18, 8)
FFS_FILE_HEADER2_SIZE = 0x20
FFS_ATTRIB_LARGE_FILE = 0x01
FFS_ALIGNMENT = 8  # files start on 8-byte boundaries in the FV
# EFI_FFS_FILE_STATE bits (PI vol 3, 3.2.3.1), before the erase polarity.
FFS_STATE_HEADER_VALID = 0x02
FFS_STATE_DATA_VALID = 0x04
FFS_STATE_DELETED = 0x10


class FfsFileType(IntEnum):
    """EFI_FV_FILETYPE (PI vol 3, 3.2.3.3)."""

    RAW = 0x01
    FREEFORM = 0x02
    SECURITY_CORE = 0x03
    PEI_CORE = 0x04
    DXE_CORE = 0x05
    PEIM = 0x06
    DRIVER = 0x07
    COMBINED_PEIM_DRIVER = 0x08
    APPLICATION = 0x09
    MM = 0x0A
    FIRMWARE_VOLUME_IMAGE = 0x0B
    COMBINED_MM_DXE = 0x0C
    MM_CORE = 0x0D
    MM_STANDALONE = 0x0E
    MM_CORE_STANDALONE = 0x0F
    FFS_PAD = 0xF0


SECTION_HEADER = Layout("EFI_COMMON_SECTION_HEADER", 4, [Field("size", 0, 3), Field("type", 3, 1)])
# EFI_COMMON_SECTION_HEADER2: size 0xFFFFFF, the 32-bit size after.
SECTION_HEADER2_EXTENDED_SIZE = Field("extended_size", 4, 4)
SECTION_HEADER2_SIZE = 8
SECTION_SIZE_EXTENDED = 0xFF_FFFF
SECTION_ALIGNMENT = 4  # sections start on 4-byte boundaries in their file


class SectionType(IntEnum):
    """EFI_SECTION_TYPE (PI vol 3, 3.2.5)."""

    COMPRESSION = 0x01
    GUID_DEFINED = 0x02
    DISPOSABLE = 0x03
    PE32 = 0x10
    PIC = 0x11
    TE = 0x12
    DXE_DEPEX = 0x13
    VERSION = 0x14
    USER_INTERFACE = 0x15
    COMPATIBILITY16 = 0x16
    FIRMWARE_VOLUME_IMAGE = 0x17
    FREEFORM_SUBTYPE_GUID = 0x18
    RAW = 0x19
    PEI_DEPEX = 0x1B
    MM_DEPEX = 0x1C


# EFI_GUID_DEFINED_SECTION after the common header (PI vol 3, 3.2.5.7).
GUID_DEFINED_SECTION = Layout(
    "EFI_GUID_DEFINED_SECTION body",
    0x14,
    [
        Field("section_definition_guid", 0x00, GUID_SIZE),
        Field("data_offset", 0x10, 2),  # from the start of the section header
        Field("attributes", 0x12, 2),
    ],
)
# EFI_COMPRESSION_SECTION after the common header (PI vol 3, 3.2.5.2).
COMPRESSION_SECTION = Layout(
    "EFI_COMPRESSION_SECTION body",
    5,
    [Field("uncompressed_length", 0, 4), Field("compression_type", 4, 1)],
)
COMPRESSION_NONE = 0x00

# GUID-defined section formats EDK II builds use.
LZMA_CUSTOM_DECOMPRESS_GUID = uuid.UUID("ee4e5898-3914-4259-9d6e-dc7bd79403cf")
CRC32_GUIDED_SECTION_GUID = uuid.UUID("fc1bcdb0-7d31-49aa-936a-a4600d9dd083")

__all__ = [
    "COMPRESSION_NONE",
    "COMPRESSION_SECTION",
    "CRC32_GUIDED_SECTION_GUID",
    "FFS_ALIGNMENT",
    "FFS_ATTRIB_LARGE_FILE",
    "FFS_FILE_HEADER",
    "FFS_FILE_HEADER2_EXTENDED_SIZE",
    "FFS_FILE_HEADER2_SIZE",
    "FFS_FILE_SYSTEMS",
    "FFS_STATE_DATA_VALID",
    "FFS_STATE_DELETED",
    "FFS_STATE_HEADER_VALID",
    "FV_EXT_HEADER",
    "FV_HEADER",
    "FV_SIGNATURE",
    "FVB2_ERASE_POLARITY",
    "FfsFileType",
    "GUID_DEFINED_SECTION",
    "LZMA_CUSTOM_DECOMPRESS_GUID",
    "SECTION_ALIGNMENT",
    "SECTION_HEADER",
    "SECTION_HEADER2_EXTENDED_SIZE",
    "SECTION_HEADER2_SIZE",
    "SECTION_SIZE_EXTENDED",
    "SectionType",
]
