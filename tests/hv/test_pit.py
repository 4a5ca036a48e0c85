"""The 8254 PIT and port 0x61, against the Intel 8254 data sheet's mode descriptions.

Expected values are worked out from the data sheet: counter N loaded, the
count after t clocks of 1.193182 MHz, where OUT is in each mode, what the
read-back status byte holds. The clock is set to the exact nanosecond of a
given clock tick, so each expectation is a whole number of PIT clocks.
"""

from __future__ import annotations

import math

from sevx86.arch.pit import PIT_HZ, REFRESH_PERIOD_NS
from sevx86.hv.clock import VirtualClock
from sevx86.hv.devices.irq import IrqLine
from sevx86.hv.devices.pit import Pit8254, Port61

CH0, CH2, CTRL, P61 = 0x40, 0x42, 0x43, 0x61


def at_tick(clock: VirtualClock, start_ns: int, ticks: int) -> None:
    """Move the clock to the first nanosecond at which ``ticks`` PIT clocks have passed."""
    clock.ns = start_ns + math.ceil(ticks * 1_000_000_000 / PIT_HZ)


def make() -> tuple[VirtualClock, Pit8254, Port61, list[bool]]:
    clock = VirtualClock()
    irq0 = IrqLine()
    levels: list[bool] = []
    irq0.connect(levels.append)
    pit = Pit8254(clock, irq0)
    return clock, pit, Port61(pit, clock), levels


def read16(pit: Pit8254, port: int) -> int:
    lsb = pit.io_read(port, 1)
    return pit.io_read(port, 1) << 8 | lsb


def test_mode0_counts_down_from_the_loaded_count_and_out2_rises_at_terminal_count():
    # Linux quick_pit_calibrate: gate on, speaker off, ch2 mode 0 LSB/MSB, count 0xFFFF.
    clock, pit, p61, _ = make()
    p61.io_write(P61, 1, (p61.io_read(P61, 1) & ~0x02) | 0x01)
    pit.io_write(CTRL, 1, 0xB0)
    assert p61.io_read(P61, 1) & 0x20 == 0  # mode 0: OUT low after the control word
    pit.io_write(CH2, 1, 0xFF)
    pit.io_write(CH2, 1, 0xFF)
    at_tick(clock, 0, 1193)
    assert read16(pit, CH2) == 0xFFFF - 1193
    at_tick(clock, 0, 0xFFFE)
    assert p61.io_read(P61, 1) & 0x20 == 0
    at_tick(clock, 0, 0xFFFF)
    assert p61.io_read(P61, 1) & 0x20  # terminal count: OUT high ...
    at_tick(clock, 0, 0xFFFF + 100)
    assert p61.io_read(P61, 1) & 0x20  # ... and it stays high
    assert read16(pit, CH2) == (0xFFFF - (0xFFFF + 100)) & 0xFFFF  # the count wraps on


def test_msb_only_reads_decrement_every_256_clocks_as_pit_expect_msb_needs():
    clock, pit, p61, _ = make()
    p61.io_write(P61, 1, 0x01)
    pit.io_write(CTRL, 1, 0xB0)
    pit.io_write(CH2, 1, 0xFF)
    pit.io_write(CH2, 1, 0xFF)
    msbs = []
    for i in range(4):
        at_tick(clock, 0, 256 * i + 10)
        pit.io_read(CH2, 1)  # LSB
        msbs.append(pit.io_read(CH2, 1))
    assert msbs == [0xFF, 0xFE, 0xFD, 0xFC]


def test_gate_low_suspends_mode0_counting():
    clock, pit, p61, _ = make()
    p61.io_write(P61, 1, 0x01)
    pit.io_write(CTRL, 1, 0xB0)
    pit.io_write(CH2, 1, 0x00)
    pit.io_write(CH2, 1, 0x10)  # N = 0x1000
    at_tick(clock, 0, 100)
    p61.io_write(P61, 1, 0x00)  # gate low at tick 100
    at_tick(clock, 0, 900)
    assert read16(pit, CH2) == 0x1000 - 100
    resumed_at = clock.ns
    p61.io_write(P61, 1, 0x01)  # counting resumes from where it stopped
    at_tick(clock, resumed_at, 50)
    assert read16(pit, CH2) == 0x1000 - 150


def test_counter_latch_holds_the_count_until_both_bytes_are_read():
    clock, pit, _, _ = make()
    pit.io_write(CTRL, 1, 0x34)  # ch0, LSB/MSB, mode 2
    pit.io_write(CH0, 1, 0x00)
    pit.io_write(CH0, 1, 0x40)  # N = 0x4000
    at_tick(clock, 0, 0x123)
    pit.io_write(CTRL, 1, 0x00)  # latch ch0
    at_tick(clock, 0, 0x800)
    pit.io_write(CTRL, 1, 0x00)  # a second latch before reading is ignored
    assert read16(pit, CH0) == 0x4000 - 0x123
    assert read16(pit, CH0) == 0x4000 - 0x800  # unlatched: the live count


