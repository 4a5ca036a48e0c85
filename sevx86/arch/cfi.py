"""Parallel NOR flash with the Intel/Sharp command set, as a CFI query describes it.

The device a PC's firmware lives in (QEMU's ``pflash_cfi01``, which OVMF's
``QemuFlashFvbServicesRuntimeDxe`` drives) is programmed with one-byte
commands written anywhere in it, and answers reads according to the last
command: the array itself, the status register, identifier codes or the CFI
query structure.

Sources: Intel application note AP-646 "Common Flash Interface (CFI) and
Command Sets" (order 292204), which the Intel flash datasheets refer to;
the query structure and status register tables of the Intel StrataFlash J3
and Smart 3 Advanced Boot Block datasheets; the command codes OVMF's
``QemuFlash.c`` uses.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag


class FlashCmd(IntEnum):
    """Commands of the Intel/Sharp extended command set (CFI command set ID 0x0001)."""

    READ_ARRAY = 0xFF  # reads return the array
    READ_ID = 0x90  # reads return manufacturer / device codes ("read identifier codes")
    CFI_QUERY = 0x98  # reads return the CFI query structure
    READ_STATUS = 0x70  # reads return the status register
    CLEAR_STATUS = 0x50  # clear the error bits of the status register
    PROGRAM = 0x40  # byte/word program: the next write is the data
    PROGRAM_ALT = 0x10  # the same, alternate code (OVMF's WRITE_BYTE_CMD)
    BLOCK_ERASE = 0x20  # block erase setup: the next write confirms it
    CONFIRM = 0xD0  # erase confirm (also program/erase resume, block unlock)
    LOCK_SETUP = 0x60  # block lock setup: then CONFIRM (unlock) or LOCK
    LOCK = 0x01  # second cycle of a block lock
    WRITE_TO_BUFFER = 0xE8  # buffered program setup
    AMD_RESET = 0xF0  # the AMD command set's reset; Intel parts treat it as read array


class FlashStatus(IntFlag):
    """Status register bits (SR.7..SR.1); reset value ``READY``."""

    READY = 0x80  # SR.7 write state machine status: 1 = ready, 0 = busy
    ERASE_SUSPENDED = 0x40  # SR.6
    ERASE_ERROR = 0x20  # SR.5 erase (or clear lock-bits) failed
    PROGRAM_ERROR = 0x10  # SR.4 program (or set lock-bit) failed
    VPP_LOW = 0x08  # SR.3 programming voltage too low: operation aborted
    PROGRAM_SUSPENDED = 0x04  # SR.2
    BLOCK_LOCKED = 0x02  # SR.1 program/erase attempted on a locked block


class CfiCommandSet(IntEnum):
    """Primary/alternate vendor command set IDs (query offsets 0x13 and 0x17)."""

    NONE = 0x0000
    INTEL_EXTENDED = 0x0001  # Intel/Sharp extended
    AMD_STANDARD = 0x0002  # AMD/Fujitsu standard
    INTEL_STANDARD = 0x0003


class CfiQuery(IntEnum):
    """Byte offsets of the CFI query structure (multi-byte fields little-endian)."""

    MANUFACTURER = 0x00  # in read-identifier mode, not in the query
    DEVICE = 0x01
    QRY = 0x10  # the ASCII string "QRY"
    PRIMARY_COMMAND_SET = 0x13  # 2 bytes, a CfiCommandSet
    PRIMARY_TABLE = 0x15  # 2 bytes: offset "P" of the primary extended query ("PRI")
    ALTERNATE_COMMAND_SET = 0x17  # 2 bytes
    ALTERNATE_TABLE = 0x19  # 2 bytes
    VCC_MIN = 0x1B  # BCD volts: bits 7:4 volts, 3:0 tenths
    VCC_MAX = 0x1C
    VPP_MIN = 0x1D  # 0: no Vpp pin
    VPP_MAX = 0x1E
    TYP_PROGRAM_TIMEOUT = 0x1F  # 2^n us, one byte/word
    TYP_BUFFER_TIMEOUT = 0x20  # 2^n us, a full buffer (0: not supported)
    TYP_ERASE_TIMEOUT = 0x21  # 2^n ms, one block
    TYP_CHIP_ERASE_TIMEOUT = 0x22  # 2^n ms (0: not supported)
    MAX_PROGRAM_TIMEOUT = 0x23  # 2^n times the typical
    MAX_BUFFER_TIMEOUT = 0x24
    MAX_ERASE_TIMEOUT = 0x25
    MAX_CHIP_ERASE_TIMEOUT = 0x26
    DEVICE_SIZE = 0x27  # 2^n bytes
    INTERFACE = 0x28  # 2 bytes, a device interface code
    MAX_WRITE_BUFFER = 0x2A  # 2 bytes: 2^n bytes
    ERASE_REGIONS = 0x2C  # number of erase block regions
    ERASE_REGION_1 = 0x2D  # 4 bytes: blocks - 1 (16 bits), block size / 256 (16 bits)


CFI_QRY = b"QRY"
CFI_PRI = b"PRI"  # the primary extended query table starts with it
CFI_INTERFACE_X8_X16 = 0x0002  # device interface code: x8/x16 asynchronous


__all__ = [
    "CFI_INTERFACE_X8_X16",
    "CFI_PRI",
    "CFI_QRY",
    "CfiCommandSet",
    "CfiQuery",
    "FlashCmd",
    "FlashStatus",
]
