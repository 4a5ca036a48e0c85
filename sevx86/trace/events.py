"""The trace: one ordered list of events from guest, CPU, Secure Processor and host.

Every layer reports what it did through a ``Tracer``; renderers (a readable
table, JSON Lines, a Mermaid sequence diagram) read the same events. Events
are plain data so a trace written to a file can be read back and checked.

Actors follow the seed talk's CPUID slide: ``guest`` (code and its #VC
handler), ``cpu`` (the hardware: intercepts, #VC, world switches), ``sp``
(the Secure Processor) and ``hv`` (the untrusted hypervisor).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

ACTORS = ("guest", "cpu", "sp", "hv")


class TraceKind(StrEnum):
    """Every kind of event any layer emits: the one list the CLI and renderers read.

    A ``StrEnum``, so an event's ``kind`` compares equal to its name in a
    JSON Lines file written earlier. ``tests/trace/test_kinds.py`` collects the
    kind of every emit site in ``sevx86/`` and fails on one missing here.
    """

    LAUNCH = "launch"
    LOAD = "load"
    VMRUN = "vmrun"
    VMRUN_FAILED = "vmrun-failed"
    VMSA_CHECK = "vmsa-check"
    WORLD_SWITCH = "world-switch"
    GHCB_MSR_WRITE = "ghcb-msr-write"
    CR_WRITE = "cr-write"
    CR_TRAP = "cr-trap"
    PAGING = "paging"
    VC = "vc"
    EXIT = "exit"
    EXCEPTION = "exception"
    FAST_CALL = "fast-call"
    MSR_PROTOCOL = "msr-protocol"
    GHCB_REGISTER = "ghcb-register"
    VMGEXIT = "vmgexit"
    GHCB_ANSWER = "ghcb-answer"
    GHCB_ERROR = "ghcb-error"
    INJECT = "inject"
    MMIO = "mmio"
    CONSOLE = "console"
    FW_CFG = "fw-cfg"
    PFLASH = "pflash"
    POWER = "power"
    IPI = "ipi"
    IRQ_REQUEST = "irq-request"
    NMI_REQUEST = "nmi-request"
    NMI_COMPLETE = "nmi-complete"
    AP_RESET_HOLD = "ap-reset-hold"
    APIC_ERROR = "apic-error"
    MILESTONE = "milestone"
    HALT = "halt"
    TERMINATE = "terminate"
    SHUTDOWN = "shutdown"
    VCPU_DEAD = "vcpu-dead"
    EMULATION_ERROR = "emulation-error"
    DEBUG_STOP = "debug-stop"
    RUN_END = "run-end"


KIND_NAMES = frozenset(kind.value for kind in TraceKind)

# Who usually acts (-> whom) and what the event says, for ``sevx86 trace --help``.
KIND_HELP: dict[TraceKind, tuple[str, str]] = {
    TraceKind.LAUNCH: ("hv -> sp", "LAUNCH_START / UPDATE_DATA / UPDATE_VMSA / MEASURE / FINISH"),
    TraceKind.LOAD: ("hv -> sp", "an image placed in guest memory (measured under SEV)"),
    TraceKind.VMRUN: ("hv -> cpu", "the first VMRUN"),
    TraceKind.VMRUN_FAILED: ("cpu -> hv", "VMRUN refused the guest state"),
    TraceKind.VMSA_CHECK: ("sp -> cpu", "VMSA integrity verified at VMRUN"),
    TraceKind.WORLD_SWITCH: ("cpu -> sp", "state saved to the VMSA and sealed"),
    TraceKind.GHCB_MSR_WRITE: ("guest -> cpu", "the guest writes the GHCB MSR"),
    TraceKind.CR_WRITE: ("guest -> cpu", "a control-register write (CR0, CR3; CR4 under SEV-ES)"),
    TraceKind.CR_TRAP: ("hv", "SEV-ES CR0/CR4/EFER write trap: the new value"),
    TraceKind.PAGING: ("cpu -> guest", "paging takes effect, with or without the C-bit"),
    TraceKind.VC: ("cpu -> guest", "#VC with the exit code (CPUID, IOIO, NPF, ...)"),
    TraceKind.EXIT: ("cpu -> hv", "#VMEXIT (VMGEXIT, HLT, traps; direct exits without ES)"),
    TraceKind.EXCEPTION: ("cpu -> guest", "an exception delivered through the IDT"),
    TraceKind.FAST_CALL: ("guest -> cpu", "SYSCALL/SYSENTER: number (RAX), from, entry"),
    TraceKind.MSR_PROTOCOL: ("hv -> guest", "GHCB MSR protocol request and answer, in words"),
    TraceKind.GHCB_REGISTER: ("hv -> guest", "GHCB GPA registration"),
    TraceKind.VMGEXIT: ("hv", "a VMGEXIT through the GHCB page, fields decoded"),
    TraceKind.GHCB_ANSWER: ("hv -> guest", "what the hypervisor answered"),
    TraceKind.GHCB_ERROR: ("hv -> guest", "a VMGEXIT refused (GHCB v2 error answer)"),
    TraceKind.INJECT: ("hv -> guest", "an event the hypervisor injects (#GP, NMI, interrupt)"),
    TraceKind.MMIO: ("hv", "an MMIO access decoded by the host (no SEV-ES)"),
    TraceKind.CONSOLE: ("hv", "a line of guest output (serial, debugcon) and its vCPU"),
    TraceKind.FW_CFG: ("hv", "a QEMU fw_cfg selection or DMA transfer"),
    TraceKind.PFLASH: ("hv", "a flash command (program, erase, mode change)"),
    TraceKind.POWER: ("hv", "the guest asks for power off, sleep or reset"),
    TraceKind.IPI: ("hv", "INIT, SIPI and other IPIs between vCPUs (--vcpus N)"),
    TraceKind.IRQ_REQUEST: ("hv", "an interrupt requested for a vCPU"),
    TraceKind.NMI_REQUEST: ("hv", "an NMI requested for a vCPU"),
    TraceKind.NMI_COMPLETE: ("hv", "the guest's NMI_COMPLETE: the NMI window opens"),
    TraceKind.AP_RESET_HOLD: ("hv", "an AP parked in AP reset hold (GHCB spec)"),
    TraceKind.APIC_ERROR: ("hv", "the local APIC refused a write and set an ESR bit"),
    TraceKind.MILESTONE: ("hv", "a boot milestone reached (sevx86 boot)"),
    TraceKind.HALT: ("hv", "a vCPU halted"),
    TraceKind.TERMINATE: ("hv", "a termination request, with reason set and code"),
    TraceKind.SHUTDOWN: ("cpu -> hv", "shutdown (triple fault): the vCPU is dead"),
    TraceKind.VCPU_DEAD: ("hv", "one vCPU can no longer run; the others go on"),
    TraceKind.EMULATION_ERROR: ("cpu -> hv", "the CPU engine gave up on an instruction"),
    TraceKind.DEBUG_STOP: ("cpu", "a vCPU stopped for the debugger (--gdb): why, and where"),
    TraceKind.RUN_END: ("hv", "the run ended, and why"),
}


def parse_kinds(text: str) -> frozenset[TraceKind]:
    """``"vc,msr-protocol"`` -> kinds; ``ValueError`` naming the valid ones for a bad name."""
    names = [k.strip() for k in text.split(",") if k.strip()]
    if not names:
        raise ValueError(f"no event kinds in {text!r}")
    unknown = [k for k in names if k not in KIND_NAMES]
    if unknown:
        raise ValueError(
            f"unknown event kind{'s' if len(unknown) > 1 else ''} {', '.join(unknown)};"
            f" valid kinds: {', '.join(k.value for k in TraceKind)}"
        )
    return frozenset(TraceKind(k) for k in names)


@dataclass
class TraceEvent:
    seq: int
    t: float  # seconds since the tracer started
    vcpu: int | None
    actor: str  # who acted
    kind: str  # what happened: a TraceKind value, e.g. "vc", "exit", "msr-protocol"
    summary: str  # one readable line
    target: str | None = None  # the other party, for sequence diagrams
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_jsonable, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> TraceEvent:
        return cls(**json.loads(line))


def _jsonable(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


Sink = Callable[[TraceEvent], None]


class Tracer:
    """Collects events in order and forwards each to its sinks as it happens."""

    def __init__(self, sinks: Iterable[Sink] = (), *, keep: bool = True, limit: int = 1_000_000):
        self.events: list[TraceEvent] = []
        self.sinks: list[Sink] = list(sinks)
        self.keep = keep
        self.limit = limit
        self.dropped = 0
        self.enabled = True  # False: emitters may skip building events at all
        self._seq = 0
        self._t0 = time.perf_counter()

    def emit(
        self,
        actor: str,
        kind: str,
        summary: str,
        *,
        vcpu: int | None = None,
        target: str | None = None,
        **data: Any,
    ) -> TraceEvent:
        self._seq += 1
        event = TraceEvent(
            self._seq, time.perf_counter() - self._t0, vcpu, actor, kind, summary, target, data
        )
        if self.keep:
            if len(self.events) < self.limit:
                self.events.append(event)
            else:
                self.dropped += 1
        for sink in self.sinks:
            sink(event)
        return event

    def of_kind(self, *kinds: str) -> list[TraceEvent]:
        return [e for e in self.events if e.kind in kinds]


class NullTracer(Tracer):
    """A tracer that records nothing (the fast path when nobody asked)."""

    def __init__(self) -> None:
        super().__init__(keep=False)
        self.enabled = False

    def emit(self, actor: str, kind: str, summary: str, **_: Any) -> TraceEvent:  # type: ignore[override]
        return _NULL_EVENT


_NULL_EVENT = TraceEvent(0, 0.0, None, "cpu", "", "")


class JsonLinesSink:
    """Writes each event as one JSON line and flushes, so a crash keeps the trace."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def __call__(self, event: TraceEvent) -> None:
        self.stream.write(event.to_json() + "\n")
        self.stream.flush()


def read_jsonl(path: Path) -> list[TraceEvent]:
    with path.open() as f:
        return [TraceEvent.from_json(line) for line in f if line.strip()]
