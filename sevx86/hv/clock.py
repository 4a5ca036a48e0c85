"""The guest's time stamp counter as the hypervisor reports it.

RDTSC, RDTSCP and RDMSR(TSC) are intercepted (KVM-like defaults in
``sevx86.hv.hypervisor``), so the hypervisor decides what time it is. The
default clock is *virtual*: it starts at 0 and advances by a fixed number of
cycles on every read, so a run -- and its trace -- is the same every time. A
wall-clock source is available for users who prefer it.
"""

from __future__ import annotations

import time

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


__all__ = ["TscClock"]
