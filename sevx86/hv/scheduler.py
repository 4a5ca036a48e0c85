"""Who runs when: a deterministic scheduler (the default) and an opt-in parallel one.

Both drive a ``RunTarget`` (``sevx86.hv.run``; the ``Hypervisor`` is one)
and nothing else of it: before each VMRUN the target prepares the entry
(injects what the vCPU can take); after it, the target handles the exit.
They differ in how vCPUs share the host.

``DeterministicScheduler(seed=0, quantum=..., jitter=...)``
    One vCPU at a time, in slices counted in guest instructions (Unicorn
    counts them exactly). Each round visits the runnable vCPUs in an order
    drawn from ``random.Random(seed)``, and each slice's length is drawn from
    the same generator (``quantum`` +/- ``jitter``). Nothing else decides:
    no wall clock, no thread timing; the TSC is virtual
    (``sevx86.hv.clock``). So the same guest, host and seed give the same
    sequence of slices, exits and trace events, every time; another seed
    gives another (still legal) interleaving -- a cheap way to shake out
    races. Memory is sequentially consistent by construction: one vCPU
    executes at a time and each slice ends at an instruction boundary.

    A guest with one vCPU is not sliced: ``max_instructions`` (if any) is
    the only bound, as before. With several, ``max_instructions`` bounds
    what one vCPU may run without a real exit (summed over its slices).
    Slicing is per engine for the whole run: Unicorn drops every translated
    block when a vCPU switches between counted and uncounted runs.

    Cost (benchmarks/bench_smp.py): counting is what makes this mode slow --
    Unicorn calls a counting hook before every instruction, about 7x slower
    on a tight loop; a slice end (an INTR exit with the VMSA sealed under
    SEV-ES) costs only ~20 us.

``ParallelScheduler()``
    One host thread per vCPU: guest code runs concurrently (Unicorn releases
    the GIL in ``emu_start``); every exit is handled under one lock, so the
    hypervisor itself stays single-threaded. It switches the machine to its
    parallel mode first (``HostView.enable_parallel``: C=0 accesses through
    callbacks instead of shadow pages, stop-the-world for cross-vCPU code
    writes, and LOCK-prefixed instructions executed with every other vCPU
    stopped -- see ``sevx86.cpu.parallel`` for why, and for its known hole:
    atomicity is not yet guaranteed). Not deterministic. Use the
    deterministic scheduler when correctness matters more than speed.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from sevx86.hv.run import RunReason, RunTarget
from sevx86.vmexit import StopReason

DEFAULT_QUANTUM = 200_000
DEFAULT_JITTER = 0.5


class Scheduler(Protocol):
    """Runs the vCPUs of one ``RunTarget`` until it is ``done``."""

    lock: AbstractContextManager  # held while the host changes vCPU state

    def run(self, hv: RunTarget, deadline: float | None, max_instructions: int | None) -> int:
        """Run until the target records a result; return the number of exits."""
        ...

    def wake(self, hv: RunTarget, index: int) -> None:
        """vCPU ``index`` may have become runnable (or has an event to take)."""
        ...


class DeterministicScheduler:
    """Seeded round-robin slices, one vCPU at a time (see the module docstring)."""

    def __init__(
        self,
        seed: int = 0,
        *,
        quantum: int = DEFAULT_QUANTUM,
        jitter: float = DEFAULT_JITTER,
        shuffle: bool = True,
    ):
        if quantum < 1 or not 0 <= jitter < 1:
            raise ValueError("quantum must be >= 1 and jitter in [0, 1)")
        self.seed = seed
        self.quantum = quantum
        self.jitter = jitter
        self.shuffle = shuffle
        self.lock: AbstractContextManager = nullcontext()
        self._rng = random.Random(seed)
        self._order: list[int] = []
        self._streak: dict[int, int] = {}

    def wake(self, hv: RunTarget, index: int) -> None:
        """Nothing to do: the next round looks at every vCPU again."""

    def _slice(self) -> int:
        spread = int(self.quantum * self.jitter)
        if not spread:
            return self.quantum
        return self._rng.randint(self.quantum - spread, self.quantum + spread)

    def _round(self, hv: RunTarget) -> list[int]:
        order = []
        for index in range(len(hv.vcpus)):
            hv.wake_on_event(index)
            if hv.runnable(index):
                order.append(index)
        if self.shuffle:
            self._rng.shuffle(order)
        return order

    def run(self, hv: RunTarget, deadline: float | None, max_instructions: int | None) -> int:
        sliced = len(hv.vcpus) > 1
        exits = 0
        while not hv.done:
            if not self._order:
                self._order = self._round(hv)
                if not self._order:
                    hv.no_runnable_vcpu()
                    break
            index = self._order.pop(0)
            hv.wake_on_event(index)
            if not hv.runnable(index):
                continue  # an exit earlier in this round parked it
            vcpu = hv.vcpus[index]
            remaining = None
            if deadline is not None:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    hv.end(RunReason.TIMEOUT, "wall-clock limit reached", vcpu=index)
                    break
            hv.prepare_entry(index)
            budget = self._slice() if sliced else max_instructions
            exit = vcpu.vmrun(timeout=remaining, max_instructions=budget)
            exits += 1
            if sliced and exit.stop is StopReason.INSTRUCTION_LIMIT:
                # The end of a slice: a preemption, not the user's limit.
                hv.preempted(index, exit)
                streak = self._streak.get(index, 0) + (budget or 0)
                self._streak[index] = streak
                if max_instructions and streak >= max_instructions:
                    hv.end(
                        RunReason.INSTRUCTION_LIMIT,
                        f"{streak} instructions without an exit",
                        vcpu=index,
                    )
                continue
            self._streak[index] = 0
            hv.handle_exit(index, exit)
        return exits


class ParallelScheduler:
    """One thread per vCPU; exits are handled one at a time under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)
        self._running: set[int] = set()
        self._exits = 0

    def wake(self, hv: RunTarget, index: int) -> None:
        with self.lock:
            self._cond.notify_all()
            if index in self._running:
                # A running vCPU learns about a new event only at an exit: kick it
                # out (KVM kicks the physical CPU with an IPI).
                hv.vcpus[index].kick()

    def run(self, hv: RunTarget, deadline: float | None, max_instructions: int | None) -> int:
        hv.enable_parallel()
        self._exits = 0
        threads = [
            threading.Thread(
                target=self._vcpu_thread,
                args=(hv, v.index, deadline, max_instructions),
                name=f"vcpu{v.index}",
                daemon=True,
            )
            for v in hv.vcpus
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self._exits

    def _finish(self, hv: RunTarget) -> None:
        """A result is in: stop every vCPU still running guest code."""
        for i in list(self._running):
            hv.vcpus[i].kick()
        self._cond.notify_all()

    def _vcpu_thread(
        self, hv: RunTarget, index: int, deadline: float | None, max_instructions: int | None
    ) -> None:
        vcpu = hv.vcpus[index]
        while True:
            with self.lock:
                while not hv.done and not self._may_enter(hv, index):
                    if hv.dead(index):
                        return
                    if not self._running and not any(
                        self._may_enter(hv, i) for i in range(len(hv.vcpus))
                    ):
                        hv.no_runnable_vcpu()  # nobody runs and nobody can wake anyone
                        self._finish(hv)
                        break
                    self._cond.wait(0.05 if deadline is not None else None)
                    if deadline is not None and time.perf_counter() >= deadline:
                        hv.end(RunReason.TIMEOUT, "wall-clock limit reached", vcpu=index)
                        self._finish(hv)
                if hv.done:
                    return
                remaining = None
                if deadline is not None:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        hv.end(RunReason.TIMEOUT, "wall-clock limit reached", vcpu=index)
                        self._finish(hv)
                        return
                hv.prepare_entry(index)
                self._running.add(index)
            exit = vcpu.vmrun(timeout=remaining, max_instructions=max_instructions)
            with self.lock:
                self._running.discard(index)
                self._exits += 1
                if exit.stop is StopReason.KICKED:
                    hv.preempted(index, exit)
                elif not hv.done:
                    hv.handle_exit(index, exit)
                self._cond.notify_all()
                if hv.done:
                    self._finish(hv)
                    return

    @staticmethod
    def _may_enter(hv: RunTarget, index: int) -> bool:
        hv.wake_on_event(index)
        return hv.runnable(index)


SCHEDULERS = ("deterministic", "parallel")


def make_scheduler(
    name: str = "deterministic", *, seed: int = 0, quantum: int | None = None
) -> Scheduler:
    """A scheduler from command-line style options (``--scheduler``, ``--seed``, ``--quantum``)."""
    if name == "deterministic":
        return DeterministicScheduler(seed, quantum=quantum or DEFAULT_QUANTUM)
    if name == "parallel":
        return ParallelScheduler()
    raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, not {name!r}")


__all__ = [
    "DeterministicScheduler",
    "ParallelScheduler",
    "SCHEDULERS",
    "Scheduler",
    "make_scheduler",
]
