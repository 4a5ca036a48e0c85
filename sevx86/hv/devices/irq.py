"""Interrupt lines: a device raises or lowers a line; whatever listens sees the level.

A PC's interrupt wiring is many-to-many: ISA IRQ0 goes to 8259 input 0 and
to IOAPIC pin 2, IRQ1..15 to the 8259s and to IOAPIC pins 1..15 (QEMU's
``pc`` machine, ``hw/i386/pc.c`` ``gsi_handler``; ACPI's "Global System
Interrupts", 6.x section 5.2.13). So a line is a small fan-out object:
``IrqLine.set_level`` remembers the level and calls every sink with it;
``pulse`` is the low-high-low of an edge-triggered device.

Sinks are ``(level: bool) -> None`` callables, usually
``functools.partial(controller.set_irq, pin)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

IrqSink = Callable[[bool], None]


@dataclass(frozen=True)
class ApicInterrupt:
    """An interrupt message to local APICs, as an IOAPIC (or an MSI) sends it.

    ``delivery`` is the 3-bit delivery mode of the redirection entry
    (``sevx86.arch.ioapic.IoApicDelivery``); ``level`` says it is
    level-triggered, so the receiving local APIC owes the IOAPIC an EOI for
    ``vector`` (``IoApic.eoi``).
    """

    vector: int
    delivery: int
    destination: int
    logical: bool
    level: bool


ApicSink = Callable[[ApicInterrupt], None]


class IrqLine:
    """One interrupt line, driven by one device, wired to any number of controller pins."""

    def __init__(self, name: str = "irq") -> None:
        self.name = name
        self.level = False
        self.sinks: list[IrqSink] = []

    def connect(self, sink: IrqSink) -> None:
        self.sinks.append(sink)
        if self.level:
            sink(True)

    def set_level(self, level: bool) -> None:
        self.level = bool(level)
        for sink in self.sinks:
            sink(self.level)

    def raise_(self) -> None:
        self.set_level(True)

    def lower(self) -> None:
        self.set_level(False)

    def pulse(self) -> None:
        """An edge: high, then low (a rising edge for edge-triggered inputs)."""
        self.set_level(True)
        self.set_level(False)


__all__ = ["ApicInterrupt", "ApicSink", "IrqLine", "IrqSink"]
