"""A 16550A UART (COM1 at 0x3F8, IRQ4) as Linux's 8250 driver and OVMF's serial driver use it.

Registers and bits in ``sevx86.arch.uart`` (National PC16550D data sheet);
behaviour as the data sheet describes it, with QEMU's ``hw/char/serial.c``
as the reference where a PC needs more than the chip:

* FIFOs: FCR bit 0 enables both 16-byte FIFOs (changing it empties them),
  bits 1 and 2 clear the receive and transmit FIFO, bits 7:6 set the
  receive trigger level (1, 4, 8 or 14 bytes). IIR bits 7:6 read 11 with
  FIFOs on, which is how a driver tells a 16550A.
* Transmission is instant: a THR write goes to the console (or, in loopback,
  to the receiver) at once, so LSR.THRE and TEMT read set and the THR-empty
  interrupt follows every write.
* LSR: DR while data waits; OE when a byte arrives with no room (the FIFO
  keeps its bytes, the RBR is overwritten without FIFOs); reading LSR clears
  the error bits. MSR: deltas since the last MSR read in bits 3:0 (TERI on
  RI's falling edge), cleared by the read.
* Loopback (MCR bit 4): the transmitter feeds the receiver; MSR's CTS, DSR,
  RI and DCD follow MCR's RTS, DTR, OUT1 and OUT2 -- the test Linux's
  ``autoconfig`` runs (MCR 0x1A must read MSR 0x90). Outside loopback the
  modem inputs are a connected line (CTS, DSR, DCD), as a QEMU chardev.
* Interrupts in the data sheet's priority order (IIR): line status, received
  data (at the trigger level) or character timeout (below it), THR empty
  (cleared by reading IIR when it is the one shown, or by writing THR),
  modem status. The INTR output drives ``irq`` through the PC's MCR.OUT2
  gate (off in loopback, where OUT2 is looped back instead).
* Simplified: the character timeout (data below the trigger level, 4
  character times without a read) is taken as already expired -- host input
  arrives in bursts and waiting for it needs no timer.
* Host input (``feed``) waits in a bounded buffer and moves into the
  receiver as it has room, like a QEMU chardev asking ``can_receive``: the
  guest never sees an overrun from typing, and host memory stays bounded.
"""

from __future__ import annotations

from collections import deque

from sevx86.arch.uart import (
    COM1,
    FCR_CLEAR_RX,
    FCR_CLEAR_TX,
    FCR_ENABLE,
    FCR_TRIGGER_SHIFT,
    FIFO_SIZE,
    IER,
    IER_MASK,
    IER_MSI,
    IER_RDI,
    IER_RLSI,
    IER_THRI,
    IIR_FCR,
    IIR_FIFO_ENABLED,
    IIR_LINE_STATUS,
    IIR_MODEM_STATUS,
    IIR_NO_INTERRUPT,
    IIR_RX_DATA,
    IIR_RX_TIMEOUT,
    IIR_THR_EMPTY,
    LCR,
    LCR_DLAB,
    LCR_WLEN8,
    LSR,
    LSR_DR,
    LSR_ERRORS,
    LSR_OE,
    LSR_TEMT,
    LSR_THRE,
    MCR,
    MCR_DTR,
    MCR_LOOP,
    MCR_MASK,
    MCR_OUT1,
    MCR_OUT2,
    MCR_RTS,
    MSR,
    MSR_CONNECTED,
    MSR_CTS,
    MSR_DCD,
    MSR_DCTS,
    MSR_DDCD,
    MSR_DDSR,
    MSR_DELTAS,
    MSR_DSR,
    MSR_RI,
    MSR_TERI,
    RBR_THR,
    RX_TRIGGER_LEVELS,
    SCR,
    TX_FIFO_SIZE,
)
from sevx86.hv.devices.console import Console
from sevx86.hv.devices.irq import IrqLine

# Host input not yet taken by the receiver: beyond this, ``feed`` drops bytes.
MAX_PENDING_INPUT = 64 * 1024


