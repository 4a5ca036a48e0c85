"""The PC's two cascaded 8259A PICs (0x20/0x21, 0xA0/0xA1) and the ELCR (0x4D0/0x4D1).

Behaviour per the Intel 8259A data sheet (command words in
``sevx86.arch.pic``), with QEMU's ``hw/intc/i8259.c`` as the reference for
the edge/level details a PC adds:

* IRR latches a rising edge on an edge-triggered input; on a level-triggered
  input (its ELCR bit set) it follows the line. IMR masks, ISR holds the
  interrupts in service.
* Priority is fully nested with a rotating lowest priority (``priority_add``,
  moved by the rotate commands); a request interrupts only if its priority
  beats everything in service, except that special mask mode ignores masked
  ISR bits and special fully nested mode lets the slave's requests past the
  master's in-service cascade input.
* The interrupt acknowledge (``acknowledge``) moves the highest request to
  ISR (not with AEOI), clears an edge request from IRR and gives the
  vector; with nothing to acknowledge it answers IRQ 7 (the spurious
  interrupt of the data sheet). The poll command (OCW3 P) does the same on
  a read of the even port and returns 0x80 | level.
* EOIs: non-specific (clears the highest-priority ISR bit), specific, the
  rotating forms, set priority, rotate in AEOI mode.

The master's INT output goes to ``on_output``: in QEMU's ``pc`` machine the
CPU's INTR pin (the local APIC's LINT0 in virtual-wire mode), wired by
``sevx86.hv.devices.routing``.
"""

from __future__ import annotations

from collections.abc import Callable

from sevx86.arch.pic import (
    ELCR_MASK_MASTER,
    ELCR_MASK_SLAVE,
    ELCR_PORT,
    ICW1,
    ICW1_IC4,
    ICW1_SNGL,
    ICW2_VECTOR_MASK,
    ICW4_AEOI,
    ICW4_SFNM,
    OCW2_COMMAND_SHIFT,
    OCW2_LEVEL_MASK,
    OCW3,
    OCW3_ESMM,
    OCW3_POLL,
    OCW3_RIS,
    OCW3_RR,
    OCW3_SMM,
    PIC_CASCADE_IRQ,
    PIC_MASTER,
    PIC_SLAVE,
    POLL_INTERRUPT,
    SPURIOUS_IRQ,
    Ocw2,
)

NO_IRQ = 8  # get_priority's "nothing": lower than the 8 levels


class Pic8259:
    """One 8259A."""

    def __init__(self, *, master: bool, elcr_mask: int):
        self.master = master
        self.elcr_mask = elcr_mask
        self.elcr = 0
        self.initialized = False  # an ICW1-ICW2(-ICW4) sequence has completed
        self._reset()

    def _reset(self) -> None:
        self.irr = 0
        self.imr = 0
        self.isr = 0
        self.last_level = 0  # input levels, for edge detection
        self.vector_base = 0
        self.priority_add = 0  # the level with the highest priority
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.special_fully_nested = False
        self.init_step = 0  # 0: operational; 1, 2, 3: ICW2, ICW3, ICW4 expected
        self.expect_icw4 = False
        self.single = False

    # -- inputs ---------------------------------------------------------------------
    def set_irq(self, pin: int, level: bool) -> None:
        bit = 1 << pin
        if self.elcr & bit:  # level-triggered: IRR follows the line
            self.irr = self.irr | bit if level else self.irr & ~bit
        elif level and not self.last_level & bit:
            self.irr |= bit  # a rising edge
        self.last_level = self.last_level | bit if level else self.last_level & ~bit

    # -- priority -------------------------------------------------------------------
    def _priority(self, mask: int) -> int:
        """The priority (0 = highest) of the best level in ``mask``, or NO_IRQ."""
        if not mask & 0xFF:
            return NO_IRQ
        priority = 0
        while not mask & (1 << ((priority + self.priority_add) & 7)):
            priority += 1
        return priority

    def pending(self) -> int | None:
        """The level that would interrupt now (INT high), or None."""
        priority = self._priority(self.irr & ~self.imr)
        if priority == NO_IRQ:
            return None
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr
        if self.special_fully_nested and self.master:
            in_service &= ~(1 << PIC_CASCADE_IRQ)
        if priority < self._priority(in_service):
            return (priority + self.priority_add) & 7
        return None

    def intack(self, level: int) -> None:
        bit = 1 << level
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.priority_add = (level + 1) & 7
        else:
            self.isr |= bit
        if not self.elcr & bit:
            self.irr &= ~bit

    # -- the ports ------------------------------------------------------------------
    def write(self, odd: bool, value: int) -> None:
        if not odd:
            if value & ICW1:
                self._icw1(value)
            elif value & OCW3:
                self._ocw3(value)
            else:
                self._ocw2(value)
            return
        if self.init_step == 0:
            self.imr = value  # OCW1
        elif self.init_step == 1:
            self.vector_base = value & ICW2_VECTOR_MASK
            self.initialized = True
            if not self.single:
                self.init_step = 2
            else:
                self.init_step = 3 if self.expect_icw4 else 0
        elif self.init_step == 2:  # ICW3: the cascade wiring, fixed on a PC
            self.init_step = 3 if self.expect_icw4 else 0
        else:
            self.special_fully_nested = bool(value & ICW4_SFNM)
            self.auto_eoi = bool(value & ICW4_AEOI)
            self.init_step = 0

    def _icw1(self, value: int) -> None:
        # Initialization clears IMR and ISR, IRQ 7 gets the lowest priority,
        # special mask mode is off, the read register is IRR (data sheet,
        # "Initialization Command Words"); the ELCR is the chipset's, not reset.
        irr = self.irr
        self._reset()
        self.irr = irr & self.elcr
        self.expect_icw4 = bool(value & ICW1_IC4)
        self.single = bool(value & ICW1_SNGL)
        self.init_step = 1

    def _ocw3(self, value: int) -> None:
        if value & OCW3_POLL:
            self.poll = True
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)

    def _ocw2(self, value: int) -> None:
        command = Ocw2(value >> OCW2_COMMAND_SHIFT)
        level = value & OCW2_LEVEL_MASK
        if command in (Ocw2.ROTATE_AEOI_CLEAR, Ocw2.ROTATE_AEOI_SET):
            self.rotate_on_auto_eoi = command is Ocw2.ROTATE_AEOI_SET
        elif command in (Ocw2.NON_SPECIFIC_EOI, Ocw2.ROTATE_NON_SPECIFIC_EOI):
            priority = self._priority(self.isr)
            if priority != NO_IRQ:
                served = (priority + self.priority_add) & 7
                self.isr &= ~(1 << served)
                if command is Ocw2.ROTATE_NON_SPECIFIC_EOI:
                    self.priority_add = (served + 1) & 7
        elif command is Ocw2.SPECIFIC_EOI:
            self.isr &= ~(1 << level)
        elif command is Ocw2.SET_PRIORITY:
            self.priority_add = (level + 1) & 7
        elif command is Ocw2.ROTATE_SPECIFIC_EOI:
            self.isr &= ~(1 << level)
            self.priority_add = (level + 1) & 7

    def read(self, odd: bool) -> int:
        if self.poll:
            self.poll = False
            level = self.pending()
            if level is None:
                return 0
            self.intack(level)
            return POLL_INTERRUPT | level
        if odd:
            return self.imr
        return self.isr if self.read_isr else self.irr


