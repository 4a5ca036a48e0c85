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

PARTICIPANTS = {"guest": "Guest", "ghcb": "GHCB", "cpu": "CPU", "sp": "SP", "hv": "HV"}
PARTICIPANT_TITLES = {
    # '#' would start a comment in Mermaid; #35; is its entity for '#'.
    "guest": "Guest (code + #35;VC handler)",
    "ghcb": "GHCB (shared page)",
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


_MERMAID_ENTITY = {"#": "#35;", ";": "#59;", "<": "#lt;", ">": "#gt;", "{": "#123;", "}": "#125;"}
_MERMAID_UNSAFE = re.compile(r"[;#<>{}]")


def _mermaid_text(text: str) -> str:
    """Message text with Mermaid's specials as entity codes: ';' ends a
    message, '#' starts a comment or an entity, '<'/'>' and braces are syntax."""
    return _MERMAID_UNSAFE.sub(lambda m: _MERMAID_ENTITY[m.group(0)], text)


# -- the seed talk's slide 11: the round trip of one NAE event -------------------------
def _is_vmgexit(e: TraceEvent) -> bool:
    return e.kind == "exit" and e.data.get("name") == "VMGEXIT"


def _request_form(events: Sequence[TraceEvent], i: int) -> str | None:
    """ "page" or "msr": how the VMGEXIT at ``i`` carried its request, if the trace says."""
    for e in events[i + 1 : i + 8]:
        if e.kind in ("vmgexit", "ghcb-error"):
            return "page"
        if e.kind == "msr-protocol":
            return "msr"
        if _is_vmgexit(e) or e.kind == "vc":
            break
    return None


def _arrows(events: Sequence[TraceEvent], i: int) -> list[tuple[str, str, str]]:
    """(from, to, text) arrows for event ``i``, completing the slide's picture:
    the guest fills the GHCB and executes VMGEXIT; the hypervisor reads the
    request from the GHCB and answers there; VMRUN resumes the guest."""
    e = events[i]
    if _is_vmgexit(e):
        return [("cpu", "hv", e.summary)]
    if e.kind == "vmgexit":
        return [("ghcb", "hv", e.summary)]
    if e.kind in ("ghcb-answer", "ghcb-error"):
        return [("hv", "ghcb", e.summary)]
    if e.kind == "vmsa-check":
        resume = "the guest resumes"
        for back in reversed(events[max(0, i - 8) : i]):
            if back.kind in ("ghcb-answer", "ghcb-error"):
                resume += " (the #VC handler reads the answer from the GHCB)"
                break
            if back.kind == "exit":
                break
        return [("hv", "cpu", "VMRUN"), (e.actor, e.target or "cpu", e.summary),
                ("cpu", "guest", resume)]  # fmt: skip
    if e.target and e.target in PARTICIPANTS and e.target != e.actor:
        return [(e.actor, e.target, e.summary)]
    return []


def _guest_side(events: Sequence[TraceEvent], k: int) -> list[tuple[str, str, str]]:
    """What the guest does before the VMGEXIT at ``k``: fill the GHCB page
    (or the GHCB MSR), then execute VMGEXIT."""
    form = _request_form(events, k)
    out = []
    if form == "page":
        out.append(("guest", "ghcb", "#VC handler writes the request (SW_EXITCODE, inputs)"))
    elif form == "msr":
        out.append(("guest", "cpu", "request in the GHCB MSR"))
    return out + [("guest", "cpu", "VMGEXIT")]


def _vmgexit_starts(events: Sequence[TraceEvent]) -> dict[int, int]:
    """Event index -> the VMGEXIT it starts: the world switch just before the
    exit (the CPU saves the VMSA first), or the exit itself."""
    starts = {}
    for k, e in enumerate(events):
        if _is_vmgexit(e):
            at = k - 1 if k and events[k - 1].kind == "world-switch" else k
            starts[at] = k
    return starts


def focus_window(events: Sequence[TraceEvent], name: str, nth: int = 1) -> list[TraceEvent]:
    """The events of one round trip: from the ``nth`` #VC (or direct exit)
    named ``name`` (e.g. "CPUID") to the VMRUN that resumes the guest after
    the answer. Empty if there is no such exit."""
    starts = [
        i
        for i, e in enumerate(events)
        if e.kind in ("vc", "exit") and e.data.get("name") == name.upper()
    ]
    if len(starts) < nth:
        return []
    s = starts[nth - 1]
    answered = False
    for j in range(s + 1, len(events)):
        e = events[j]
        if e.kind in ("ghcb-answer", "ghcb-error"):
            answered = True
        if answered and e.kind == "vmsa-check":
            return list(events[s : j + 1])
        other_exit = e.kind == "exit" and (events[s].kind == "exit" or not _is_vmgexit(e))
        if e.kind == "vc" or other_exit:
            return list(events[s:j])  # the next #VC, or an exit for something else
    return list(events[s:])


def mermaid(
    events: Sequence[TraceEvent], *, limit: int | None = 400, title: str | None = None
) -> str:
    """A ``sequenceDiagram`` of the events (the first ``limit`` ones)."""
    shown = events if limit is None else events[:limit]
    lines: list[tuple[str, str, str, bool]] = []  # (from, to, text, is_note)
    several = len({ev.vcpu for ev in events if ev.vcpu is not None}) > 1
    starts = _vmgexit_starts(shown)
    for i, e in enumerate(shown):
        prefix = f"vCPU{e.vcpu}: " if several and e.vcpu is not None else ""
        if i in starts:
            lines += [(a, b, prefix + text, False) for a, b, text in _guest_side(shown, starts[i])]
        arrows = _arrows(shown, i)
        if not arrows:
            lines.append((e.actor, e.actor, prefix + e.summary, True))
        lines += [(a, b, prefix + text, False) for a, b, text in arrows]
    used = [a for a in PARTICIPANTS if any(a in (f, t) for f, t, _, _ in lines)]
    out = ["sequenceDiagram"]
    if title:
        out.append(f"    title {_mermaid_text(title)}")
    for actor in used or list(PARTICIPANTS):
        out.append(f"    participant {PARTICIPANTS[actor]} as {PARTICIPANT_TITLES[actor]}")
    for src, dst, text, note in lines:
        a = PARTICIPANTS.get(src, "CPU")
        if note:
            out.append(f"    Note over {a}: {_mermaid_text(text)}")
        else:
            out.append(f"    {a}->>{PARTICIPANTS.get(dst, 'CPU')}: {_mermaid_text(text)}")
    if limit is not None and len(events) > limit:
        out.append(
            f"    Note over {PARTICIPANTS[used[0] if used else 'cpu']}: "
            f"... {len(events) - limit} more events"
        )
    return "\n".join(out) + "\n"