class Serial16550:
    def __init__(
        self,
        console: Console,
        base: int = COM1,
        name: str = "serial",
        irq: IrqLine | None = None,
    ):
        self.console = console
        self.base = base
        self.name = name
        self.irq = irq if irq is not None else IrqLine(f"{name}-irq")
        self.divisor = 1
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.lsr = LSR_THRE | LSR_TEMT
        self.scratch = 0
        self.fifo = False
        self.trigger = 1
        self.rx: deque[int] = deque()  # the receiver FIFO (one byte deep without FIFOs)
        self.pending_input: deque[int] = deque()  # host input waiting for room
        self.dropped_input = 0
        self.thr_pending = False  # the THR-empty interrupt is owed
        self.msr = MSR_CONNECTED
        self._last_modem_inputs = MSR_CONNECTED

    # -- host side ------------------------------------------------------------------
    def feed(self, data: bytes) -> int:
        """Bytes typed at the terminal; returns how many were kept (the rest is dropped)."""
        room = MAX_PENDING_INPUT - len(self.pending_input)
        kept = data[: max(room, 0)]
        self.dropped_input += len(data) - len(kept)
        self.pending_input.extend(kept)
        self._refill()
        self._update()
        return len(kept)

    def _capacity(self) -> int:
        return FIFO_SIZE if self.fifo else 1

    def _refill(self) -> None:
        while self.pending_input and len(self.rx) < self._capacity():
            self.rx.append(self.pending_input.popleft())
        if self.rx:
            self.lsr |= LSR_DR

    def _receive(self, byte: int) -> None:
        """A byte at the receiver (loopback): an overrun when there is no room."""
        if len(self.rx) < self._capacity():
            self.rx.append(byte)
        else:
            self.lsr |= LSR_OE
            if not self.fifo:
                self.rx[-1] = byte  # without FIFOs the RBR is overwritten
        self.lsr |= LSR_DR

    # -- modem lines ------------------------------------------------------------------
    def _modem_inputs(self) -> int:
        if not self.mcr & MCR_LOOP:
            return MSR_CONNECTED
        m = self.mcr
        return (
            (MSR_CTS if m & MCR_RTS else 0)
            | (MSR_DSR if m & MCR_DTR else 0)
            | (MSR_RI if m & MCR_OUT1 else 0)
            | (MSR_DCD if m & MCR_OUT2 else 0)
        )

    def _modem_changed(self) -> None:
        new, old = self._modem_inputs(), self._last_modem_inputs
        changed = new ^ old
        deltas = self.msr & MSR_DELTAS
        if changed & MSR_CTS:
            deltas |= MSR_DCTS
        if changed & MSR_DSR:
            deltas |= MSR_DDSR
        if changed & MSR_DCD:
            deltas |= MSR_DDCD
        if old & MSR_RI and not new & MSR_RI:
            deltas |= MSR_TERI
        self.msr = new | deltas
        self._last_modem_inputs = new

    # -- interrupts -------------------------------------------------------------------
    def interrupt_id(self) -> int:
        """IIR bits 3:0: the highest-priority pending interrupt, or 1 (none)."""
        if self.ier & IER_RLSI and self.lsr & LSR_ERRORS:
            return IIR_LINE_STATUS
        if self.ier & IER_RDI and self.rx:
            if not self.fifo or len(self.rx) >= self.trigger:
                return IIR_RX_DATA
            return IIR_RX_TIMEOUT
        if self.ier & IER_THRI and self.thr_pending:
            return IIR_THR_EMPTY
        if self.ier & IER_MSI and self.msr & MSR_DELTAS:
            return IIR_MODEM_STATUS
        return IIR_NO_INTERRUPT

    def _update(self) -> None:
        gate = self.mcr & MCR_OUT2 and not self.mcr & MCR_LOOP
        level = bool(gate) and self.interrupt_id() != IIR_NO_INTERRUPT
        if level != self.irq.level:
            self.irq.set_level(level)

    # -- the ports --------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        value = self._read(port - self.base)
        self._update()
        return value

    def _read(self, reg: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if reg == RBR_THR:
            if dlab:
                return self.divisor & 0xFF
            byte = self.rx.popleft() if self.rx else 0
            self._refill()
            if not self.rx:
                self.lsr &= ~LSR_DR
            return byte
        if reg == IER:
            return (self.divisor >> 8) & 0xFF if dlab else self.ier
        if reg == IIR_FCR:
            iid = self.interrupt_id()
            if iid == IIR_THR_EMPTY:
                self.thr_pending = False  # reading IIR when it shows THRE clears it
            return iid | (IIR_FIFO_ENABLED if self.fifo else 0)
        if reg == LCR:
            return self.lcr
        if reg == MCR:
            return self.mcr
        if reg == LSR:
            value = self.lsr
            self.lsr &= ~LSR_ERRORS
            return value
        if reg == MSR:
            value = self.msr
            self.msr &= ~MSR_DELTAS
            return value
        return self.scratch  # SCR

    def io_write(self, port: int, size: int, value: int) -> None:
        self._write(port - self.base, value & 0xFF)
        self._update()

    def _write(self, reg: int, value: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if reg == RBR_THR and dlab:
            self.divisor = (self.divisor & 0xFF00) | value
        elif reg == RBR_THR:
            self._transmit(bytes([value]))
        elif reg == IER and dlab:
            self.divisor = (self.divisor & 0x00FF) | (value << 8)
        elif reg == IER:
            enabling_thri = value & IER_THRI and not self.ier & IER_THRI
            self.ier = value & IER_MASK
            if enabling_thri and self.lsr & LSR_THRE:
                self.thr_pending = True  # enabling it with THR empty interrupts at once
        elif reg == IIR_FCR:
            self._fcr(value)
        elif reg == LCR:
            self.lcr = value
        elif reg == MCR:
            self.mcr = value & MCR_MASK
            self._modem_changed()
        elif reg == SCR:
            self.scratch = value
        # LSR and MSR are read-only (the data sheet's factory-test writes are not modelled)

    def _fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE)
        if enable != self.fifo:
            self.rx.clear()
            self.lsr &= ~LSR_DR
            self.fifo = enable
        if not enable:
            self._refill()
            return  # the other bits are programmed only with bit 0 set
        if value & FCR_CLEAR_RX:
            self.rx.clear()
            self.lsr &= ~(LSR_DR | LSR_OE)
        # The transmit FIFO is always empty here (instant transmission): FCR_CLEAR_TX
        # has nothing to drop.
        self.trigger = RX_TRIGGER_LEVELS[value >> FCR_TRIGGER_SHIFT]
        self._refill()

    def _transmit(self, data: bytes) -> None:
        if self.mcr & MCR_LOOP:
            for byte in data:
                self._receive(byte)
        else:
            self.console.write(self.name, data)
        self.thr_pending = True

    def io_write_block(self, port: int, size: int, data: bytes) -> None:
        """REP OUTSB to THR: the whole string at once (same result as byte by byte)."""
        if port - self.base == RBR_THR and not self.lcr & LCR_DLAB and size == 1:
            self._transmit(bytes(data))
            self._update()
            return
        for i in range(0, len(data) - len(data) % size, size):
            self.io_write(port, size, int.from_bytes(data[i : i + size], "little"))


__all__ = [
    "COM1",
    "FCR_CLEAR_RX",
    "FCR_CLEAR_TX",
    "FCR_ENABLE",
    "IER",
    "IIR_FCR",
    "LCR",
    "LCR_DLAB",
    "LCR_WLEN8",
    "LSR",
    "LSR_DR",
    "LSR_OE",
    "LSR_THRE",
    "MAX_PENDING_INPUT",
    "MCR",
    "MSR",
    "RBR_THR",
    "SCR",
    "Serial16550",
    "TX_FIFO_SIZE",
]