class DualPic:
    """Master and slave, cascaded on master input 2; ``on_output`` gets the master's INT."""

    name = "pic"

    def __init__(self, on_output: Callable[[bool], None] | None = None):
        self.master = Pic8259(master=True, elcr_mask=ELCR_MASK_MASTER)
        self.slave = Pic8259(master=False, elcr_mask=ELCR_MASK_SLAVE)
        self.on_output = on_output
        self.output = False

    # -- inputs from devices ----------------------------------------------------------
    def set_irq(self, irq: int, level: bool) -> None:
        """ISA IRQ ``irq`` (0-15) at ``level``."""
        if irq < 8:
            self.master.set_irq(irq, level)
        else:
            self.slave.set_irq(irq - 8, level)
        self._update()

    def _update(self) -> None:
        self.master.set_irq(PIC_CASCADE_IRQ, self.slave.pending() is not None)
        output = self.master.pending() is not None
        if output != self.output:
            self.output = output
            if self.on_output is not None:
                self.on_output(output)

    # -- the CPU side -----------------------------------------------------------------
    def acknowledge(self) -> int:
        """The INTA cycle: the vector of the highest request (IRQ 7's if none: spurious)."""
        level = self.master.pending()
        if level is None:
            vector = self.master.vector_base + SPURIOUS_IRQ
        elif level == PIC_CASCADE_IRQ:
            slave_level = self.slave.pending()
            if slave_level is None:
                slave_level = SPURIOUS_IRQ
            else:
                self.slave.intack(slave_level)
            self.master.intack(level)
            vector = self.slave.vector_base + slave_level
        else:
            self.master.intack(level)
            vector = self.master.vector_base + level
        self._update()
        return vector

    # -- the ports --------------------------------------------------------------------
    def _chip(self, port: int) -> Pic8259:
        return self.master if port & ~1 == PIC_MASTER else self.slave

    def io_read(self, port: int, size: int) -> int:
        if port & ~1 == ELCR_PORT:
            return (self.master if port == ELCR_PORT else self.slave).elcr
        value = self._chip(port).read(bool(port & 1))
        self._update()
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port & ~1 == ELCR_PORT:
            chip = self.master if port == ELCR_PORT else self.slave
            chip.elcr = value & chip.elcr_mask
        else:
            self._chip(port).write(bool(port & 1), value)
        self._update()


__all__ = ["DualPic", "PIC_MASTER", "PIC_SLAVE", "Pic8259"]
