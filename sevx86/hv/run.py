"""The run loop's contract: what a scheduler drives, and what a run returns.

KVM's ``vcpu_enter_guest`` is one loop: check what the vCPU may do, inject
pending events, enter, handle the exit, repeat until something ends the run.
Here the loop is split the same way between two parties that only meet
through this module:

* a **scheduler** (``sevx86.hv.scheduler``) decides which vCPU enters when,
  on which host thread, and for how many guest instructions;
* a **run target** (``RunTarget``, implemented by ``Hypervisor``) answers
  what is runnable, prepares an entry, handles an exit, and records how the
  run ended.

``RunReason``, ``Termination`` and ``RunResult`` live here so both sides (and
the CLI) import them without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sevx86.machine import HostVcpu
    from sevx86.vmexit import VmExit


class RunReason(StrEnum):
    """Why ``Hypervisor.run`` returned."""

    EXIT_STATUS = "exit-status"  # the guest wrote its status to the debug-exit port
    TERMINATED = "terminated"  # a termination request (or the hypervisor refused to go on)
    SHUTDOWN = "shutdown"  # triple fault: the vCPU is dead
    VMRUN_FAILED = "vmrun-failed"  # VMRUN refused the guest state (e.g. VMSA check failed)
    HALTED = "halted"  # every vCPU halted (or parked) with nothing to wake it
    TIMEOUT = "timeout"  # the wall-clock limit
    INSTRUCTION_LIMIT = "instruction-limit"  # the per-entry instruction budget
    EMULATION_ERROR = "emulation-error"  # the CPU engine (or the MMIO decoder) gave up
    HYPERVISOR_ERROR = "hypervisor-error"  # a bug in a handler or hook (see detail)
    STOPPED = "stopped"  # a device or hook ended the run (a milestone reached, a reset)
    POWERED_OFF = "powered-off"  # the guest switched the machine off (ACPI S5): a clean end


@dataclass(frozen=True)
class Termination:
    """Who ended the guest and why."""

    by: str  # "guest" (it asked) or "hypervisor" (it could not go on)
    reason_set: int | None = None
    reason_code: int | None = None
    detail: str = ""


@dataclass
class RunResult:
    """The outcome of ``Hypervisor.run``."""

    reason: RunReason
    exit_status: int | None = None
    detail: str = ""
    vcpu: int | None = None
    termination: Termination | None = None
    console: str = ""  # all guest output (serial + debug console), decoded
    outputs: dict[str, bytes] = field(default_factory=dict)  # per device
    counters: dict[str, int] = field(default_factory=dict)  # per exit kind
    exits: int = 0  # VMRUNs that returned in this run
    elapsed: float = 0.0
    # vCPUs that died while others went on (failed VMRUN): index -> how.
    dead_vcpus: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The guest reported success (debug-exit status 0)."""
        return self.reason is RunReason.EXIT_STATUS and self.exit_status == 0


class RunTarget(Protocol):
    """The hypervisor's side of the run loop, as a scheduler sees it.

    A scheduler calls these with its lock held (``Scheduler.lock``), except
    ``HostVcpu.vmrun`` itself, which the parallel scheduler runs unlocked.
    """

    @property
    def vcpus(self) -> Sequence[HostVcpu]:
        """The vCPUs, by index."""
        ...

    @property
    def done(self) -> bool:
        """The run has a result: every scheduler stops entering vCPUs."""
        ...

    def wake_on_event(self, index: int) -> None:
        """A halted vCPU with an event it can take becomes runnable (KVM vcpu_block)."""
        ...

    def runnable(self, index: int) -> bool:
        """May vCPU ``index`` enter now? Pure: changes nothing."""
        ...

    def dead(self, index: int) -> bool:
        """vCPU ``index`` can never run again (shutdown, failed VMRUN)."""
        ...

    def prepare_entry(self, index: int) -> None:
        """Before VMRUN: inject what the vCPU can take (NMI first, then interrupts)."""
        ...

    def handle_exit(self, index: int, exit: VmExit) -> None:
        """One exit of vCPU ``index``: the handler table, hooks, and what it decides."""
        ...

    def preempted(self, index: int, exit: VmExit) -> None:
        """The scheduler took the CPU back (slice end, kick): note the interrupt state only."""
        ...

    def end(self, reason: RunReason, detail: str, *, vcpu: int | None = None) -> None:
        """Record how the run ended (the first reason recorded wins)."""
        ...

    def no_runnable_vcpu(self) -> None:
        """Nobody can run and nothing can wake anyone: end the run and say why."""
        ...

    def enable_parallel(self) -> None:
        """Let the vCPUs run on several host threads from now on."""
        ...


__all__ = ["RunReason", "RunResult", "RunTarget", "Termination"]
