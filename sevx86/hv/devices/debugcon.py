"""The debug console at port 0x402, as QEMU's ``isa-debugcon`` (OVMF's DEBUG port).

Every byte written to the port is output; a read returns the readback value
0xE9, which firmware uses to detect that the console is present.
"""

from __future__ import annotations

from sevx86.hv.devices.console import Console

DEBUGCON_PORT = 0x402
DEBUGCON_READBACK = 0xE9


class DebugCon:
    def __init__(self, console: Console, port: int = DEBUGCON_PORT, name: str = "debugcon"):
        self.console = console
        self.port = port
        self.name = name

    def io_read(self, port: int, size: int) -> int:
        return DEBUGCON_READBACK

    def io_write(self, port: int, size: int, value: int) -> None:
        self.console.write(self.name, bytes([value & 0xFF]))

    def io_write_block(self, port: int, size: int, data: bytes) -> None:
        self.console.write(self.name, bytes(data[::size]))


__all__ = ["DebugCon", "DEBUGCON_PORT"]
