"""Time as the hypervisor reports it: the guest's TSC, and the platform clock.

RDTSC, RDTSCP and RDMSR(TSC) are intercepted (KVM-like defaults in
``sevx86.hv.hypervisor``), so the hypervisor decides what time it is. The
default clock is *virtual*: it starts at 0 and advances by a fixed number of
cycles on every read, so a run -- and its trace -- is the same every time. A
wall-clock source is available for users who prefer it.
"""

from __future__ import annotations

import time
from typing import Protocol

_U64 = (1 << 64) - 1


class TscClock:
    """A 64-bit TSC: deterministic by default (``step`` cycles per read)."""

    def __init__(self, *, step: int = 1000, wall_hz: int | None = None):
        self.step = step
        self.wall_hz = wall_hz  # e.g. 2_000_000_000 for a 2 GHz wall-clock TSC
        self.offset = 0
        self._virtual = 0
        self._t0 = time.perf_counter()

    def read(self) -> int:
        if self.wall_hz is not None:
            ticks = int((time.perf_counter() - self._t0) * self.wall_hz)
        else:
            self._virtual += self.step
            ticks = self._virtual
        return (ticks + self.offset) & _U64

    def write(self, value: int) -> None:
        """WRMSR(TSC): the guest sets its counter (the next read continues from it)."""
        now = self.read()
        self.offset = (self.offset + value - now) & _U64


class TimeSource(Protocol):
    """What a timer device reads: platform time in nanoseconds, never going back."""

    def now_ns(self) -> int: ...


class VirtualClock:
    """Platform time in nanoseconds for the timer devices (ACPI PM timer, RTC, APIC timer).

    Deterministic: it starts at 0 and moves only when ``advance`` is called
    -- a QEMU-like machine advances it by ``step_ns`` at every exit, so time
    passes with the guest's activity (a polling loop on a timer sees it move
    with each read) and a run and its trace are the same every time.
    """

    def __init__(self, *, step_ns: int = 10_000):
        self.step_ns = step_ns
        self.ns = 0

    def advance(self, ns: int | None = None) -> None:
        self.ns += self.step_ns if ns is None else ns

    def now_ns(self) -> int:
        return self.ns


__all__ = ["TimeSource", "TscClock", "VirtualClock"]
