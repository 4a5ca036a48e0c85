"""The HPET at 0xFED0_0000: a 100 MHz main counter and three comparators, as QEMU's ``hpet``.

Registers in ``sevx86.arch.hpet`` (IA-PC HPET specification 1.0a, 2.3);
behaviour per the specification with QEMU's ``hw/timer/hpet.c`` for its
choices (3 timers, 10 ns period, 64-bit counter, periodic-capable timers,
routes limited to IOAPIC input 2 on the PIIX ``pc``, no FSB/MSI):

* The main counter runs while ENABLE_CNF is set and derives from the
  platform clock; the guest may write it while it is stopped.
* A timer interrupts when the main counter reaches its comparator, in 32-bit
  mode (Tn_32MODE_CNF) on the low 32 bits. Periodic timers then add their
  period (the last comparator value written; with Tn_VAL_SET_CNF the write
  sets the comparator and the period both, 2.3.9.2.2) to the comparator.
* Edge-triggered timers pulse their line. Level-triggered ones set their bit
  in the general interrupt status register and hold the line until the guest
  writes 1 to that bit.
* LEG_RT_CNF routes timer 0 to ISA IRQ0 and timer 1 to IRQ8 (and on a real
  chipset takes those lines from the PIT and the RTC: ``legacy_route`` is
  how the platform learns it); otherwise Tn_INT_ROUTE_CNF names a GSI.

As with the other timers, ``poll`` runs when the platform clock moves: a
comparator passed since the last poll fires once (periods in between
coalesce), and ``next_event_ns`` gives the next due time.
"""

from __future__ import annotations

from collections.abc import Callable

from sevx86.arch.bits import U32_MASK as _U32
from sevx86.arch.bits import U64_MASK as _U64
from sevx86.arch.hpet import (
    CAP_COUNT_SIZE_64,
    CAP_LEGACY_ROUTE,
    CAP_NUM_TIM_SHIFT,
    CAP_PERIOD_SHIFT,
    CAP_VENDOR_SHIFT,
    CONF_ENABLE,
    CONF_LEGACY_ROUTE,
    CONF_WRITABLE,
    HPET_PERIOD_FS,
    HPET_PIIX_INTCAP,
    HPET_REV,
    HPET_TIMERS,
    HPET_VENDOR_INTEL,
    LEGACY_IRQS,
    REG_CAPABILITIES,
    REG_CONFIG,
    REG_COUNTER,
    REG_INT_STATUS,
    REG_TIMER0,
    TIMER_COMPARATOR,
    TIMER_CONFIG,
    TIMER_FSB_ROUTE,
    TIMER_STRIDE,
    TN_32BIT,
    TN_INT_ENABLE,
    TN_INT_LEVEL,
    TN_PERIODIC,
    TN_PERIODIC_CAP,
    TN_ROUTE_CAP_SHIFT,
    TN_ROUTE_MASK,
    TN_ROUTE_SHIFT,
    TN_SIZE_64_CAP,
    TN_VAL_SET,
    TN_WRITABLE,
)
from sevx86.hv.clock import TimeSource

FS_PER_NS = 1_000_000
NS_PER_TICK = HPET_PERIOD_FS // FS_PER_NS  # 10

# (gsi, level) -> None: drive a platform interrupt line.
IrqSetter = Callable[[int, bool], None]


class HpetTimer:
    def __init__(self, index: int):
        self.index = index
        self.config = TN_PERIODIC_CAP | TN_SIZE_64_CAP | HPET_PIIX_INTCAP << TN_ROUTE_CAP_SHIFT
        self.comparator = _U64
        self.period = 0
        self.fsb_route = 0

    @property
    def width_mask(self) -> int:
        return _U32 if self.config & TN_32BIT else _U64

    @property
    def route(self) -> int:
        return (self.config & TN_ROUTE_MASK) >> TN_ROUTE_SHIFT


