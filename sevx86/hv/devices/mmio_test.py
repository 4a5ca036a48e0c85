"""A small MMIO test device at GPA 0xFEB0_0000 (one 4 KiB page, outside RAM).

Registers (little-endian; any access of 1, 2, 4 or 8 bytes at any offset):

====== ===== ==== ======================================================
offset size  kind meaning
====== ===== ==== ======================================================
0x00   4     RO   ID: 0x5856_4553 (the bytes "SEVX")
0x04   4     RO   version: 1
0x08   8     RW   scratch: reads back what was written, byte-exact
0x10   4     RO   number of writes the device received
0x14   4     RO   last write: size << 16 | offset
0x18   8     RO   last value written
====== ===== ==== ======================================================

Reads past 0x20 return 0; writes outside the scratch register are counted
and otherwise ignored. A guest reaches it by MMIO only: a nested page fault
(modes none/sev) or the GHCB MMIO requests (SEV-ES).
"""

from __future__ import annotations

MMIO_TEST_BASE = 0xFEB0_0000
MMIO_TEST_SIZE = 0x1000
MMIO_TEST_ID = 0x5856_4553
REG_ID = 0x00
REG_VERSION = 0x04
REG_SCRATCH = 0x08
REG_WRITES = 0x10
REG_LAST_WRITE = 0x14
REG_LAST_VALUE = 0x18
_REGS_SIZE = 0x20


class MmioTestDevice:
    def __init__(self, name: str = "mmio-test"):
        self.name = name
        self.regs = bytearray(_REGS_SIZE)
        self.regs[REG_ID : REG_ID + 4] = MMIO_TEST_ID.to_bytes(4, "little")
        self.regs[REG_VERSION : REG_VERSION + 4] = (1).to_bytes(4, "little")
        self.writes = 0

    @property
    def scratch(self) -> int:
        return int.from_bytes(self.regs[REG_SCRATCH : REG_SCRATCH + 8], "little")

    def mmio_read(self, offset: int, size: int) -> int:
        data = bytes(self.regs[offset : offset + size]).ljust(size, b"\0")
        return int.from_bytes(data, "little")

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        data = value.to_bytes(size, "little")
        for i, byte in enumerate(data):
            if REG_SCRATCH <= offset + i < REG_SCRATCH + 8:
                self.regs[offset + i] = byte
        self.writes += 1
        self.regs[REG_WRITES : REG_WRITES + 4] = (self.writes & 0xFFFF_FFFF).to_bytes(4, "little")
        last = ((size << 16) | (offset & 0xFFFF)) & 0xFFFF_FFFF
        self.regs[REG_LAST_WRITE : REG_LAST_WRITE + 4] = last.to_bytes(4, "little")
        self.regs[REG_LAST_VALUE : REG_LAST_VALUE + 8] = value.to_bytes(8, "little")


__all__ = ["MmioTestDevice", "MMIO_TEST_BASE", "MMIO_TEST_ID", "MMIO_TEST_SIZE"]
