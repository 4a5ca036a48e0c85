"""The 8259A programmable interrupt controller pair and the PIIX ELCR (Intel 8259A data sheet).

Ports: master at 0x20/0x21, slave at 0xA0/0xA1 (cascaded on master input 2),
the edge/level control registers at 0x4D0 (IRQ0-7) and 0x4D1 (IRQ8-15) as
the PIIX3/PIIX4 datasheets define them.

Command words (8259A data sheet, "Programming the 8259A"): on the even port
a byte with bit 4 set is ICW1 (bit 0 IC4: an ICW4 follows; bit 1 SNGL: no
cascade, no ICW3); otherwise bit 3 set is OCW3 (bits 1:0 read register
select, bit 2 poll, bits 6:5 special mask) and bit 3 clear is OCW2 (bits
7:5 the EOI/rotate command, bits 2:0 the level). On the odd port: ICW2
(vector base, bits 7:3), ICW3, ICW4 (bit 1 AEOI, bit 4 SFNM) during
initialization, OCW1 (the interrupt mask) after it.
"""

from __future__ import annotations

from enum import IntEnum

PIC_MASTER = 0x20
PIC_SLAVE = 0xA0
PIC_PORT_COUNT = 2
PIC_CASCADE_IRQ = 2
ELCR_PORT = 0x4D0  # ELCR1; ELCR2 at 0x4D1
ELCR_PORT_COUNT = 2
# IRQ0, 1, 2 (timer, keyboard, cascade) and IRQ8, 13 are always edge (PIIX ELCR1/ELCR2).
ELCR_MASK_MASTER = 0xF8
ELCR_MASK_SLAVE = 0xDE

ICW1 = 0x10
ICW1_IC4 = 0x01
ICW1_SNGL = 0x02
OCW3 = 0x08
OCW3_RR = 0x02  # read register command: bit 0 then selects ISR (1) or IRR (0)
OCW3_RIS = 0x01
OCW3_POLL = 0x04
OCW3_ESMM = 0x40  # enable special mask mode change; bit 5 (SMM) sets it
OCW3_SMM = 0x20
ICW2_VECTOR_MASK = 0xF8
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10
OCW2_LEVEL_MASK = 0x07
OCW2_COMMAND_SHIFT = 5
POLL_INTERRUPT = 0x80  # poll word bit 7: an interrupt is pending; bits 2:0 its level
SPURIOUS_IRQ = 7


class Ocw2(IntEnum):
    """OCW2 bits 7:5 (R, SL, EOI)."""

    ROTATE_AEOI_CLEAR = 0b000
    NON_SPECIFIC_EOI = 0b001
    NOP = 0b010
    SPECIFIC_EOI = 0b011
    ROTATE_AEOI_SET = 0b100
    ROTATE_NON_SPECIFIC_EOI = 0b101
    SET_PRIORITY = 0b110
    ROTATE_SPECIFIC_EOI = 0b111


__all__ = ["ELCR_PORT", "Ocw2", "PIC_MASTER", "PIC_SLAVE"]
