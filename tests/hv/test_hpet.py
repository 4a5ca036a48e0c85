"""The HPET against the IA-PC HPET specification 1.0a and QEMU's configuration of it.

Expected values: the capabilities register of a 3-timer, 64-bit, legacy-
capable HPET from vendor 0x8086 ticking every 10,000,000 fs (QEMU's), a
100 MHz main counter, comparator matches (one-shot, periodic as Linux's
``hpet_set_periodic`` programs it, level with the status register), and the
legacy replacement route (timer 0 -> IRQ0, timer 1 -> IRQ8).
"""

from __future__ import annotations

from sevx86.hv.clock import VirtualClock
from sevx86.hv.devices.hpet import Hpet

CAP, CONF, STS, CNT = 0x000, 0x010, 0x020, 0x0F0
T0_CFG, T0_CMP, T1_CFG, T1_CMP = 0x100, 0x108, 0x120, 0x128
ENABLE, LEGACY = 1, 2
TN_LEVEL, TN_ENB, TN_PERIODIC, TN_SETVAL, TN_32 = 1 << 1, 1 << 2, 1 << 3, 1 << 6, 1 << 8


class Lines:
    def __init__(self) -> None:
        self.rises: dict[int, int] = {}
        self.level: dict[int, bool] = {}

    def __call__(self, gsi: int, level: bool) -> None:
        if level and not self.level.get(gsi, False):
            self.rises[gsi] = self.rises.get(gsi, 0) + 1
        self.level[gsi] = level


def make() -> tuple[VirtualClock, Hpet, Lines, list[bool]]:
    clock, lines, legacy = VirtualClock(), Lines(), []
    return clock, Hpet(clock, lines, legacy.append), lines, legacy


def test_capabilities_as_qemu_reports_them():
    _, hpet, _, _ = make()
    assert hpet.mmio_read(CAP, 8) == 0x0098_9680_8086_A201
    assert hpet.mmio_read(CAP, 4) == 0x8086_A201
    assert hpet.mmio_read(CAP + 4, 4) == 10_000_000  # fs per tick
    cfg = hpet.mmio_read(T0_CFG, 8)
    assert cfg == (0x4 << 32) | (1 << 5) | (1 << 4)  # route cap IOAPIC 2, 64-bit, periodic cap


def test_main_counter_runs_at_100_mhz_only_when_enabled():
    clock, hpet, _, _ = make()
    clock.ns = 5000
    assert hpet.mmio_read(CNT, 8) == 0
    hpet.mmio_write(CONF, 4, ENABLE)
    clock.ns = 5000 + 1_000_000
    assert hpet.mmio_read(CNT, 8) == 100_000
    hpet.mmio_write(CNT, 8, 7)  # ignored while running
    hpet.mmio_write(CONF, 4, 0)
    clock.ns += 1_000_000
    assert hpet.mmio_read(CNT, 8) == 100_000  # halted
    hpet.mmio_write(CNT, 4, 42)
    assert hpet.mmio_read(CNT, 8) == 42


def test_one_shot_comparator_fires_once_on_its_route():
    clock, hpet, lines, _ = make()
    hpet.mmio_write(T0_CFG, 4, TN_ENB | 2 << 9)  # route to GSI 2
    hpet.mmio_write(T0_CMP, 8, 1000)
    hpet.mmio_write(CONF, 4, ENABLE)
    clock.ns = 9_990
    hpet.poll()
    assert lines.rises == {}
    clock.ns = 10_000
    hpet.poll()
    assert lines.rises == {2: 1} and not lines.level[2]  # an edge: pulsed
    clock.ns = 50_000
    hpet.poll()
    assert lines.rises == {2: 1}


def test_periodic_timer_programmed_as_linux_does():
    clock, hpet, lines, _ = make()
    hpet.mmio_write(CONF, 4, ENABLE | LEGACY)
    delta = 100_000  # 1 ms
    now = hpet.mmio_read(CNT, 4)
    hpet.mmio_write(T0_CFG, 4, TN_ENB | TN_PERIODIC | TN_SETVAL | TN_32)
    hpet.mmio_write(T0_CMP, 4, now + delta)
    hpet.mmio_write(T0_CMP, 4, delta)  # the second write sets the period
    for ms in range(1, 11):
        clock.ns = ms * 1_000_000
        hpet.poll()
    assert lines.rises == {0: 10}  # legacy route: timer 0 on IRQ0
    assert hpet.mmio_read(T0_CMP, 4) == 11 * delta


def test_level_timer_holds_its_line_until_the_status_bit_is_cleared():
    clock, hpet, lines, _ = make()
    hpet.mmio_write(T1_CFG, 4, TN_ENB | TN_LEVEL | 2 << 9)
    hpet.mmio_write(T1_CMP, 8, 10)
    hpet.mmio_write(CONF, 4, ENABLE)
    clock.ns = 100
    hpet.poll()
    assert lines.level[2] and hpet.mmio_read(STS, 4) == 0b10
    hpet.mmio_write(STS, 4, 0b10)
    assert not lines.level[2] and hpet.mmio_read(STS, 4) == 0


def test_legacy_replacement_routes_timer1_to_irq8_and_tells_the_platform():
    clock, hpet, lines, legacy = make()
    hpet.mmio_write(CONF, 4, ENABLE | LEGACY)
    assert legacy == [True]
    hpet.mmio_write(T1_CFG, 4, TN_ENB)
    hpet.mmio_write(T1_CMP, 8, 50)
    clock.ns = 500
    hpet.poll()
    assert lines.rises == {8: 1}
    hpet.mmio_write(CONF, 4, ENABLE)
    assert legacy == [True, False]


def test_a_comparator_written_in_the_past_does_not_fire_until_it_wraps():
    clock, hpet, lines, _ = make()
    hpet.mmio_write(CONF, 4, ENABLE)
    hpet.mmio_write(T0_CFG, 4, TN_ENB | TN_32 | 2 << 9)
    clock.ns = 10_000  # counter 1000
    hpet.mmio_write(T0_CMP, 4, 500)
    clock.ns = 20_000
    hpet.poll()
    assert lines.rises == {}
    assert hpet.next_event_ns() == 20_000 + ((500 - 2000) % (1 << 32)) * 10
