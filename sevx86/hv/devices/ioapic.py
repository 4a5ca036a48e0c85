"""The I/O APIC at 0xFEC0_0000: 24 pins, a redirection table, edge and level delivery.

Behaviour per the Intel 82093AA data sheet (registers in
``sevx86.arch.ioapic``), version 0x20 as QEMU's ``pc`` machine has it:

* After reset every redirection entry is masked (82093AA 3.2.4); the rest
  of each entry is 0.
* An input is asserted when its level differs from the entry's polarity
  (active high, or active low with bit 13).
* Edge-triggered: a rising assertion on an unmasked pin sends one message.
  The data sheet says edges on a masked pin are ignored, not held; that is
  what happens here (QEMU instead keeps them pending until unmasked).
* Level-triggered: while the pin is asserted, unmasked and Remote IRR is
  clear, a message goes out and Remote IRR is set; the local APIC's EOI for
  that vector (``eoi``: the EOI broadcast, or a write to the version-0x20
  EOI register) clears Remote IRR, and a pin still asserted interrupts again.
* Delivery Status and Remote IRR are read-only; messages are delivered at
  once, so Delivery Status reads 0.

Messages go to ``sink`` as ``ApicInterrupt``s: the platform's routing turns
them into the hypervisor's interrupt requests (``sevx86.hv.devices.routing``).
"""

from __future__ import annotations

from sevx86.arch.bits import U32_MASK as _U32
from sevx86.arch.ioapic import (
    ID_MASK,
    IOAPIC_EOI,
    IOAPIC_PINS,
    IOAPIC_VERSION,
    IOREGSEL,
    IOWIN,
    REG_ARBITRATION,
    REG_ID,
    REG_REDTBL,
    REG_VERSION,
    RTE_DELIVERY_SHIFT,
    RTE_DEST_LOGICAL,
    RTE_DEST_SHIFT,
    RTE_LEVEL,
    RTE_MASKED,
    RTE_POLARITY_LOW,
    RTE_READ_ONLY,
    RTE_REMOTE_IRR,
    RTE_VECTOR,
    VERSION_MAX_ENTRY_SHIFT,
)
from sevx86.hv.devices.irq import ApicInterrupt, ApicSink


class IoApic:
    name = "ioapic"

    def __init__(self, sink: ApicSink | None = None, *, apic_id: int = 0):
        self.sink = sink
        self.id = (apic_id << 24) & ID_MASK
        self.select = 0
        self.redirection = [RTE_MASKED] * IOAPIC_PINS
        self.levels = [False] * IOAPIC_PINS  # input lines as driven
        self.delivered: list[ApicInterrupt] = []  # every message sent, for tests and traces

    # -- input pins -----------------------------------------------------------------
    def _asserted(self, pin: int) -> bool:
        return self.levels[pin] != bool(self.redirection[pin] & RTE_POLARITY_LOW)

    def set_irq(self, pin: int, level: bool) -> None:
        was = self._asserted(pin)
        self.levels[pin] = bool(level)
        entry = self.redirection[pin]
        if entry & RTE_LEVEL:
            self._service(pin)
        elif self._asserted(pin) and not was and not entry & RTE_MASKED:
            self._send(pin)

    def _service(self, pin: int) -> None:
        entry = self.redirection[pin]
        if not entry & RTE_LEVEL or entry & (RTE_MASKED | RTE_REMOTE_IRR):
            return
        if self._asserted(pin):
            self.redirection[pin] = entry | RTE_REMOTE_IRR
            self._send(pin)

    def _send(self, pin: int) -> None:
        entry = self.redirection[pin]
        message = ApicInterrupt(
            vector=entry & RTE_VECTOR,
            delivery=(entry >> RTE_DELIVERY_SHIFT) & 0b111,
            destination=entry >> RTE_DEST_SHIFT,
            logical=bool(entry & RTE_DEST_LOGICAL),
            level=bool(entry & RTE_LEVEL),
        )
        self.delivered.append(message)
        if self.sink is not None:
            self.sink(message)

    def eoi(self, vector: int) -> None:
        """The local APIC EOI of level-triggered ``vector``: clear Remote IRR, re-check the pin."""
        for pin, entry in enumerate(self.redirection):
            if entry & RTE_REMOTE_IRR and entry & RTE_VECTOR == vector:
                self.redirection[pin] = entry & ~RTE_REMOTE_IRR
                self._service(pin)

    # -- registers ------------------------------------------------------------------
    def read_register(self, index: int) -> int:
        if index in (REG_ID, REG_ARBITRATION):
            return self.id
        if index == REG_VERSION:
            return IOAPIC_VERSION | (IOAPIC_PINS - 1) << VERSION_MAX_ENTRY_SHIFT
        pin, high = divmod(index - REG_REDTBL, 2)
        if index < REG_REDTBL or pin >= IOAPIC_PINS:
            return 0
        return (self.redirection[pin] >> (32 * high)) & _U32

    def write_register(self, index: int, value: int) -> None:
        if index == REG_ID:
            self.id = value & ID_MASK
            return
        pin, high = divmod(index - REG_REDTBL, 2)
        if index < REG_REDTBL or pin >= IOAPIC_PINS:
            return
        old = self.redirection[pin]
        if high:
            new = (old & _U32) | (value & _U32) << 32
        else:
            new = (old & ~_U32) | (value & _U32 & ~RTE_READ_ONLY) | (old & RTE_READ_ONLY)
        if not new & RTE_LEVEL:
            new &= ~RTE_REMOTE_IRR  # Remote IRR is undefined for edge entries: keep it 0
        self.redirection[pin] = new
        self._service(pin)  # unmasking an asserted level pin interrupts

    # -- MMIO -----------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        if offset == IOREGSEL:
            return self.select
        if offset == IOWIN:
            return self.read_register(self.select)
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset == IOREGSEL:
            self.select = value & 0xFF
        elif offset == IOWIN:
            self.write_register(self.select, value)
        elif offset == IOAPIC_EOI:
            self.eoi(value & RTE_VECTOR)


__all__ = ["IoApic"]
