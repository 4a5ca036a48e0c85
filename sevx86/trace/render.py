"""Rendering a trace: a readable table, JSON Lines, a Mermaid sequence diagram.

The three views read the same ``TraceEvent`` list. The Mermaid view draws the
participants of the seed talk's CPUID slide -- the guest (its code and #VC
handler), the CPU, the Secure Processor and the hypervisor -- with one arrow
per event that has a target and a note for the others.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from sevx86.trace.events import TraceEvent

PARTICIPANTS = {"guest": "Guest", "cpu": "CPU", "sp": "SP", "hv": "HV"}
PARTICIPANT_TITLES = {
    "guest": "Guest (code + #VC handler)",
    "cpu": "CPU",
    "sp": "Secure Processor",
    "hv": "Hypervisor",
}


def table(events: Iterable[TraceEvent], *, width: int = 100) -> str:
    """One line per event: sequence, time, vCPU, who -> whom, kind, summary."""
    lines = [f"{'#':>6} {'time':>9} {'vcpu':>4}  {'from -> to':<12} {'event':<16} summary"]
    lines.append("-" * min(width, 100))
    for e in events:
        who = e.actor if e.target is None else f"{e.actor} -> {e.target}"
        vcpu = "" if e.vcpu is None else str(e.vcpu)
        lines.append(f"{e.seq:>6} {e.t:>8.4f}s {vcpu:>4}  {who:<12} {e.kind:<16} {e.summary}")
    return "\n".join(lines)


def jsonl(events: Iterable[TraceEvent]) -> str:
    return "".join(e.to_json() + "\n" for e in events)


_MERMAID_UNSAFE = re.compile(r"[;#<>{}]")


def _mermaid_text(text: str) -> str:
    # Mermaid message text ends at ';' and treats '#' as an entity start.
    return _MERMAID_UNSAFE.sub(
        lambda m: {"#": "", ";": ",", "<": "‹", ">": "›"}.get(m.group(0), " "), text
    )


def mermaid(
    events: Sequence[TraceEvent], *, limit: int | None = 400, title: str | None = None
) -> str:
    """A ``sequenceDiagram`` of the events (the first ``limit`` ones)."""
    out = ["sequenceDiagram"]
    if title:
        out.append(f"    title {_mermaid_text(title)}")
    used = [a for a in PARTICIPANTS if any(e.actor == a or e.target == a for e in events)]
    for actor in used or list(PARTICIPANTS):
        out.append(f"    participant {PARTICIPANTS[actor]} as {PARTICIPANT_TITLES[actor]}")
    shown = events if limit is None else events[:limit]
    for e in shown:
        src = PARTICIPANTS.get(e.actor, "CPU")
        text = _mermaid_text(e.summary)
        if e.vcpu is not None and len({ev.vcpu for ev in events if ev.vcpu is not None}) > 1:
            text = f"vCPU{e.vcpu}: {text}"
        if e.target and e.target in PARTICIPANTS and e.target != e.actor:
            out.append(f"    {src}->>{PARTICIPANTS[e.target]}: {text}")
        else:
            out.append(f"    Note over {src}: {text}")
    if limit is not None and len(events) > limit:
        out.append(
            f"    Note over {PARTICIPANTS[used[0] if used else 'cpu']}: "
            f"... {len(events) - limit} more events"
        )
    return "\n".join(out) + "\n"
