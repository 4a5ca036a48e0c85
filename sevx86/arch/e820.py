"""The E820 memory map entry, as QEMU hands it to firmware in fw_cfg ``etc/e820``.

Format (QEMU ``hw/i386/e820_memory_layout.h`` ``struct e820_entry``, the
ACPI "address range descriptor" without its extended attributes): 20 packed
little-endian bytes -- base, length, type. Types: ACPI spec, "System Address
Map Interfaces" (1 memory, 2 reserved, 3 ACPI reclaim, 4 ACPI NVS, 5 unusable).
"""

from __future__ import annotations

from enum import IntEnum

from sevx86.arch.layout import Field, Layout

E820_ENTRY = Layout(
    "e820_entry",
    20,
    [Field("address", 0, 8), Field("length", 8, 8), Field("type", 16, 4)],
)


class E820Type(IntEnum):
    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5


def encode_e820(entries: list[tuple[int, int, int]]) -> bytes:
    """``[(address, length, type), ...]`` as the bytes of ``etc/e820``."""
    out = bytearray()
    for address, length, kind in entries:
        entry = E820_ENTRY.new()
        E820_ENTRY.write(entry, "address", address)
        E820_ENTRY.write(entry, "length", length)
        E820_ENTRY.write(entry, "type", kind)
        out += entry
    return bytes(out)


__all__ = ["E820_ENTRY", "E820Type", "encode_e820"]
