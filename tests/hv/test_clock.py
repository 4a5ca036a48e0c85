"""The platform clock: ``--clock`` parsing, the virtual clock's idle warp, a TSC derived from it."""

from __future__ import annotations

import pytest

from sevx86.hv.clock import (
    ClockChoice,
    ClockMode,
    RealtimeClock,
    TscClock,
    VirtualClock,
)


def test_clock_choices_parse_as_qemu_spells_them():
    assert ClockChoice.parse("realtime") == ClockChoice(ClockMode.REALTIME)
    assert ClockChoice.parse("icount") == ClockChoice(ClockMode.ICOUNT)
    assert ClockChoice.parse("icount:7").step_ns == 128
    for bad in ("wall", "icount:", "icount:x", "icount:99", "realtime:3"):
        with pytest.raises(ValueError):
            ClockChoice.parse(bad)


def test_virtual_clock_steps_per_exit_and_warps_forward_only():
    clock = VirtualClock(step_ns=100)
    clock.on_exit()
    clock.on_exit(instructions=3)  # an exit that reports instructions: a step each
    assert clock.now_ns() == 400
    clock.idle_until(1000)
    clock.idle_until(10)  # never backwards
    assert clock.now_ns() == 1000 and clock.warped_ns == 600


def test_tsc_from_the_platform_clock_runs_at_2_ghz_and_keeps_a_guest_write():
    clock = VirtualClock()
    tsc = TscClock(source=clock)
    clock.ns = 1_000_000_000
    assert tsc.read() == 2_000_000_000
    tsc.write(5)
    clock.ns += 1000
    assert tsc.read() == 5 + 2000


def test_realtime_clock_follows_the_host_and_sleeps_to_a_deadline():
    clock = RealtimeClock()
    start = clock.now_ns()
    clock.idle_until(start + 20_000_000)  # 20 ms
    assert clock.now_ns() >= start + 20_000_000  # a lower bound only: never a speed limit
    slept = clock.slept_ns
    clock.idle_until(0)  # in the past: no sleep
    assert clock.slept_ns == slept
