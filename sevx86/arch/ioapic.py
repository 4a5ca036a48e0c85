"""The I/O APIC's registers (Intel 82093AA data sheet, section 3) and QEMU's version 0x20 EOI.

Two memory-mapped registers at the base (0xFEC0_0000 on a PC): IOREGSEL at
+0x00 selects an indirect register, IOWIN at +0x10 reads or writes it. QEMU's
IOAPIC (version 0x20, ``hw/intc/ioapic.c``) adds a directed EOI register at
+0x40: writing a vector there is the EOI a local APIC would broadcast.

Indirect registers: 0x00 IOAPICID (ID in bits 27:24), 0x01 IOAPICVER
(version in 7:0, maximum redirection entry in 23:16), 0x02 IOAPICARB, and
from 0x10 the redirection table, two 32-bit halves per input pin.
"""

from __future__ import annotations

from enum import IntEnum

IOAPIC_BASE = 0xFEC0_0000
IOAPIC_SIZE = 0x1000
IOAPIC_PINS = 24
IOREGSEL = 0x00
IOWIN = 0x10
IOAPIC_EOI = 0x40  # version 0x20 and later

REG_ID = 0x00
REG_VERSION = 0x01
REG_ARBITRATION = 0x02
REG_REDTBL = 0x10
ID_SHIFT = 24
ID_MASK = 0x0F << ID_SHIFT
IOAPIC_VERSION = 0x20  # what QEMU's pc machine reports (82093AA: 0x11)
VERSION_MAX_ENTRY_SHIFT = 16

# Redirection table entry (82093AA 3.2.4).
RTE_VECTOR = 0xFF
RTE_DELIVERY_SHIFT = 8
RTE_DEST_LOGICAL = 1 << 11
RTE_DELIVERY_STATUS = 1 << 12  # read-only: send pending
RTE_POLARITY_LOW = 1 << 13
RTE_REMOTE_IRR = 1 << 14  # read-only: a level interrupt accepted, EOI awaited
RTE_LEVEL = 1 << 15
RTE_MASKED = 1 << 16
RTE_DEST_SHIFT = 56
RTE_READ_ONLY = RTE_DELIVERY_STATUS | RTE_REMOTE_IRR


class IoApicDelivery(IntEnum):
    """Redirection entry bits 10:8."""

    FIXED = 0b000
    LOWEST_PRIORITY = 0b001
    SMI = 0b010
    NMI = 0b100
    INIT = 0b101
    EXTINT = 0b111  # the vector comes from an 8259 INTA cycle


__all__ = ["IOAPIC_BASE", "IOAPIC_PINS", "IOAPIC_SIZE", "IoApicDelivery"]
