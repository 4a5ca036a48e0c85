"""QEMU's firmware configuration device (fw_cfg): ports, keys, DMA and file directory.

Source: QEMU ``docs/specs/fw_cfg.rst`` and
``include/standard-headers/linux/qemu_fw_cfg.h``. On x86 the selector is a
16-bit little-endian I/O port at 0x510, the data register an 8-bit port at
0x511, and the 64-bit DMA address register (big-endian) sits at 0x514: a
write of its low half (0x518) starts a transfer. The DMA descriptor and the
file directory are big-endian; the numeric items are little-endian.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from sevx86.arch.layout import Field, Layout

FW_CFG_IO_SELECTOR = 0x510
FW_CFG_IO_DATA = 0x511
FW_CFG_IO_DMA = 0x514  # 8 bytes: high half at 0x514, low half at 0x518
FW_CFG_IO_DMA_SIZE = 8

FW_CFG_SIGNATURE_BYTES = b"QEMU"
# Reading the DMA address register returns "QEMU CFG" (big-endian).
FW_CFG_DMA_SIGNATURE = 0x5145_4D55_2043_4647


class FwCfgKey(IntEnum):
    """Selector keys of the well-known items."""

    SIGNATURE = 0x00
    ID = 0x01
    UUID = 0x02
    RAM_SIZE = 0x03
    NOGRAPHIC = 0x04
    NB_CPUS = 0x05
    MACHINE_ID = 0x06
    KERNEL_ADDR = 0x07
    KERNEL_SIZE = 0x08
    KERNEL_CMDLINE = 0x09
    INITRD_ADDR = 0x0A
    INITRD_SIZE = 0x0B
    BOOT_DEVICE = 0x0C
    NUMA = 0x0D
    BOOT_MENU = 0x0E
    MAX_CPUS = 0x0F
    KERNEL_ENTRY = 0x10
    KERNEL_DATA = 0x11
    INITRD_DATA = 0x12
    CMDLINE_ADDR = 0x13
    CMDLINE_SIZE = 0x14
    CMDLINE_DATA = 0x15
    SETUP_ADDR = 0x16
    SETUP_SIZE = 0x17
    SETUP_DATA = 0x18
    FILE_DIR = 0x19
    FILE_FIRST = 0x20
    # x86 architecture-local items (QEMU hw/i386/fw_cfg.h).
    ACPI_TABLES = 0x8000
    SMBIOS_ENTRIES = 0x8001
    IRQ0_OVERRIDE = 0x8002
    E820_TABLE = 0x8003
    HPET = 0x8004


FW_CFG_WRITE_CHANNEL = 0x4000  # selector bit 14: write mode (ignored since QEMU 2.4)
FW_CFG_ARCH_LOCAL = 0x8000  # selector bit 15: architecture-specific item
FW_CFG_ENTRY_MASK = ~(FW_CFG_WRITE_CHANNEL | FW_CFG_ARCH_LOCAL) & 0xFFFF
FW_CFG_INVALID = 0xFFFF


class FwCfgId(IntFlag):
    """Bits of the FW_CFG_ID item."""

    TRADITIONAL = 0x01  # the selector/data ports
    DMA = 0x02  # the DMA interface


class FwCfgDmaControl(IntFlag):
    """``control`` of ``FWCfgDmaAccess``; SELECT puts the key in bits 31:16."""

    ERROR = 0x01
    READ = 0x02
    SKIP = 0x04
    SELECT = 0x08
    WRITE = 0x10


FW_CFG_DMA_ACCESS = Layout(
    "FWCfgDmaAccess",
    16,
    [
        Field("control", 0, 4, big_endian=True),
        Field("length", 4, 4, big_endian=True),
        Field("address", 8, 8, big_endian=True),
    ],
)

FW_CFG_MAX_FILE_PATH = 56
FW_CFG_FILES_COUNT = Field("count", 0, 4, big_endian=True)  # then the entries
FW_CFG_FILE = Layout(
    "FWCfgFile",
    64,
    [
        Field("size", 0, 4, big_endian=True),
        Field("select", 4, 2, big_endian=True),
        Field("reserved", 6, 2, big_endian=True),
        Field("name", 8, FW_CFG_MAX_FILE_PATH),
    ],
)

__all__ = [
    "FW_CFG_ARCH_LOCAL",
    "FW_CFG_DMA_ACCESS",
    "FW_CFG_DMA_SIGNATURE",
    "FW_CFG_ENTRY_MASK",
    "FW_CFG_FILE",
    "FW_CFG_FILES_COUNT",
    "FW_CFG_INVALID",
    "FW_CFG_IO_DATA",
    "FW_CFG_IO_DMA",
    "FW_CFG_IO_DMA_SIZE",
    "FW_CFG_IO_SELECTOR",
    "FW_CFG_MAX_FILE_PATH",
    "FW_CFG_SIGNATURE_BYTES",
    "FW_CFG_WRITE_CHANNEL",
    "FwCfgDmaControl",
    "FwCfgId",
    "FwCfgKey",
]
