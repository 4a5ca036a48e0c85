"""A 16550-style UART (COM1 at 0x3F8): enough for polled output and input.

Registers at base + 0..7 (PC16550D data sheet): RBR/THR, IER, IIR/FCR, LCR,
MCR, LSR, MSR, SCR; with LCR.DLAB set, offsets 0 and 1 are the divisor latch.
The transmitter is always ready (LSR.THRE and TEMT set), so the classic
polled loop ``while (!(inb(LSR) & THRE)); outb(THR, c)`` works; each THR write
goes to the console at once. Bytes given to ``feed`` arrive in RBR with
LSR.DR set. No interrupts are raised.
"""

from __future__ import annotations

from collections import deque

from sevx86.hv.devices.console import Console

COM1 = 0x3F8
RBR_THR = 0
IER = 1
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7
LCR_DLAB = 0x80
LCR_WLEN8 = 0x03  # 8 data bits, 1 stop bit, no parity ("8N1")
FCR_ENABLE = 0x01  # FIFO mode
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
# In FIFO mode LSR.THRE means the transmit FIFO is empty: a driver may then
# write up to this many bytes without polling again (Linux 8250 tx_loadsz).
TX_FIFO_SIZE = 16
LSR_DR = 0x01
LSR_THRE = 0x20
LSR_TEMT = 0x40
IIR_NO_INTERRUPT = 0x01
IIR_FIFO_ENABLED = 0xC0
MSR_CONNECTED = 0xB0  # DCD, DSR, CTS


class Serial16550:
    def __init__(self, console: Console, base: int = COM1, name: str = "serial"):
        self.console = console
        self.base = base
        self.name = name
        self.regs = bytearray(8)
        self.divisor = 1
        self.fifo = False
        self.rx: deque[int] = deque()

    def feed(self, data: bytes) -> None:
        """Bytes typed at the terminal: the guest reads them from RBR."""
        self.rx.extend(data)

    def io_read(self, port: int, size: int) -> int:
        reg = port - self.base
        dlab = self.regs[LCR] & LCR_DLAB
        if reg == RBR_THR:
            if dlab:
                return self.divisor & 0xFF
            return self.rx.popleft() if self.rx else 0
        if reg == IER:
            return (self.divisor >> 8) & 0xFF if dlab else self.regs[IER]
        if reg == IIR_FCR:
            return IIR_NO_INTERRUPT | (IIR_FIFO_ENABLED if self.fifo else 0)
        if reg == LSR:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self.rx else 0)
        if reg == MSR:
            return MSR_CONNECTED
        return self.regs[reg]

    def io_write(self, port: int, size: int, value: int) -> None:
        reg = port - self.base
        value &= 0xFF
        dlab = self.regs[LCR] & LCR_DLAB
        if reg == RBR_THR and not dlab:
            self.console.write(self.name, bytes([value]))
        elif reg == RBR_THR:
            self.divisor = (self.divisor & 0xFF00) | value
        elif reg == IER and dlab:
            self.divisor = (self.divisor & 0x00FF) | (value << 8)
        elif reg == IIR_FCR:
            self.fifo = bool(value & 1)
        elif reg not in (LSR, MSR):
            self.regs[reg] = value

    def io_write_block(self, port: int, size: int, data: bytes) -> None:
        """REP OUTSB to THR: the whole string at once (same result as byte by byte)."""
        if port - self.base == RBR_THR and not self.regs[LCR] & LCR_DLAB and size == 1:
            self.console.write(self.name, bytes(data))
            return
        for i in range(0, len(data) - len(data) % size, size):
            self.io_write(port, size, int.from_bytes(data[i : i + size], "little"))


__all__ = ["Serial16550", "COM1", "LSR", "LSR_THRE"]
