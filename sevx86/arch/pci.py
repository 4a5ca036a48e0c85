"""PCI configuration space and configuration mechanism #1, as data.

Sources: PCI Local Bus Specification 3.0, 6.1 "Configuration Space
Organization" (type 0 header offsets) and 3.2.2.3.2 "Configuration
Mechanism #1" (CONFIG_ADDRESS at I/O port 0xCF8, CONFIG_DATA at 0xCFC..0xCFF:
bit 31 enable, bits 23:16 bus, 15:11 device, 10:8 function, 7:2 register).
"""

from __future__ import annotations

from enum import IntEnum

PCI_CONFIG_ADDRESS = 0xCF8
PCI_CONFIG_DATA = 0xCFC
PCI_CONFIG_SPACE_SIZE = 256
PCI_CONFIG_HEADER_SIZE = 0x40  # device-specific registers start here
CONFIG_ADDRESS_ENABLE = 1 << 31


class PciCfg(IntEnum):
    """Type 0 header offsets."""

    VENDOR_ID = 0x00
    DEVICE_ID = 0x02
    COMMAND = 0x04
    STATUS = 0x06
    REVISION_ID = 0x08
    CLASS_PROG = 0x09
    CLASS_DEVICE = 0x0A  # sub-class, then base class at 0x0B
    CACHE_LINE_SIZE = 0x0C
    LATENCY_TIMER = 0x0D
    HEADER_TYPE = 0x0E
    BIST = 0x0F
    BAR0 = 0x10
    SUBSYSTEM_VENDOR_ID = 0x2C
    SUBSYSTEM_ID = 0x2E
    INTERRUPT_LINE = 0x3C
    INTERRUPT_PIN = 0x3D


HEADER_TYPE_MULTI_FUNCTION = 0x80
# COMMAND bits a simple device implements: I/O, memory, bus master, SERR#, INTx disable.
COMMAND_WRITABLE = 0x0001 | 0x0002 | 0x0004 | 0x0100 | 0x0400


def decode_config_address(value: int) -> tuple[bool, int, int, int, int]:
    """(enabled, bus, device, function, register) of a CONFIG_ADDRESS value."""
    return (
        bool(value & CONFIG_ADDRESS_ENABLE),
        (value >> 16) & 0xFF,
        (value >> 11) & 0x1F,
        (value >> 8) & 0x7,
        value & 0xFC,
    )


def config_address(bus: int, device: int, function: int, register: int) -> int:
    return CONFIG_ADDRESS_ENABLE | bus << 16 | device << 11 | function << 8 | (register & 0xFC)


__all__ = [
    "COMMAND_WRITABLE",
    "CONFIG_ADDRESS_ENABLE",
    "HEADER_TYPE_MULTI_FUNCTION",
    "PCI_CONFIG_ADDRESS",
    "PCI_CONFIG_DATA",
    "PCI_CONFIG_HEADER_SIZE",
    "PCI_CONFIG_SPACE_SIZE",
    "PciCfg",
    "config_address",
    "decode_config_address",
]
