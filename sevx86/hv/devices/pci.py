"""PCI configuration space through mechanism #1 (ports 0xCF8/0xCFC), and simple functions.

``PciHost`` decodes CONFIG_ADDRESS/CONFIG_DATA (``sevx86.arch.pci``) for bus
0 and routes each access to the ``PciFunction`` at that device and function;
an absent function reads as all ones and ignores writes (the "master abort"
a PCI host bridge answers). As QEMU's ``pci_init_wmask`` does, the
device-specific registers (0x40 and up) are writable by default; in the
header only COMMAND, the cache line size, the latency timer and the
interrupt line are. A function can react to writes (``on_write``) -- the
PIIX4 power-management function maps its ACPI register block that way.

Port 0xCF9 (the PIIX3 reset control register) sits inside the same window:
a write with the reset bit set is reported to ``on_reset``.
"""

from __future__ import annotations

from collections.abc import Callable

from sevx86.arch.pci import (
    COMMAND_WRITABLE,
    PCI_CONFIG_ADDRESS,
    PCI_CONFIG_DATA,
    PCI_CONFIG_HEADER_SIZE,
    PCI_CONFIG_SPACE_SIZE,
    PciCfg,
    decode_config_address,
)

PCI_IO_BASE = PCI_CONFIG_ADDRESS
PCI_IO_LENGTH = 8  # 0xCF8..0xCFF
RESET_CONTROL_PORT = 0xCF9  # PIIX3 RCR
RCR_SYS_RST = 0x02
RCR_RST_CPU = 0x04

WriteHook = Callable[["PciFunction", int, int], None]


class PciFunction:
    """One function's 256-byte configuration space with a write mask."""

    def __init__(
        self,
        name: str,
        vendor: int,
        device: int,
        class_code: int,
        *,
        revision: int = 0,
        header_type: int = 0,
        subsystem: tuple[int, int] = (0, 0),
        interrupt_pin: int = 0,
    ):
        self.name = name
        self.config = bytearray(PCI_CONFIG_SPACE_SIZE)
        self.wmask = bytearray(PCI_CONFIG_SPACE_SIZE)
        self.on_write: list[WriteHook] = []
        self.set(PciCfg.VENDOR_ID, 2, vendor)
        self.set(PciCfg.DEVICE_ID, 2, device)
        self.set(PciCfg.REVISION_ID, 1, revision)
        self.set(PciCfg.CLASS_PROG, 3, class_code)
        self.set(PciCfg.HEADER_TYPE, 1, header_type)
        self.set(PciCfg.SUBSYSTEM_VENDOR_ID, 2, subsystem[0])
        self.set(PciCfg.SUBSYSTEM_ID, 2, subsystem[1])
        self.set(PciCfg.INTERRUPT_PIN, 1, interrupt_pin)
        self._mask(PciCfg.COMMAND, 2, COMMAND_WRITABLE)
        self._mask(PciCfg.CACHE_LINE_SIZE, 1, 0xFF)
        self._mask(PciCfg.LATENCY_TIMER, 1, 0xFF)
        self._mask(PciCfg.INTERRUPT_LINE, 1, 0xFF)
        size = PCI_CONFIG_SPACE_SIZE - PCI_CONFIG_HEADER_SIZE
        self.wmask[PCI_CONFIG_HEADER_SIZE:] = b"\xff" * size

    def set(self, offset: int, size: int, value: int) -> None:
        """Set a register regardless of the write mask (reset values)."""
        self.config[offset : offset + size] = value.to_bytes(size, "little")

    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset : offset + size], "little")

    def _mask(self, offset: int, size: int, mask: int) -> None:
        self.wmask[offset : offset + size] = mask.to_bytes(size, "little")

    def read(self, offset: int, size: int) -> int:
        return self.get(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        data = value.to_bytes(size, "little")
        for i, byte in enumerate(data):
            m = self.wmask[offset + i]
            self.config[offset + i] = (self.config[offset + i] & ~m) | (byte & m)
        for hook in self.on_write:
            hook(self, offset, size)


class PciHost:
    """Configuration mechanism #1 for bus 0."""

    name = "pci-config"

    def __init__(self, on_reset: Callable[[int], None] | None = None):
        self.address = 0
        self.functions: dict[tuple[int, int, int], PciFunction] = {}
        self.rcr = 0
        self.on_reset = on_reset

    def add(self, device: int, function: int, fn: PciFunction, *, bus: int = 0) -> PciFunction:
        key = (bus, device, function)
        if key in self.functions:
            raise ValueError(f"PCI {bus:02x}:{device:02x}.{function} is taken")
        self.functions[key] = fn
        return fn

    def _target(self, port: int, size: int) -> tuple[PciFunction | None, int]:
        enabled, bus, dev, fn, reg = decode_config_address(self.address)
        offset = reg + (port - PCI_CONFIG_DATA)
        if not enabled or offset + size > PCI_CONFIG_SPACE_SIZE:
            return None, offset
        return self.functions.get((bus, dev, fn)), offset

    def io_read(self, port: int, size: int) -> int:
        if port == PCI_CONFIG_ADDRESS and size == 4:
            return self.address
        if port == RESET_CONTROL_PORT and size == 1:
            return self.rcr
        if port >= PCI_CONFIG_DATA:
            fn, offset = self._target(port, size)
            if fn is not None:
                return fn.read(offset, size)
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == PCI_CONFIG_ADDRESS and size == 4:
            self.address = value & 0xFFFF_FFFF
        elif port == RESET_CONTROL_PORT and size == 1:
            self.rcr = value & RCR_SYS_RST
            if value & RCR_RST_CPU and self.on_reset is not None:
                self.on_reset(value)
        elif port >= PCI_CONFIG_DATA:
            fn, offset = self._target(port, size)
            if fn is not None:
                fn.write(offset, size, value)


__all__ = ["PCI_IO_BASE", "PCI_IO_LENGTH", "PciFunction", "PciHost"]
