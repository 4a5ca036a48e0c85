"""The I/O-port bus and the MMIO bus: where IOIO and MMIO exits are routed.

Devices are reached only through exits: the hypervisor's IOIO handler calls
``IoBus.read/write`` and its MMIO handler (a GHCB MMIO request, or a nested
page fault it decoded) calls ``MmioBus.read/write``. As on a PC, a read
nobody answers floats high (all ones) and a write nobody takes is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class IoDevice(Protocol):
    """A device on I/O ports; ``port`` is absolute, ``size`` 1, 2 or 4."""

    name: str

    def io_read(self, port: int, size: int) -> int: ...

    def io_write(self, port: int, size: int, value: int) -> None: ...


@runtime_checkable
class MmioDevice(Protocol):
    """A device in guest-physical address space; ``offset`` is from its base."""

    name: str

    def mmio_read(self, offset: int, size: int) -> int: ...

    def mmio_write(self, offset: int, size: int, value: int) -> None: ...


def _ones(size: int) -> int:
    return (1 << (8 * size)) - 1


@dataclass(frozen=True)
class Mapping:
    base: int
    length: int
    device: object

    @property
    def end(self) -> int:
        return self.base + self.length

    def covers(self, addr: int, size: int) -> bool:
        return self.base <= addr and addr + size <= self.end


class _Bus:
    def __init__(self, limit: int):
        self.limit = limit
        self.mappings: list[Mapping] = []

    def register(self, base: int, length: int, device: object) -> None:
        if length <= 0 or base < 0 or base + length > self.limit:
            raise ValueError(f"range {base:#x}+{length:#x} does not fit the bus")
        for m in self.mappings:
            if base < m.end and m.base < base + length:
                name = getattr(m.device, "name", m.device)
                raise ValueError(f"range {base:#x}+{length:#x} overlaps {name}")
        self.mappings.append(Mapping(base, length, device))

    def unregister(self, device: object) -> None:
        """Remove every range of ``device`` (a device whose window the guest moves)."""
        self.mappings = [m for m in self.mappings if m.device is not device]

    def find(self, addr: int, size: int) -> Mapping | None:
        for m in self.mappings:
            if m.covers(addr, size):
                return m
        return None

    def device(self, name: str) -> object:
        for m in self.mappings:
            if getattr(m.device, "name", None) == name:
                return m.device
        raise KeyError(name)


class IoBus(_Bus):
    """64 Ki I/O ports."""

    def __init__(self) -> None:
        super().__init__(0x10000)

    def read(self, port: int, size: int) -> int:
        m = self.find(port, size)
        if m is None:
            return _ones(size)
        return m.device.io_read(port, size) & _ones(size)  # type: ignore[attr-defined]

    def write(self, port: int, size: int, value: int) -> None:
        m = self.find(port, size)
        if m is not None:
            m.device.io_write(port, size, value & _ones(size))  # type: ignore[attr-defined]

    def write_string(self, port: int, size: int, data: bytes) -> None:
        """OUTS: ``len(data) // size`` elements to one port, in order."""
        m = self.find(port, size)
        if m is None:
            return
        block = getattr(m.device, "io_write_block", None)
        if block is not None:
            block(port, size, data)
            return
        for i in range(0, len(data) - len(data) % size, size):
            m.device.io_write(port, size, int.from_bytes(data[i : i + size], "little"))  # type: ignore[attr-defined]

    def read_string(self, port: int, size: int, count: int) -> bytes:
        """INS: ``count`` elements from one port."""
        return b"".join(self.read(port, size).to_bytes(size, "little") for _ in range(count))


class MmioBus(_Bus):
    """Guest-physical MMIO ranges (outside RAM; a 52-bit space)."""

    def __init__(self) -> None:
        super().__init__(1 << 52)

    def read(self, gpa: int, size: int) -> int:
        m = self.find(gpa, size)
        if m is None:
            return _ones(size)
        return m.device.mmio_read(gpa - m.base, size) & _ones(size)  # type: ignore[attr-defined]

    def write(self, gpa: int, size: int, value: int) -> None:
        m = self.find(gpa, size)
        if m is not None:
            m.device.mmio_write(gpa - m.base, size, value & _ones(size))  # type: ignore[attr-defined]

    def read_bytes(self, gpa: int, size: int) -> bytes:
        return self.read(gpa, size).to_bytes(size, "little")

    def write_bytes(self, gpa: int, data: bytes) -> None:
        self.write(gpa, len(data), int.from_bytes(data, "little"))


__all__ = ["IoBus", "IoDevice", "MmioBus", "MmioDevice"]
