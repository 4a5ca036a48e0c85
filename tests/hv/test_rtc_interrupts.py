"""The MC146818 RTC's periodic, update and alarm interrupts on IRQ8 (MC146818A data sheet).

Expected values: register A RS=6 is 1024 Hz and RS=15 is 2 Hz (the data
sheet's periodic rate table for the 32.768 kHz time base); register C bits
IRQF 0x80, PF 0x40, AF 0x20, UF 0x10 -- flags set whatever B enables, IRQF
only for enabled ones, all cleared by reading C.
"""

from __future__ import annotations

from sevx86.hv.clock import VirtualClock
from sevx86.hv.devices.cmos import CmosRtc

MS = 1_000_000
S = 1_000_000_000


def make(periodic: bool = True) -> tuple[VirtualClock, CmosRtc]:
    clock = VirtualClock()
    rtc = CmosRtc(clock)  # 2024-01-01 00:00:00 UTC at ns 0
    if not periodic:
        wr(rtc, 0x0A, 0x20)  # RS=0: no periodic flag (the reset value has RS=6, 1024 Hz)
    return clock, rtc


def wr(rtc: CmosRtc, reg: int, value: int) -> None:
    rtc.io_write(0x70, 1, reg)
    rtc.io_write(0x71, 1, value)


def rd(rtc: CmosRtc, reg: int) -> int:
    rtc.io_write(0x70, 1, reg)
    return rtc.io_read(0x71, 1)


def test_periodic_interrupt_at_1024_hz_until_register_c_is_read():
    clock, rtc = make()
    wr(rtc, 0x0A, 0x26)  # DV=010, RS=6
    wr(rtc, 0x0B, 0x02 | 0x40)  # 24h, PIE
    clock.ns = S // 1024 - 1
    rtc.poll()
    assert not rtc.irq.level
    clock.ns = -(-S // 1024)
    rtc.poll()
    assert rtc.irq.level
    assert rd(rtc, 0x0C) == 0x80 | 0x40
    assert not rtc.irq.level
    assert rd(rtc, 0x0C) == 0


def test_flags_are_set_without_their_enable_but_no_interrupt():
    clock, rtc = make()
    wr(rtc, 0x0A, 0x26)
    clock.ns = 2 * MS
    rtc.poll()
    assert not rtc.irq.level
    assert rd(rtc, 0x0C) == 0x40  # PF, no IRQF


def test_rate_select_15_is_2_hz():
    clock, rtc = make()
    wr(rtc, 0x0A, 0x2F)
    wr(rtc, 0x0B, 0x42)
    clock.ns = 499 * MS
    rtc.poll()
    assert not rtc.irq.level
    clock.ns = 500 * MS
    rtc.poll()
    assert rtc.irq.level


def test_update_ended_interrupt_every_second():
    clock, rtc = make(periodic=False)
    wr(rtc, 0x0B, 0x02 | 0x10)  # UIE
    clock.ns = S - 1
    rtc.poll()
    assert not rtc.irq.level
    clock.ns = S
    rtc.poll()
    assert rd(rtc, 0x0C) == 0x80 | 0x10
    assert rd(rtc, 0x00) == 0x01  # and the seconds register moved to 01


def test_alarm_fires_when_the_time_matches():
    clock, rtc = make(periodic=False)
    wr(rtc, 0x01, 0x02)  # seconds alarm 02 (BCD)
    wr(rtc, 0x03, 0x00)
    wr(rtc, 0x05, 0x00)
    wr(rtc, 0x0B, 0x02 | 0x20)  # AIE
    clock.ns = S
    rtc.poll()
    assert not rtc.irq.level
    assert rd(rtc, 0x0C) == 0x10  # UF only: 00:00:01 is not the alarm
    clock.ns = 2 * S
    rtc.poll()
    assert rtc.irq.level
    assert rd(rtc, 0x0C) == 0x80 | 0x20 | 0x10


def test_dont_care_alarm_bytes_match_every_second():
    clock, rtc = make(periodic=False)
    for reg in (0x01, 0x03, 0x05):
        wr(rtc, reg, 0xFF)
    wr(rtc, 0x0B, 0x02 | 0x20)
    for second in (1, 2, 3):
        clock.ns = second * S
        rtc.poll()
        assert rd(rtc, 0x0C) & 0xA0 == 0xA0


def test_no_updates_while_set_is_held():
    clock, rtc = make(periodic=False)
    wr(rtc, 0x0B, 0x80 | 0x02 | 0x10)  # SET, UIE
    clock.ns = 3 * S
    rtc.poll()
    assert rd(rtc, 0x0C) == 0


def test_next_event_is_the_next_enabled_interrupt():
    clock, rtc = make()
    assert rtc.next_event_ns() is None
    wr(rtc, 0x0B, 0x02 | 0x10)
    assert rtc.next_event_ns() == S
    wr(rtc, 0x0A, 0x26)
    wr(rtc, 0x0B, 0x02 | 0x10 | 0x40)
    assert rtc.next_event_ns() == -(-S // 1024)
