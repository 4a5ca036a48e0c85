"""The ACPI PM timer SCI: TMR_STS when timer bit 23 changes (ACPI 6.x 4.8.3.3), gated by TMR_EN."""

from __future__ import annotations

import math

from sevx86.hv.clock import VirtualClock
from sevx86.hv.devices.acpi_pm import AcpiPmBlock

BASE = 0x600
STS, EN = BASE, BASE + 2
MSB_PERIOD_NS = math.ceil((1 << 23) * 1_000_000_000 / 3_579_545)  # 2.34 s


def make() -> tuple[VirtualClock, AcpiPmBlock]:
    clock = VirtualClock()
    pm = AcpiPmBlock(clock)
    pm.base = BASE
    return clock, pm


def test_timer_carry_sets_tmr_sts_and_raises_the_sci_when_enabled():
    clock, pm = make()
    pm.io_write(EN, 2, 0x0001)  # TMR_EN
    clock.ns = MSB_PERIOD_NS - 1000
    pm.poll()
    assert not pm.sci.level and pm.io_read(STS, 2) & 1 == 0
    clock.ns = MSB_PERIOD_NS
    pm.poll()
    assert pm.sci.level and pm.io_read(STS, 2) & 1
    pm.io_write(STS, 2, 0x0001)  # write 1 to clear
    assert not pm.sci.level and pm.io_read(STS, 2) & 1 == 0
    clock.ns = 2 * MSB_PERIOD_NS  # bit 23 changes back: again
    pm.poll()
    assert pm.sci.level


def test_status_without_its_enable_raises_no_sci():
    clock, pm = make()
    clock.ns = MSB_PERIOD_NS
    pm.poll()
    assert pm.io_read(STS, 2) & 1 and not pm.sci.level
    pm.io_write(EN, 2, 0x0001)  # enabling with the status set raises it
    assert pm.sci.level


def test_next_event_is_the_next_carry_when_enabled():
    _, pm = make()
    assert pm.next_event_ns() is None
    pm.io_write(EN, 2, 0x0001)
    assert pm.next_event_ns() == MSB_PERIOD_NS
