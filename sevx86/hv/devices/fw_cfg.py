"""QEMU's fw_cfg device on I/O ports 0x510/0x511 with its DMA interface at 0x514.

Behaviour follows QEMU (``docs/specs/fw_cfg.rst``, ``hw/nvram/fw_cfg.c``);
the layouts and keys are ``sevx86.arch.fw_cfg``:

* a 16-bit write to 0x510 selects an item and resets the data offset; each
  byte read from 0x511 returns the next byte, 0 past the end; writes to the
  data port are ignored (as since QEMU 2.4);
* reading 0x514..0x51B returns "QEMU CFG"; writing the high half of a
  descriptor address to 0x514 and the low half to 0x518 (each big-endian)
  runs one ``FWCfgDmaAccess``: optional SELECT, then READ (item bytes into
  guest memory, zeros past the end), SKIP, or WRITE (only to writable items,
  never resizing them); the host writes ``control`` back as 0, or with the
  ERROR bit.

DMA goes through ``HostMemory``: DRAM as the host sees it. An SEV guest must
therefore put descriptor and buffer in pages it shares (C=0), as OVMF does
with its bounce buffers; a private page would hand the device ciphertext and
receive bytes the guest decrypts to garbage -- the real behaviour.

File items (keys from 0x20) are listed in the file directory sorted by name,
and their keys follow that order, as QEMU assigns them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sevx86.arch.fw_cfg import (
    FW_CFG_ARCH_LOCAL,
    FW_CFG_DMA_ACCESS,
    FW_CFG_DMA_SIGNATURE,
    FW_CFG_FILE,
    FW_CFG_FILES_COUNT,
    FW_CFG_INVALID,
    FW_CFG_IO_DATA,
    FW_CFG_IO_DMA,
    FW_CFG_IO_DMA_SIZE,
    FW_CFG_IO_SELECTOR,
    FW_CFG_MAX_FILE_PATH,
    FW_CFG_SIGNATURE_BYTES,
    FwCfgDmaControl,
    FwCfgId,
    FwCfgKey,
)

# The device's I/O window: selector, data, two unused ports, the DMA register.
FW_CFG_IO_BASE = FW_CFG_IO_SELECTOR
FW_CFG_IO_LENGTH = FW_CFG_IO_DMA + FW_CFG_IO_DMA_SIZE - FW_CFG_IO_SELECTOR
# QEMU's machines answer at most this many file slots by default.
FW_CFG_FILE_SLOTS = 0x20

LogFn = Callable[..., None]


class DmaMemory(Protocol):
    """What the device may touch: guest memory as the host sees it (``HostMemory``)."""

    def read(self, gpa: int, size: int) -> bytes: ...

    def write(self, gpa: int, data: bytes) -> None: ...

    def contains(self, gpa: int, size: int = 1) -> bool: ...


@dataclass
class FwCfgItem:
    data: bytearray
    writable: bool = False
    name: str | None = None  # for file items


class FwCfg:
    """The fw_cfg device; add items with ``add_bytes``/``add_file`` before the guest runs."""

    name = "fw_cfg"

    def __init__(
        self, memory: DmaMemory | None = None, *, dma: bool = True, log: LogFn | None = None
    ):
        self.memory = memory
        self.dma_enabled = dma and memory is not None
        self.log = log
        self.items: dict[int, FwCfgItem] = {}
        self.files: dict[str, FwCfgItem] = {}
        self.refreshers: dict[str, Callable[[], bytes]] = {}  # file -> rebuild on select
        self.selected = int(FwCfgKey.SIGNATURE)  # QEMU's reset selects the signature
        self.offset = 0
        self.dma_address = 0
        self.reads: dict[str, int] = {}  # item label -> times selected (for reports)
        self.dma_transfers = 0
        ident = FwCfgId.TRADITIONAL | (FwCfgId.DMA if self.dma_enabled else 0)
        self.add_bytes(FwCfgKey.SIGNATURE, FW_CFG_SIGNATURE_BYTES)
        self.add_i32(FwCfgKey.ID, int(ident))

    # -- building the item set ----------------------------------------------------
    def add_bytes(self, key: int, data: bytes, *, writable: bool = False) -> None:
        if key == FwCfgKey.FILE_DIR or key >= FwCfgKey.FILE_FIRST and not key & FW_CFG_ARCH_LOCAL:
            raise ValueError(f"key {key:#x} is reserved for the file directory")
        self.items[int(key)] = FwCfgItem(bytearray(data), writable)

    def add_i16(self, key: int, value: int) -> None:
        self.add_bytes(key, value.to_bytes(2, "little"))

    def add_i32(self, key: int, value: int) -> None:
        self.add_bytes(key, value.to_bytes(4, "little"))

    def add_i64(self, key: int, value: int) -> None:
        self.add_bytes(key, value.to_bytes(8, "little"))

    def add_file(self, name: str, data: bytes, *, writable: bool = False) -> None:
        if len(name.encode()) >= FW_CFG_MAX_FILE_PATH:
            raise ValueError(f"fw_cfg file name {name!r} is longer than 55 bytes")
        if name in self.files:
            raise ValueError(f"fw_cfg file {name!r} added twice")
        if len(self.files) >= FW_CFG_FILE_SLOTS:
            raise ValueError("no free fw_cfg file slot")
        self.files[name] = FwCfgItem(bytearray(data), writable, name)

    def on_select(self, name: str, refresh: Callable[[], bytes]) -> None:
        """Call ``refresh`` whenever file ``name`` is selected; its bytes become the file's.

        QEMU builds its ACPI tables this way (``acpi_build_update``): from the
        machine as the firmware has programmed it by then. The size must not change
        (the file directory already announced it).
        """
        if name not in self.files:
            raise KeyError(name)
        self.refreshers[name] = refresh

    def file_key(self, name: str) -> int:
        """The selector key of a file: its rank in name order after FILE_FIRST."""
        return int(FwCfgKey.FILE_FIRST) + sorted(self.files).index(name)

    def file_directory(self) -> bytes:
        names = sorted(self.files)
        out = bytearray(FW_CFG_FILES_COUNT.size + FW_CFG_FILE.size * len(names))
        FW_CFG_FILES_COUNT.write(out, len(names))
        for i, name in enumerate(names):
            entry = FW_CFG_FILE.new()
            FW_CFG_FILE.write(entry, "size", len(self.files[name].data))
            FW_CFG_FILE.write(entry, "select", int(FwCfgKey.FILE_FIRST) + i)
            FW_CFG_FILE["name"].write_bytes(entry, name.encode().ljust(FW_CFG_MAX_FILE_PATH, b"\0"))
            at = FW_CFG_FILES_COUNT.size + i * FW_CFG_FILE.size
            out[at : at + FW_CFG_FILE.size] = entry
        return bytes(out)

    def _item(self, key: int) -> FwCfgItem | None:
        if key == FW_CFG_INVALID:
            return None
        if key == FwCfgKey.FILE_DIR:
            return FwCfgItem(bytearray(self.file_directory()))
        if FwCfgKey.FILE_FIRST <= key < FwCfgKey.FILE_FIRST + len(self.files):
            return self.files[sorted(self.files)[key - FwCfgKey.FILE_FIRST]]
        return self.items.get(key)

    def label(self, key: int) -> str:
        item = self._item(key)
        if item is not None and item.name:
            return item.name
        try:
            return FwCfgKey(key).name
        except ValueError:
            return f"{key:#06x}"

    # -- the ports ------------------------------------------------------------------
    def select(self, key: int) -> None:
        # Bit 14 (write channel) is ignored since QEMU 2.4; keep the rest.
        self.selected = key & 0xFFFF & ~0x4000
        self.offset = 0
        label = self.label(self.selected)
        self.reads[label] = self.reads.get(label, 0) + 1
        refresh = self.refreshers.get(label)
        if refresh is not None:
            data = refresh()
            item = self.files[label]
            if len(data) != len(item.data):
                raise ValueError(f"fw_cfg file {label!r} changed size when refreshed")
            item.data[:] = data
        if self.log is not None:
            self.log("fw-cfg", f"fw_cfg select {label}", key=self.selected)

    def _read_byte(self) -> int:
        item = self._item(self.selected)
        if item is None or self.offset >= len(item.data):
            return 0
        value = item.data[self.offset]
        self.offset += 1
        return value

    def io_read(self, port: int, size: int) -> int:
        if port in (FW_CFG_IO_SELECTOR, FW_CFG_IO_DATA) and size == 1:
            return self._read_byte()
        if FW_CFG_IO_DMA <= port < FW_CFG_IO_DMA + FW_CFG_IO_DMA_SIZE:
            off = port - FW_CFG_IO_DMA
            if not self.dma_enabled:
                return (1 << (8 * size)) - 1
            signature = FW_CFG_DMA_SIGNATURE.to_bytes(FW_CFG_IO_DMA_SIZE, "big")
            return int.from_bytes(signature[off : off + size].ljust(size, b"\0"), "little")
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == FW_CFG_IO_SELECTOR and size == 2:
            self.select(value)
        elif FW_CFG_IO_DMA <= port < FW_CFG_IO_DMA + FW_CFG_IO_DMA_SIZE and self.dma_enabled:
            if size != 4:
                return  # QEMU accepts 4-byte halves (or one 8-byte write, not an x86 port access)
            # The register is big-endian: the bytes of the port value, in order.
            half = int.from_bytes(value.to_bytes(4, "little"), "big")
            if port == FW_CFG_IO_DMA:
                self.dma_address = half << 32
            elif port == FW_CFG_IO_DMA + 4:
                self.dma_address |= half
                address, self.dma_address = self.dma_address, 0
                self.dma_transfer(address)
        # Data-port writes are ignored (QEMU >= 2.4).

    # -- DMA ------------------------------------------------------------------------
    def dma_transfer(self, address: int) -> None:
        """Run the ``FWCfgDmaAccess`` at ``address`` (QEMU ``fw_cfg_dma_transfer``)."""
        assert self.memory is not None
        mem = self.memory
        self.dma_transfers += 1
        size = FW_CFG_DMA_ACCESS.size
        control_at = address + FW_CFG_DMA_ACCESS["control"].offset
        if not mem.contains(address, size):
            self._log_dma(address, "descriptor is not guest RAM")
            return  # nothing to write the error into
        desc = mem.read(address, size)
        control = FW_CFG_DMA_ACCESS.read(desc, "control")
        length = FW_CFG_DMA_ACCESS.read(desc, "length")
        buffer = FW_CFG_DMA_ACCESS.read(desc, "address")
        if control & FwCfgDmaControl.SELECT:
            self.select(control >> 16)
        if control & FwCfgDmaControl.READ:
            op = "read"
        elif control & FwCfgDmaControl.WRITE:
            op = "write"
        elif control & FwCfgDmaControl.SKIP:
            op = "skip"
        else:
            op, length = "none", 0
        error = False
        item = self._item(self.selected)
        done = 0
        while done < length and not error:
            left = length - done
            at = buffer + done
            if item is None or self.offset >= len(item.data):
                n = left
                if op == "read":
                    error = not self._dma_write(at, bytes(n))
                elif op == "write":
                    error = True
            else:
                n = min(left, len(item.data) - self.offset)
                if op == "read":
                    chunk = bytes(item.data[self.offset : self.offset + n])
                    error = not self._dma_write(at, chunk)
                elif op == "write":
                    if not item.writable or n != left or not mem.contains(at, n):
                        error = True
                    else:
                        item.data[self.offset : self.offset + n] = mem.read(at, n)
                self.offset += n
            done += n
        result = int(FwCfgDmaControl.ERROR) if error else 0
        mem.write(control_at, result.to_bytes(4, "big"))
        self._log_dma(
            address,
            f"{op} {length} bytes of {self.label(self.selected)} at {buffer:#x}"
            + (" -> error" if error else ""),
        )

    def _dma_write(self, gpa: int, data: bytes) -> bool:
        assert self.memory is not None
        if not self.memory.contains(gpa, len(data)):
            return False
        self.memory.write(gpa, data)
        return True

    def _log_dma(self, address: int, what: str) -> None:
        if self.log is not None:
            self.log("fw-cfg", f"fw_cfg DMA at {address:#x}: {what}", descriptor=address)


__all__ = ["FW_CFG_IO_BASE", "FW_CFG_IO_LENGTH", "FwCfg", "FwCfgItem"]
