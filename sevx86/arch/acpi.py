"""ACPI tables (ACPI 6.x, chapter 5.2) and QEMU's linker/loader commands, as layouts.

Tables: the common 36-byte header (5.2.6), the RSDP (5.2.5.3, the 36-byte
ACPI 2.0+ form), the XSDT (5.2.8: the header and 64-bit pointers), the FACS
(5.2.10), the FADT in its revision-3 form of 244 bytes (5.2.9, table 5.9:
what QEMU's PIIX machine builds), the MADT with its interrupt controller
structures (5.2.12), and the HPET table (IA-PC HPET specification 1.0a,
3.2.4). A Generic Address Structure (5.2.3.2) is 12 bytes.

QEMU's ``etc/table-loader`` (``hw/acpi/bios-linker-loader.c``) is a list of
128-byte commands: ALLOCATE a fw_cfg file in a memory zone with an
alignment, ADD_POINTER (add the address where a file was placed to a 1-,
2-, 4- or 8-byte value inside another), ADD_CHECKSUM (store in a byte the
value that makes a range of a file sum to 0). File names are NUL-padded
56-byte fields.
"""

from __future__ import annotations

from enum import IntEnum

from sevx86.arch.layout import Field, Layout

ACPI_HEADER = Layout(
    "ACPI table header",
    36,
    [
        Field("signature", 0, 4),
        Field("length", 4, 4),
        Field("revision", 8, 1),
        Field("checksum", 9, 1),
        Field("oem_id", 10, 6),
        Field("oem_table_id", 16, 8),
        Field("oem_revision", 24, 4),
        Field("creator_id", 28, 4),
        Field("creator_revision", 32, 4),
    ],
)
ACPI_HEADER_SIZE = ACPI_HEADER.size

RSDP_SIGNATURE = b"RSD PTR "
RSDP_REVISION_2 = 2  # ACPI 2.0 and later: XSDT address and extended checksum
RSDP_V1_SIZE = 20  # the ACPI 1.0 part the first checksum covers
RSDP = Layout(
    "RSDP",
    36,
    [
        Field("signature", 0, 8),
        Field("checksum", 8, 1),
        Field("oem_id", 9, 6),
        Field("revision", 15, 1),
        Field("rsdt_address", 16, 4),
        Field("length", 20, 4),
        Field("xsdt_address", 24, 8),
        Field("extended_checksum", 32, 1),
        Field("reserved", 33, 3),
    ],
)
XSDT_ENTRY_SIZE = 8

FACS = Layout(
    "FACS",
    64,
    [
        Field("signature", 0, 4),
        Field("length", 4, 4),
        Field("hardware_signature", 8, 4),
        Field("firmware_waking_vector", 12, 4),
        Field("global_lock", 16, 4),
        Field("flags", 20, 4),
        Field("x_firmware_waking_vector", 24, 8),
        Field("version", 32, 1),
        Field("ospm_flags", 36, 4),
    ],
)
FACS_VERSION = 2

GAS_SIZE = 12


class AddressSpace(IntEnum):
    """Generic Address Structure, Address Space ID (ACPI 6.x table 5.1)."""

    SYSTEM_MEMORY = 0
    SYSTEM_IO = 1


class AccessSize(IntEnum):
    UNDEFINED = 0
    BYTE = 1
    WORD = 2
    DWORD = 3
    QWORD = 4


def gas(space: AddressSpace, bit_width: int, address: int, access: AccessSize) -> bytes:
    """A Generic Address Structure: space, width, bit offset 0, access size, address."""
    return bytes([space, bit_width, 0, access]) + address.to_bytes(8, "little")


FADT_REVISION = 3
FADT = Layout(
    "FADT",
    244,
    [
        Field("firmware_ctrl", 36, 4),
        Field("dsdt", 40, 4),
        Field("preferred_pm_profile", 45, 1),
        Field("sci_int", 46, 2),
        Field("smi_cmd", 48, 4),
        Field("acpi_enable", 52, 1),
        Field("acpi_disable", 53, 1),
        Field("pm1a_evt_blk", 56, 4),
        Field("pm1b_evt_blk", 60, 4),
        Field("pm1a_cnt_blk", 64, 4),
        Field("pm1b_cnt_blk", 68, 4),
        Field("pm2_cnt_blk", 72, 4),
        Field("pm_tmr_blk", 76, 4),
        Field("gpe0_blk", 80, 4),
        Field("gpe1_blk", 84, 4),
        Field("pm1_evt_len", 88, 1),
        Field("pm1_cnt_len", 89, 1),
        Field("pm2_cnt_len", 90, 1),
        Field("pm_tmr_len", 91, 1),
        Field("gpe0_blk_len", 92, 1),
        Field("gpe1_blk_len", 93, 1),
        Field("p_lvl2_lat", 96, 2),
        Field("p_lvl3_lat", 98, 2),
        Field("century", 108, 1),
        Field("iapc_boot_arch", 109, 2),
        Field("flags", 112, 4),
        Field("reset_reg", 116, GAS_SIZE),
        Field("reset_value", 128, 1),
        Field("x_firmware_ctrl", 132, 8),
        Field("x_dsdt", 140, 8),
        Field("x_pm1a_evt_blk", 148, GAS_SIZE),
        Field("x_pm1b_evt_blk", 160, GAS_SIZE),
        Field("x_pm1a_cnt_blk", 172, GAS_SIZE),
        Field("x_pm1b_cnt_blk", 184, GAS_SIZE),
        Field("x_pm2_cnt_blk", 196, GAS_SIZE),
        Field("x_pm_tmr_blk", 208, GAS_SIZE),
        Field("x_gpe0_blk", 220, GAS_SIZE),
        Field("x_gpe1_blk", 232, GAS_SIZE),
    ],
)