class Hpet:
    name = "hpet"

    def __init__(
        self,
        clock: TimeSource,
        set_irq: IrqSetter | None = None,
        legacy_route: Callable[[bool], None] | None = None,
    ):
        self.clock = clock
        self.set_irq = set_irq
        self.legacy_route = legacy_route
        self.config = 0
        self.int_status = 0
        self.timers = [HpetTimer(i) for i in range(HPET_TIMERS)]
        self._counter = 0  # the main counter when stopped, or at _since_ns
        self._since_ns: int | None = None
        self._seen = 0  # the main counter at the last poll
        self._levels: dict[int, bool] = {}

    @property
    def legacy(self) -> bool:
        """LEG_RT_CNF: timers 0 and 1 own IRQ0 and IRQ8 (the PIT and RTC are cut off)."""
        return bool(self.config & CONF_LEGACY_ROUTE)

    @property
    def capabilities(self) -> int:
        return (
            HPET_REV
            | (HPET_TIMERS - 1) << CAP_NUM_TIM_SHIFT
            | CAP_COUNT_SIZE_64
            | CAP_LEGACY_ROUTE
            | HPET_VENDOR_INTEL << CAP_VENDOR_SHIFT
            | HPET_PERIOD_FS << CAP_PERIOD_SHIFT
        )

    # -- the main counter -----------------------------------------------------------
    def counter(self) -> int:
        if self._since_ns is None:
            return self._counter
        return (self._counter + (self.clock.now_ns() - self._since_ns) // NS_PER_TICK) & _U64

    def _set_config(self, value: int) -> None:
        old = self.config
        self.config = value & CONF_WRITABLE
        if self.config & CONF_ENABLE and not old & CONF_ENABLE:
            self._since_ns = self.clock.now_ns()
            self._seen = self._counter
        elif old & CONF_ENABLE and not self.config & CONF_ENABLE:
            self._counter, self._since_ns = self.counter(), None
        if (old ^ self.config) & CONF_LEGACY_ROUTE and self.legacy_route is not None:
            self.legacy_route(bool(self.config & CONF_LEGACY_ROUTE))

    # -- interrupts -----------------------------------------------------------------
    def _gsi(self, timer: HpetTimer) -> int:
        if self.config & CONF_LEGACY_ROUTE and timer.index < len(LEGACY_IRQS):
            return LEGACY_IRQS[timer.index]
        return timer.route

    def _drive(self, gsi: int, level: bool) -> None:
        self._levels[gsi] = level
        if self.set_irq is not None:
            self.set_irq(gsi, level)

    def _fire(self, timer: HpetTimer) -> None:
        gsi = self._gsi(timer)
        if timer.config & TN_INT_LEVEL:
            self.int_status |= 1 << timer.index
            self._drive(gsi, True)
        else:
            self._drive(gsi, False)
            self._drive(gsi, True)
            self._drive(gsi, False)

    def poll(self) -> None:
        """Time moved: fire each enabled timer whose comparator the counter passed."""
        if self._since_ns is None:
            return
        now, last = self.counter(), self._seen
        self._seen = now
        elapsed = (now - last) & _U64
        if elapsed == 0:
            return
        for timer in self.timers:
            mask = timer.width_mask
            ahead = (timer.comparator - last) & mask
            if not 0 < ahead <= elapsed:
                continue
            if timer.config & TN_PERIODIC and timer.period:
                behind = (now - timer.comparator) & mask
                steps = behind // timer.period + 1
                timer.comparator = (timer.comparator + steps * timer.period) & mask
            if timer.config & TN_INT_ENABLE:
                self._fire(timer)

    def next_event_ns(self) -> int | None:
        if self._since_ns is None:
            return None
        now = self.counter()
        enabled = [t for t in self.timers if t.config & TN_INT_ENABLE]
        due = [d for t in enabled if (d := (t.comparator - now) & t.width_mask) > 0]
        if not due:
            return None
        return self.clock.now_ns() + min(due) * NS_PER_TICK

    # -- registers (64-bit, read and written as halves or whole) ----------------------
    def _read64(self, reg: int) -> int:
        if reg == REG_CAPABILITIES:
            return self.capabilities
        if reg == REG_CONFIG:
            return self.config
        if reg == REG_INT_STATUS:
            return self.int_status
        if reg == REG_COUNTER:
            return self.counter()
        timer, field = self._timer_field(reg)
        if timer is None:
            return 0
        if field == TIMER_CONFIG:
            return timer.config
        if field == TIMER_COMPARATOR:
            return timer.comparator
        if field == TIMER_FSB_ROUTE:
            return timer.fsb_route
        return 0

    def _write64(self, reg: int, value: int, written: int) -> None:
        """``written``: the bits of ``value`` the access covered (a 32-bit half or all 64)."""
        if reg == REG_CONFIG:
            self._set_config((self.config & ~written) | (value & written))
        elif reg == REG_INT_STATUS:
            cleared = value & written
            self.int_status &= ~cleared
            for timer in self.timers:
                if cleared & (1 << timer.index) and timer.config & TN_INT_LEVEL:
                    self._drive(self._gsi(timer), False)
        elif reg == REG_COUNTER:
            if self._since_ns is None:  # writable only while halted (2.3.7)
                self._counter = (self._counter & ~written) | (value & written)
                self._seen = self._counter
        else:
            timer, field = self._timer_field(reg)
            if timer is not None:
                self._write_timer(timer, field, value, written)

    def _write_timer(self, timer: HpetTimer, field: int, value: int, written: int) -> None:
        if field == TIMER_CONFIG:
            mask = written & TN_WRITABLE
            timer.config = (timer.config & ~mask) | (value & mask)
            if timer.config & TN_32BIT:
                timer.comparator &= _U32
        elif field == TIMER_COMPARATOR:
            mask = timer.width_mask
            # The write sets the period; the comparator itself only for a one-shot
            # timer or with Tn_VAL_SET_CNF, which then clears (QEMU hpet_ram_write).
            if not timer.config & TN_PERIODIC or timer.config & TN_VAL_SET:
                timer.comparator = ((timer.comparator & ~written) | (value & written)) & mask
            timer.period = ((timer.period & ~written) | (value & written)) & mask
            timer.config &= ~TN_VAL_SET
        elif field == TIMER_FSB_ROUTE:
            timer.fsb_route = (timer.fsb_route & ~written) | (value & written)

    def _timer_field(self, reg: int) -> tuple[HpetTimer | None, int]:
        if reg < REG_TIMER0:
            return None, 0
        index, field = divmod(reg - REG_TIMER0, TIMER_STRIDE)
        if index >= HPET_TIMERS:
            return None, 0
        return self.timers[index], field

    def mmio_read(self, offset: int, size: int) -> int:
        reg, high = offset & ~7, offset & 4
        value = self._read64(reg)
        if size == 8:
            return value
        return (value >> (8 * high)) & _U32

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.poll()  # what was due before this write fires first; a new comparator looks ahead
        reg, high = offset & ~7, offset & 4
        if size == 8:
            self._write64(reg, value & _U64, _U64)
        else:
            shift = 8 * high
            self._write64(reg, (value & _U32) << shift, _U32 << shift)


__all__ = ["Hpet", "HpetTimer"]
