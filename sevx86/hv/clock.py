"""Time as the hypervisor reports it: one platform clock, and the guest's TSC derived from it.

RDTSC, RDTSCP and RDMSR(TSC) are intercepted (KVM-like defaults in
``sevx86.hv.hypervisor``), and every timer device (PIT, HPET, ACPI PM timer,
RTC, local APIC timer) reads a ``TimeSource``: so the hypervisor decides
what time it is, and all of them agree. Two kinds of platform clock, as
QEMU has them:

* ``RealtimeClock`` -- guest time follows the host's monotonic clock (QEMU
  without ``-icount``): a 5-second countdown takes 5 seconds. An idle guest
  (every vCPU halted) sleeps on the host until its next timer is due.
* ``VirtualClock`` -- deterministic (QEMU ``-icount``): guest time moves only
  when the machine advances it, by ``step_ns`` at every exit, so a run and
  its trace are the same every time. When every vCPU is halted it warps to
  the next timer deadline (QEMU ``-icount sleep=off``), so a guest waiting
  for a timer costs no wall time. QEMU counts instructions; sevx86's engine
  does not report retired instructions yet, so the step is per exit: with
  ``--clock icount:SHIFT`` each exit is 2**SHIFT ns. (When an exit reports
  ``instructions``, ``on_exit`` charges 2**SHIFT ns for each of them.)

``TscClock`` is the guest's 64-bit TSC: either derived from a platform clock
at ``hz`` (what ``QemuPc`` wires), or on its own -- ``step`` cycles per read,
deterministic, or a wall-clock TSC -- for guests run without the pc devices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from sevx86.arch.bits import U64_MASK as _U64

NS_PER_S = 1_000_000_000
DEFAULT_STEP_NS = 10_000
# The guest's TSC rate: the platform clock's nanoseconds times 2 (a 2 GHz part).
TSC_HZ = 2_000_000_000
MAX_SHIFT = 40


class TimeSource(Protocol):
    """What a timer device reads: platform time in nanoseconds, never going back."""

    def now_ns(self) -> int: ...


class ClockMode(StrEnum):
    REALTIME = "realtime"
    ICOUNT = "icount"


@dataclass(frozen=True)
class ClockChoice:
    """What ``--clock realtime|icount[:SHIFT]`` asked for."""

    mode: ClockMode
    shift: int | None = None

    @property
    def step_ns(self) -> int:
        return DEFAULT_STEP_NS if self.shift is None else 1 << self.shift

    @classmethod
    def parse(cls, text: str) -> ClockChoice:
        """``realtime``, ``icount`` or ``icount:SHIFT`` (0..40); ValueError with the reason."""
        name, sep, arg = text.partition(":")
        if name == ClockMode.REALTIME and not sep:
            return cls(ClockMode.REALTIME)
        if name == ClockMode.ICOUNT:
            if not sep:
                return cls(ClockMode.ICOUNT)
            if arg.isdigit() and int(arg) <= MAX_SHIFT:
                return cls(ClockMode.ICOUNT, int(arg))
            raise ValueError(f"icount:{arg}: SHIFT must be a number 0..{MAX_SHIFT}")
        raise ValueError(f"{text!r} is not realtime, icount or icount:SHIFT")

    def make(self) -> VirtualClock | RealtimeClock:
        if self.mode is ClockMode.REALTIME:
            return RealtimeClock()
        return VirtualClock(step_ns=self.step_ns)


class VirtualClock:
    """Deterministic platform time in nanoseconds: moved by the machine, never by the host.

    It starts at 0; ``advance`` (a QEMU-like machine calls it at every exit)
    adds ``step_ns``, so a guest polling a timer sees it move with each read;
    ``idle_until`` warps over the time a halted machine would wait.
    """

    realtime = False

    def __init__(self, *, step_ns: int = DEFAULT_STEP_NS):
        self.step_ns = step_ns
        self.ns = 0
        self.warped_ns = 0  # time skipped by idle warps (reported, and for tests)

    def advance(self, ns: int | None = None) -> None:
        self.ns += self.step_ns if ns is None else ns

    def on_exit(self, instructions: int | None = None) -> None:
        """One exit: ``step_ns``, or ``step_ns`` per instruction when the exit reports them."""
        self.advance(None if instructions is None else instructions * self.step_ns)

    def idle_until(self, deadline_ns: int) -> None:
        """Every vCPU is halted: jump to the next timer deadline (QEMU icount sleep=off)."""
        if deadline_ns > self.ns:
            self.warped_ns += deadline_ns - self.ns
            self.ns = deadline_ns

    def now_ns(self) -> int:
        return self.ns


class RealtimeClock:
    """Platform time from the host's monotonic clock, from 0 at creation."""

    realtime = True

    def __init__(self) -> None:
        self._t0 = time.monotonic_ns()
        self.slept_ns = 0

    def advance(self, ns: int | None = None) -> None:
        """Time passes by itself: an exit does not move it."""

    def on_exit(self, instructions: int | None = None) -> None:
        """Time passes by itself: an exit does not move it."""

    def idle_until(self, deadline_ns: int) -> None:
        """Every vCPU is halted: sleep on the host until the deadline (a halted CPU waits)."""
        wait = deadline_ns - self.now_ns()
        if wait > 0:
            time.sleep(wait / NS_PER_S)
            self.slept_ns += wait

    def now_ns(self) -> int:
        return time.monotonic_ns() - self._t0


class TscClock:
    """A 64-bit TSC: from a platform clock at ``hz``, or on its own (``step`` cycles per read)."""

    def __init__(
        self,
        *,
        step: int = 1000,
        wall_hz: int | None = None,
        source: TimeSource | None = None,
        hz: int = TSC_HZ,
    ):
        self.step = step
        self.wall_hz = wall_hz  # e.g. 2_000_000_000 for a 2 GHz wall-clock TSC
        self.source = source
        self.hz = hz
        self.offset = 0
        self._virtual = 0
        self._t0 = time.perf_counter()

    def read(self) -> int:
        if self.source is not None:
            ticks = self.source.now_ns() * self.hz // NS_PER_S
        elif self.wall_hz is not None:
            ticks = int((time.perf_counter() - self._t0) * self.wall_hz)
        else:
            self._virtual += self.step
            ticks = self._virtual
        return (ticks + self.offset) & _U64

    def write(self, value: int) -> None:
        """WRMSR(TSC): the guest sets its counter (the next read continues from it)."""
        now = self.read()
        self.offset = (self.offset + value - now) & _U64


__all__ = [
    "ClockChoice",
    "ClockMode",
    "DEFAULT_STEP_NS",
    "RealtimeClock",
    "TSC_HZ",
    "TimeSource",
    "TscClock",
    "VirtualClock",
]