class FadtFlag(IntEnum):
    """FADT Fixed Feature Flags (ACPI 6.x table 5.10): bit numbers."""

    WBINVD = 0
    PROC_C1 = 2
    SLP_BUTTON = 5
    RTC_S4 = 7
    RESET_REG_SUP = 10
    USE_PLATFORM_CLOCK = 15


# P_LVL2_LAT > 100 and P_LVL3_LAT > 1000 say "C2/C3 not supported" (table 5.9).
C2_NOT_SUPPORTED = 0x0FFF
C3_NOT_SUPPORTED = 0x0FFF

MADT_FIXED = Layout(
    "MADT fixed part",
    44,
    [Field("local_apic_address", 36, 4), Field("flags", 40, 4)],
)
MADT_PCAT_COMPAT = 1  # dual 8259s present: the OS must mask them when it uses the APICs


class MadtType(IntEnum):
    """Interrupt Controller Structure types (ACPI 6.x table 5.21)."""

    LOCAL_APIC = 0
    IO_APIC = 1
    INTERRUPT_SOURCE_OVERRIDE = 2
    LOCAL_APIC_NMI = 4


LOCAL_APIC_ENABLED = 1
MPS_INTI_CONFORMING = 0x0000  # bus-default polarity and trigger
MPS_INTI_ACTIVE_HIGH_LEVEL = 0x000D  # polarity 01 (high), trigger 11 (level)
ALL_PROCESSORS = 0xFF  # Local APIC NMI: ACPI processor UID for "all"


def madt_local_apic(uid: int, apic_id: int, flags: int = LOCAL_APIC_ENABLED) -> bytes:
    return bytes([MadtType.LOCAL_APIC, 8, uid, apic_id]) + flags.to_bytes(4, "little")


def madt_io_apic(ioapic_id: int, address: int, gsi_base: int) -> bytes:
    return (
        bytes([MadtType.IO_APIC, 12, ioapic_id, 0])
        + address.to_bytes(4, "little")
        + gsi_base.to_bytes(4, "little")
    )


def madt_source_override(source: int, gsi: int, flags: int, bus: int = 0) -> bytes:
    return (
        bytes([MadtType.INTERRUPT_SOURCE_OVERRIDE, 10, bus, source])
        + gsi.to_bytes(4, "little")
        + flags.to_bytes(2, "little")
    )


def madt_local_apic_nmi(uid: int, lint: int, flags: int = 0) -> bytes:
    return bytes([MadtType.LOCAL_APIC_NMI, 6, uid]) + flags.to_bytes(2, "little") + bytes([lint])


HPET_TABLE = Layout(
    "HPET table",
    56,
    [
        Field("event_timer_block_id", 36, 4),
        Field("base_address", 40, GAS_SIZE),
        Field("hpet_number", 52, 1),
        Field("minimum_tick", 53, 2),
        Field("page_protection", 55, 1),
    ],
)


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` (with that byte as 0) sum to 0 mod 256 (5.2.5.3, 5.2.6)."""
    return -sum(data) & 0xFF


# -- QEMU's linker/loader (etc/table-loader) ---------------------------------------
LOADER_FILE_NAME_SIZE = 56
LOADER_ENTRY_SIZE = 128


class LoaderCommand(IntEnum):
    ALLOCATE = 1
    ADD_POINTER = 2
    ADD_CHECKSUM = 3


class LoaderZone(IntEnum):
    """Where ALLOCATE puts a file: anywhere (HIGH) or in the 0xE0000-0xFFFFF F-segment."""

    HIGH = 1
    FSEG = 2


LOADER_ALLOCATE = Layout(
    "ALLOCATE",
    LOADER_ENTRY_SIZE,
    [
        Field("command", 0, 4),
        Field("file", 4, LOADER_FILE_NAME_SIZE),
        Field("align", 60, 4),
        Field("zone", 64, 1),
    ],
)
LOADER_ADD_POINTER = Layout(
    "ADD_POINTER",
    LOADER_ENTRY_SIZE,
    [
        Field("command", 0, 4),
        Field("dest_file", 4, LOADER_FILE_NAME_SIZE),
        Field("src_file", 60, LOADER_FILE_NAME_SIZE),
        Field("offset", 116, 4),
        Field("size", 120, 1),
    ],
)
LOADER_ADD_CHECKSUM = Layout(
    "ADD_CHECKSUM",
    LOADER_ENTRY_SIZE,
    [
        Field("command", 0, 4),
        Field("file", 4, LOADER_FILE_NAME_SIZE),
        Field("offset", 60, 4),
        Field("start", 64, 4),
        Field("length", 68, 4),
    ],
)

# fw_cfg files QEMU's ACPI build provides (hw/i386/acpi-build.c).
ACPI_TABLES_FILE = "etc/acpi/tables"
ACPI_RSDP_FILE = "etc/acpi/rsdp"
TABLE_LOADER_FILE = "etc/table-loader"

__all__ = [
    "ACPI_HEADER",
    "FADT",
    "FACS",
    "HPET_TABLE",
    "LoaderCommand",
    "LoaderZone",
    "MADT_FIXED",
    "RSDP",
    "checksum",
    "gas",
]
