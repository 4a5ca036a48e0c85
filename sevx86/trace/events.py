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
from pathlib import Path
from typing import IO, Any

ACTORS = ("guest", "cpu", "sp", "hv")


@dataclass
class TraceEvent:
    seq: int
    t: float  # seconds since the tracer started
    vcpu: int | None
    actor: str  # who acted
    kind: str  # what happened, e.g. "vc", "exit", "vmrun", "msr-protocol"
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


_NULL_EVENT = TraceEvent(0, 0.0, None, "cpu", "none", "")


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