def test_readback_latches_status_then_count():
    clock, pit, _, _ = make()
    pit.io_write(CTRL, 1, 0x34)  # ch0, RW=3, mode 2, binary
    pit.io_write(CTRL, 1, 0xE2)  # read-back: status only, counter 0
    # OUT high (mode 2 after a control word), NULL COUNT (no count yet), 0x34 & 0x3F.
    assert pit.io_read(CH0, 1) == 0x80 | 0x40 | 0x34
    pit.io_write(CH0, 1, 0xE8)
    pit.io_write(CH0, 1, 0x03)  # N = 1000
    at_tick(clock, 0, 10)
    pit.io_write(CTRL, 1, 0xC2)  # read-back: count and status, counter 0
    assert pit.io_read(CH0, 1) == 0x80 | 0x34  # count loaded: NULL COUNT clear
    assert read16(pit, CH0) == 1000 - 10


def test_mode2_rate_generator_pulses_irq0_once_per_period():
    clock, pit, _, levels = make()
    pit.io_write(CTRL, 1, 0x34)
    pit.io_write(CH0, 1, 1193 & 0xFF)
    pit.io_write(CH0, 1, 1193 >> 8)
    assert levels == [True]  # mode 2: OUT high once the count is loaded
    rises = 0
    for t in [*range(0, 1193 * 10, 100), 1193 * 10]:  # poll every 100 clocks, 10 periods
        at_tick(clock, 0, t)
        before = len(levels)
        pit.poll()
        new = levels[before - 1 :]
        rises += sum(1 for a, b in zip(new, new[1:], strict=False) if b and not a)
    assert rises == 10
    # Between edges OUT is high except for the one clock where the count is 1.
    at_tick(clock, 0, 1193 * 11 - 1)
    assert not pit.channels[0].out()
    at_tick(clock, 0, 1193 * 11)
    assert pit.channels[0].out()


def test_mode3_square_wave_is_high_for_the_first_half_of_the_period():
    clock, pit, _, _ = make()
    pit.io_write(CTRL, 1, 0x36)  # ch0, RW=3, mode 3
    pit.io_write(CH0, 1, 100)
    pit.io_write(CH0, 1, 0)
    ch = pit.channels[0]
    for tick, high in ((0, True), (49, True), (50, False), (99, False), (100, True), (150, False)):
        at_tick(clock, 0, tick)
        assert ch.out() is high, tick
    at_tick(clock, 0, 10)
    assert read16(pit, CH0) == 100 - 2 * 10  # mode 3 decrements by two


def test_mode6_and_7_are_modes_2_and_3():
    _, pit, _, _ = make()
    pit.io_write(CTRL, 1, 0x3C)  # mode bits 110
    pit.io_write(CTRL, 1, 0xE2)
    assert pit.io_read(CH0, 1) & 0x0E == 2 << 1
    pit.io_write(CTRL, 1, 0x3E)  # mode bits 111
    pit.io_write(CTRL, 1, 0xE2)
    assert pit.io_read(CH0, 1) & 0x0E == 3 << 1


def test_mode1_one_shot_starts_on_the_gate_and_out_is_low_until_terminal_count():
    clock, pit, p61, _ = make()
    pit.io_write(CTRL, 1, 0xB2)  # ch2, RW=3, mode 1
    pit.io_write(CH2, 1, 50)
    pit.io_write(CH2, 1, 0)
    ch2 = pit.channels[2]
    clock.ns = 5000
    assert ch2.out()  # no trigger yet: OUT high
    p61.io_write(P61, 1, 0x01)  # gate rising edge: trigger
    at_tick(clock, 5000, 49)
    assert not ch2.out()
    at_tick(clock, 5000, 50)
    assert ch2.out()


def test_mode4_strobe_is_low_for_one_clock_at_terminal_count():
    clock, pit, _, _ = make()
    pit.io_write(CTRL, 1, 0x38)  # ch0, RW=3, mode 4
    pit.io_write(CH0, 1, 20)
    pit.io_write(CH0, 1, 0)
    ch = pit.channels[0]
    seen = []
    for tick in (19, 20, 21):
        at_tick(clock, 0, tick)
        seen.append(ch.out())
    assert seen == [True, False, True]


def test_bcd_counting():
    clock, pit, _, _ = make()
    pit.io_write(CTRL, 1, 0x31)  # ch0, RW=3, mode 0, BCD
    pit.io_write(CH0, 1, 0x00)
    pit.io_write(CH0, 1, 0x10)  # BCD 1000
    at_tick(clock, 0, 11)
    assert read16(pit, CH0) == 0x0989


def test_port61_refresh_toggle_and_writable_bits():
    clock, pit, p61, _ = make()
    p61.io_write(P61, 1, 0xFF)
    assert p61.io_read(P61, 1) & 0x0F == 0x0F
    clock.ns = 0
    first = p61.io_read(P61, 1) & 0x10
    clock.ns = REFRESH_PERIOD_NS
    assert p61.io_read(P61, 1) & 0x10 != first


def test_next_event_is_the_next_rising_edge_of_out0():
    clock, pit, _, _ = make()
    assert pit.next_event_ns() is None  # not programmed
    pit.io_write(CTRL, 1, 0x34)
    pit.io_write(CH0, 1, 1000 & 0xFF)
    pit.io_write(CH0, 1, 1000 >> 8)
    due = pit.next_event_ns()
    assert due == math.ceil(1000 * 1_000_000_000 / PIT_HZ)
    clock.ns = due
    assert pit.channels[0].take_edges() == 1
