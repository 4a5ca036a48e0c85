"""``sevx86 trace``: the early-boot timeline of a program under sevx86's firmware."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from sevx86.cli import common
from sevx86.cli.main import UsageError
from sevx86.trace import render
from sevx86.trace.events import KIND_HELP, TraceEvent, TraceKind, Tracer, parse_kinds
from sevx86.trace.render import mermaid, table

# Three events per world switch that say the same thing each time; --all shows them.
QUIET_KINDS = frozenset({TraceKind.WORLD_SWITCH, TraceKind.VMSA_CHECK, TraceKind.GHCB_MSR_WRITE})


def _kinds_help() -> str:
    """The kinds table of ``--help``, from ``TraceKind`` (so it cannot miss one)."""
    width = max(len(k.value) for k in TraceKind)
    lines = ["event kinds (actor -> target):"]
    for kind in TraceKind:
        who, what = KIND_HELP[kind]
        quiet = " (shown with --all)" if kind in QUIET_KINDS else ""
        lines.append(f"  {kind.value:<{width}}  {who:<13} {what}{quiet}")
    return "\n".join(lines)


KINDS_HELP = _kinds_help()

DESCRIPTION = """\
Run PROGRAM like `sevx86 run` and print what happened, in order: every
#VC, every GHCB MSR-protocol request and answer decoded ("CPUID 0x8000001f
EBX -> 0x73 (cbitpos 51 ...)"), the CR and EFER write traps, the moment
paging with the C-bit takes effect, the GHCB registration, each VMGEXIT
with its GHCB fields -- the seed talk's CPUID slide, from a real run.

Output: a table (default), JSON Lines (--json, written as events happen),
or a Mermaid sequence diagram of guest, CPU, Secure Processor and
hypervisor (--mermaid). The guest's console output is in the trace
("console" events), not on stdout."""

EPILOG = f"""\
examples:
  sevx86 trace example:hello
  sevx86 trace example:hello --kinds vc,msr-protocol,paging,ghcb-register --limit 20
  sevx86 trace example:cpuid --mermaid -o cpuid.mmd
  sevx86 trace example:cpuid --mermaid --kinds vc,exit,world-switch,vmgexit,ghcb-answer,vmsa-check
                          (the seed talk's CPUID slide: #VC, VMGEXIT, VMSA sealed and checked)
  sevx86 trace guest.S --mode none --json > boot.jsonl
  sevx86 trace example:hello --vcpus 2 --kinds ipi,ghcb-register,ap-reset-hold,console
                          (the firmware starts the AP: which vCPU did what)

{KINDS_HELP}

The exit status is the run's, as for `sevx86 run`:
{common.EXIT_STATUS_TABLE.partition(chr(10))[2]}"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trace",
        help="print the early-boot timeline of a program (table, JSON Lines, Mermaid)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_guest_options(parser)
    out = parser.add_argument_group("output")
    form = out.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="JSON Lines, one event per line")
    form.add_argument("--mermaid", action="store_true", help="a Mermaid sequence diagram")
    out.add_argument("--kinds", metavar="K1,K2", help="only these event kinds (see below)")
    out.add_argument("--exclude", metavar="K1,K2", help="leave these event kinds out")
    out.add_argument(
        "--all", action="store_true", help="also world switches and VMSA checks (noisy)"
    )
    out.add_argument("--limit", metavar="N", help="at most N events")
    out.add_argument(
        "--focus",
        metavar="EXIT[:N]",
        help="only the round trip of the Nth (default 1st) #VC or exit named EXIT, "
        "e.g. CPUID: the seed talk's slide 11 with --mermaid",
    )
    out.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.set_defaults(func=run)


def _kinds(text: str | None, option: str) -> frozenset[TraceKind] | None:
    if text is None:
        return None
    try:
        return parse_kinds(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def event_filter(args: argparse.Namespace) -> Callable[[TraceEvent], bool]:
    """Which events to show; a filter that can only show nothing is a usage error."""
    only = _kinds(args.kinds, "--kinds")
    exclude = _kinds(args.exclude, "--exclude") or frozenset()
    if only is not None and only <= exclude:
        raise UsageError(
            f"--kinds {args.kinds} and --exclude {args.exclude} leave no event kind to show"
        )
    quiet = frozenset() if args.all or only is not None else QUIET_KINDS

    def keep(event: TraceEvent) -> bool:
        if only is not None and event.kind not in only:
            return False
        return event.kind not in exclude and event.kind not in quiet

    return keep


class _LiveJsonLines:
    """--json: write each kept event as it happens (a crash keeps the trace)."""

    def __init__(self, stream, keep: Callable[[TraceEvent], bool], limit: int | None):
        self.stream, self.keep, self.limit, self.count = stream, keep, limit, 0
        self.closed = False

    def __call__(self, event: TraceEvent) -> None:
        if self.closed or not self.keep(event):
            return
        if self.limit is not None and self.count >= self.limit:
            return
        self.count += 1
        try:
            self.stream.write(event.to_json() + "\n")
            self.stream.flush()
        except BrokenPipeError:  # `| head`: stop writing, let the run end
            self.closed = True
            common.PipeSafe(sys.stdout.buffer).close_quietly()


def _focus(text: str) -> tuple[str, int]:
    name, _, nth = text.partition(":")
    n = common.parse_number(nth, "--focus") if nth else 1
    if not name or n < 1:
        raise UsageError(f"--focus {text!r}: expected EXIT or EXIT:N (N from 1), e.g. CPUID:2")
    return name, n


def run(args: argparse.Namespace) -> int:
    if args.list_examples:
        return common.print_examples()
    timeout, max_instructions = common.run_limits(args)
    limit = None
    if args.limit is not None:
        limit = common.parse_number(args.limit, "--limit")
        if limit < 1:
            raise UsageError(f"--limit {limit} must be at least 1")
    keep = event_filter(args)
    config = common.guest_config(args)
    common.guest_policy(args, config.mode)
    options = common.hv_options(args)
    plugin = common.load_hv_plugin(args.hv)
    payload = common.load_program(args)
    try:
        stream = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    except OSError as exc:
        raise UsageError(f"--output {args.output}: {exc.strerror or exc}") from None
    try:
        if args.json:
            tracer = Tracer([_LiveJsonLines(stream, keep, limit)], keep=False)
        else:
            tracer = Tracer()
        booted, config = common.boot(args, payload, tracer)
        result = common.run_hypervisor(
            booted,
            console=None,
            debugcon=None,
            timeout=timeout,
            limit=max_instructions,
            plugin=plugin,
            options=options,
        )
        if not args.json:
            events = [e for e in tracer.events if keep(e)]
            if args.focus:
                events = render.focus_window(events, *_focus(args.focus))
            if limit is not None:
                events = events[:limit]
            if args.mermaid:
                title = f"{payload.name} under sevx86 firmware, mode {config.mode.value}"
                stream.write(mermaid(events, limit=None, title=title))
            else:
                stream.write(table(events) + "\n")
        stream.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        common.PipeSafe(sys.stdout.buffer).close_quietly()
    finally:
        if stream is not sys.stdout:
            stream.close()
    status, message = common.exit_status(result, timeout, max_instructions)
    if message:
        print(f"sevx86 trace: {message}", file=sys.stderr)
    return int(status)
