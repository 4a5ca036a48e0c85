"""The parts of PE/COFF and TE image headers a loader needs for the entry point.

Sources: Microsoft PE/COFF specification ("MS-DOS stub", "Signature",
"COFF File Header", "Optional Header Standard Fields", "Optional Header
Windows-Specific Fields"); the TE header: UEFI PI specification volume 1,
"TE Image" (``EFI_TE_IMAGE_HEADER``). Little-endian throughout.

Entry point of an image executed in place (what EDK II's
``PeCoffLoaderGetEntryPoint`` computes): for PE32/PE32+ the address of the
image (its DOS header) plus ``AddressOfEntryPoint``; for TE the address of
the TE header plus ``AddressOfEntryPoint`` plus the TE header size minus
``StrippedSize`` (the TE header replaces ``StrippedSize`` bytes of PE headers).
"""

from __future__ import annotations

from sevx86.arch.layout import Field, Layout

DOS_SIGNATURE = b"MZ"
PE_SIGNATURE = b"PE\0\0"
TE_SIGNATURE = b"VZ"

DOS_HEADER = Layout(
    "IMAGE_DOS_HEADER", 0x40, [Field("e_magic", 0x00, 2), Field("e_lfanew", 0x3C, 4)]
)
COFF_HEADER = Layout(
    "IMAGE_FILE_HEADER",
    20,
    [
        Field("machine", 0, 2),
        Field("number_of_sections", 2, 2),
        Field("time_date_stamp", 4, 4),
        Field("pointer_to_symbol_table", 8, 4),
        Field("number_of_symbols", 12, 4),
        Field("size_of_optional_header", 16, 2),
        Field("characteristics", 18, 2),
    ],
)
PE32_MAGIC = 0x10B
PE32PLUS_MAGIC = 0x20B
# The standard fields are common; ImageBase is 4 bytes at 28 in PE32 and
# 8 bytes at 24 in PE32+ (which has no BaseOfData).
OPTIONAL_HEADER_PE32 = Layout(
    "IMAGE_OPTIONAL_HEADER32 (start)",
    32,
    [
        Field("magic", 0, 2),
        Field("address_of_entry_point", 16, 4),
        Field("base_of_code", 20, 4),
        Field("base_of_data", 24, 4),
        Field("image_base", 28, 4),
    ],
)
OPTIONAL_HEADER_PE32PLUS = Layout(
    "IMAGE_OPTIONAL_HEADER64 (start)",
    32,
    [
        Field("magic", 0, 2),
        Field("address_of_entry_point", 16, 4),
        Field("base_of_code", 20, 4),
        Field("image_base", 24, 8),
    ],
)

TE_HEADER = Layout(
    "EFI_TE_IMAGE_HEADER",
    40,
    [
        Field("signature", 0, 2),
        Field("machine", 2, 2),
        Field("number_of_sections", 4, 1),
        Field("subsystem", 5, 1),
        Field("stripped_size", 6, 2),
        Field("address_of_entry_point", 8, 4),
        Field("base_of_code", 12, 4),
        Field("image_base", 16, 8),
        Field("data_directory", 24, 16),
    ],
)

MACHINE_I386 = 0x014C
MACHINE_X64 = 0x8664

__all__ = [
    "COFF_HEADER",
    "DOS_HEADER",
    "DOS_SIGNATURE",
    "MACHINE_I386",
    "MACHINE_X64",
    "OPTIONAL_HEADER_PE32",
    "OPTIONAL_HEADER_PE32PLUS",
    "PE32PLUS_MAGIC",
    "PE32_MAGIC",
    "PE_SIGNATURE",
    "TE_HEADER",
    "TE_SIGNATURE",
]
