"""A CFI parallel flash with the Intel command set, as QEMU's ``pflash_cfi01`` on the pc machine.

The varstore of a guest booted from pflash (``-drive if=pflash,unit=1``,
OVMF_VARS.fd) is this device. QEMU's pc machine creates it with 4 KiB
sectors and a one-byte bank, no device width and identifier codes 0
(hw/i386/pc_sysfw.c ``pc_pflash_create``), and maps it right below the code
flash (``pc_system_flash_map``). Its bytes live in guest RAM that the host
owns (``sevx86.boot.launch`` maps ``pflash1`` unencrypted and unmeasured);
the device only decides how the guest reaches them, as QEMU's ROM-device
regions do on KVM:

* **read-array mode** (QEMU's "romd"): reads are plain memory; the range is
  read-only to the guest (a read-only memslot, ``HostMemory.set_readonly``),
  so a plain store is an NPF the host decodes and hands here;
* **command mode**: from the first command written until read-array again
  the range traps (``HostMemory.set_trapping``): every read reaches the
  device and returns what the current command says (status register,
  identifier codes, CFI query).

An SEV-ES guest cannot have its stores emulated (the write to a read-only
page is not the reserved-bit NPF that raises #VC), so OVMF writes the flash
with explicit GHCB MMIO_WRITE requests, one byte each (``QemuFlashPtrWrite``
in OvmfPkg/QemuFlashFvbServicesRuntimeDxe/QemuFlashDxe.c), and reads it with
ordinary loads; a load in command mode traps, and its #VC handler turns it
into an MMIO_READ.

Behaviour follows QEMU's hw/block/pflash_cfi01.c for these parameters
(``sevx86.arch.cfi`` has the codes):

========================  =====================================================
first write               effect
========================  =====================================================
0xFF, 0x00, 0xF0          read-array mode
0x10 / 0x40 + data        program: the data is stored as written (a real NOR
                          cell only clears bits; QEMU and this model store the
                          value), status READY, or PROGRAM_ERROR if write-protected
0x20 + 0xD0               block erase: QEMU erases the sector (to 0xFF) at the
                          setup write already; 0xD0 completes, 0xFF aborts to
                          read array, anything else is a sequence error
0x50                      clear status (to 0: not even READY), read-array mode
0x70 / 0x90               read status / read identifier codes (offset 0:
                          id0 << 8 | id1, offset 1: id2 << 8 | id3, else 0)
0x98                      CFI query until 0xFF (other writes are ignored)
0x60 + 0xD0 / 0x01        block unlock / lock: only status READY (not modelled)
anything else             unimplemented: read-array mode (as QEMU; this
                          includes 0xE8 write-to-buffer, which QEMU models)
========================  =====================================================

After a program or an erase the device stays in command mode: reads return
the status register until the guest writes 0xFF (OVMF does after a program,
not after an erase). A status read wider than two bytes repeats the status
in bits 23:16 (QEMU's rule without a device width). QEMU's memory core
splits an 8-byte access into two 4-byte ones, and so does this device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Protocol

from sevx86.arch.cfi import (
    CFI_INTERFACE_X8_X16,
    CFI_PRI,
    CFI_QRY,
    CfiCommandSet,
    CfiQuery,
    FlashCmd,
    FlashStatus,
)

# QEMU's pc machine: FLASH_SECTOR_SIZE in hw/i386/pc_sysfw.c.
PC_SECTOR_SIZE = 0x1000
# QEMU keeps "read array" as command 0x00 internally (not a CFI code).
_MODE_READ_ARRAY = 0x00
# Where the primary extended query ("PRI") starts in QEMU's table, and its size.
_PRI_OFFSET = 0x31
_CFI_TABLE_SIZE = 0x52
# With a one-byte bank a query or identifier address is the offset's low byte.
_QUERY_ADDRESS_MASK = 0xFF
_MAX_ACCESS = 4  # QEMU's default implementation limit for device accesses

LogFn = Callable[..., None]


class FlashMemory(Protocol):
    """What the device uses of guest memory: ``HostMemory`` (the host's view)."""

    def read(self, gpa: int, size: int) -> bytes: ...

    def write(self, gpa: int, data: bytes) -> None: ...

    def set_trapping(self, gpa: int, size: int, on: bool = True) -> bool: ...

    def set_readonly(self, gpa: int, size: int, on: bool = True) -> bool: ...


def cfi_table(size: int, sector_size: int) -> bytes:
    """The CFI query structure of a one-chip, byte-wide part of ``size`` bytes (QEMU's values)."""
    t = bytearray(_CFI_TABLE_SIZE)

    def put(offset: int, value: int, length: int = 1) -> None:
        t[offset : offset + length] = value.to_bytes(length, "little")

    t[CfiQuery.QRY : CfiQuery.QRY + 3] = CFI_QRY
    put(CfiQuery.PRIMARY_COMMAND_SET, CfiCommandSet.INTEL_EXTENDED, 2)
    put(CfiQuery.PRIMARY_TABLE, _PRI_OFFSET, 2)
    put(CfiQuery.ALTERNATE_COMMAND_SET, CfiCommandSet.NONE, 2)
    put(CfiQuery.ALTERNATE_TABLE, 0, 2)
    put(CfiQuery.VCC_MIN, 0x45)  # 4.5 V
    put(CfiQuery.VCC_MAX, 0x55)  # 5.5 V
    put(CfiQuery.VPP_MIN, 0)  # no Vpp pin
    put(CfiQuery.VPP_MAX, 0)
    # Timeouts as QEMU fills them (its comments and values do not all line up
    # with AP-646's field names; the values are what a guest reads).
    t[CfiQuery.TYP_PROGRAM_TIMEOUT : CfiQuery.DEVICE_SIZE] = bytes((7, 7, 0x0A, 0, 4, 4, 4, 0))
    # 2^n bytes: QEMU stores the count of trailing zero bits of the size.
    put(CfiQuery.DEVICE_SIZE, (size & -size).bit_length() - 1)
    put(CfiQuery.INTERFACE, CFI_INTERFACE_X8_X16, 2)
    put(CfiQuery.MAX_WRITE_BUFFER, 8, 2)  # 256 bytes for a one-byte bank
    put(CfiQuery.ERASE_REGIONS, 1)
    put(CfiQuery.ERASE_REGION_1, size // sector_size - 1, 2)
    put(CfiQuery.ERASE_REGION_1 + 2, sector_size >> 8, 2)
    t[_PRI_OFFSET : _PRI_OFFSET + 3] = CFI_PRI
    t[_PRI_OFFSET + 3 : _PRI_OFFSET + 5] = b"10"  # version 1.0, ASCII
    put(0x3F, 1)  # number of protection fields
    return bytes(t)


class PFlashCfi01:
    """One flash device over ``[base, base + size)`` of guest RAM the host owns."""

    def __init__(
        self,
        memory: FlashMemory,
        base: int,
        size: int,
        *,
        name: str = "pflash1",
        sector_size: int = PC_SECTOR_SIZE,
        write_protected: bool = False,
        ids: tuple[int, int, int, int] = (0, 0, 0, 0),
        log: LogFn | None = None,
    ):
        if size <= 0 or size % sector_size or base % sector_size:
            raise ValueError(f"{name}: {base:#x}+{size:#x} is not whole {sector_size:#x} sectors")
        self.memory = memory
        self.base = base
        self.size = size
        self.name = name
        self.sector_size = sector_size
        self.write_protected = write_protected
        self.ids = ids
        self.log = log
        self.cfi = cfi_table(size, sector_size)
        self.cmd = _MODE_READ_ARRAY
        self.wcycle = 0
        self.status = int(FlashStatus.READY)
        self.romd = True
        self.programmed = 0  # bytes programmed
        self.erased = 0  # sectors erased
        self.commands: Counter[int] = Counter()  # first-cycle command bytes
        memory.set_trapping(base, size, False)
        memory.set_readonly(base, size, True)

    def reset(self) -> None:
        """System reset (QEMU ``pflash_cfi01_system_reset``): read array, status READY."""
        self.cmd = _MODE_READ_ARRAY
        self.wcycle = 0
        self.status = int(FlashStatus.READY)
        self._set_romd(True)

    # -- the guest's accesses -------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        value = 0
        for at, width in _pieces(offset, size):
            value |= self._read(at, width) << (8 * (at - offset))
        return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        for at, width in _pieces(offset, size):
            piece = (value >> (8 * (at - offset))) & ((1 << (8 * width)) - 1)
            self._write(at, width, piece)

    def _read(self, offset: int, width: int) -> int:
        cmd = self.cmd
        if cmd == _MODE_READ_ARRAY:
            return int.from_bytes(self.memory.read(self.base + offset, width), "little")
        if cmd == FlashCmd.READ_ID:
            index = offset & _QUERY_ADDRESS_MASK
            id0, id1, id2, id3 = self.ids
            if index == 0:
                return id0 << 8 | id1
            if index == 1:
                return id2 << 8 | id3
            return 0
        if cmd == FlashCmd.CFI_QUERY:
            index = offset & _QUERY_ADDRESS_MASK
            return self.cfi[index] if index < len(self.cfi) else 0
        # Every other command state reads the status register.
        status = self.status
        return status | status << 16 if width > 2 else status

    def _write(self, offset: int, width: int, value: int) -> None:
        cmd = value & 0xFF
        if self.wcycle == 0:
            self.commands[cmd] += 1
            self._first_cycle(offset, cmd)
            # QEMU turns romd off at every first-cycle write and back on for
            # the commands that end in read-array mode; only the end state is
            # visible to the guest (it is stopped meanwhile), so the range is
            # remapped (and the TLBs flushed) only when that state changes.
            if self.cmd != _MODE_READ_ARRAY:
                self._set_romd(False)
        else:
            self._second_cycle(offset, width, value, cmd)

    def _first_cycle(self, offset: int, cmd: int) -> None:
        if cmd in (_MODE_READ_ARRAY, FlashCmd.READ_ARRAY, FlashCmd.AMD_RESET):
            self._read_array()
        elif cmd in (
            FlashCmd.PROGRAM,
            FlashCmd.PROGRAM_ALT,
            FlashCmd.LOCK_SETUP,
            FlashCmd.CFI_QUERY,
        ):
            self.cmd, self.wcycle = cmd, 1
        elif cmd == FlashCmd.BLOCK_ERASE:
            self._erase(offset)
            self.cmd, self.wcycle = cmd, 1
        elif cmd == FlashCmd.CLEAR_STATUS:
            self.status = 0
            self._read_array()
        elif cmd in (FlashCmd.READ_STATUS, FlashCmd.READ_ID):
            self.cmd = cmd  # one-cycle commands: the next write is a new command
        else:
            self._sequence_error(offset, cmd)

    def _second_cycle(self, offset: int, width: int, value: int, cmd: int) -> None:
        pending = self.cmd
        if pending in (FlashCmd.PROGRAM, FlashCmd.PROGRAM_ALT):
            self._program(offset, width, value)
            self.wcycle = 0  # the command stays: reads give the status
        elif pending == FlashCmd.BLOCK_ERASE:
            if cmd == FlashCmd.CONFIRM:
                self.wcycle = 0
                self.status |= FlashStatus.READY
            elif cmd == FlashCmd.READ_ARRAY:
                self._read_array()
            else:
                self._sequence_error(offset, cmd)
        elif pending == FlashCmd.LOCK_SETUP:
            if cmd in (FlashCmd.CONFIRM, FlashCmd.LOCK):
                self.wcycle = 0
                self.status |= FlashStatus.READY
            else:
                self._read_array()
        elif pending == FlashCmd.CFI_QUERY:
            if cmd == FlashCmd.READ_ARRAY:
                self._read_array()
            # Anything else leaves the device in query mode (QEMU).
        else:
            self._sequence_error(offset, cmd)

    # -- what the commands do to the array ------------------------------------------------
    def _program(self, offset: int, width: int, value: int) -> None:
        if self.write_protected:
            self.status |= FlashStatus.PROGRAM_ERROR
        else:
            self.memory.write(self.base + offset, value.to_bytes(width, "little"))
            self.programmed += width
        self.status |= FlashStatus.READY

    def _erase(self, offset: int) -> None:
        start = offset & ~(self.sector_size - 1)
        if self.write_protected:
            self.status |= FlashStatus.ERASE_ERROR
        else:
            self.memory.write(self.base + start, b"\xff" * self.sector_size)
            self.erased += 1
        self.status |= FlashStatus.READY
        if self.log is not None:
            self.log(
                "pflash",
                f"{self.name}: block erase at {self.base + start:#x}",
                gpa=self.base + start,
                size=self.sector_size,
            )

    # -- modes ------------------------------------------------------------------------------
    def _read_array(self) -> None:
        self.cmd, self.wcycle = _MODE_READ_ARRAY, 0
        self._set_romd(True)

    def _sequence_error(self, offset: int, cmd: int) -> None:
        if self.log is not None:
            self.log(
                "pflash",
                f"{self.name}: unimplemented command sequence {self.cmd:#04x}/{cmd:#04x} "
                f"at offset {offset:#x}: read-array mode",
                offset=offset,
            )
        self._read_array()

    def _set_romd(self, on: bool) -> None:
        """Read-array mode maps the range as memory; command mode makes it trap."""
        if on == self.romd:
            return
        self.romd = on
        self.memory.set_trapping(self.base, self.size, not on)
        if self.log is not None:
            mode = "read-array mode (memory)" if on else "command mode (accesses trap)"
            self.log("pflash", f"{self.name}: {mode}", romd=on)


def _pieces(offset: int, size: int) -> list[tuple[int, int]]:
    """An access as the device sees it: at most 4 bytes each, in address order."""
    if size in (1, 2, 4):
        return [(offset, size)]
    out = []
    end = offset + size
    while offset < end:
        width = min(_MAX_ACCESS, end - offset)
        while width & (width - 1):  # 3 -> 2: accesses are powers of two
            width -= 1
        out.append((offset, width))
        offset += width
    return out


__all__ = ["PC_SECTOR_SIZE", "FlashMemory", "PFlashCfi01", "cfi_table"]
