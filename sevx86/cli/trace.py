"""``sevx86 trace``: the early-boot timeline of a program under sevx86's firmware."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from sevx86.cli import common
from sevx86.cli.main import UsageError
from sevx86.trace.events import TraceEvent, Tracer
from sevx86.trace.render import mermaid, table

# Three events per world switch that say the same thing each time; --all shows them.
QUIET_KINDS = frozenset({"world-switch", "vmsa-check", "ghcb-msr-write"})

KINDS_HELP = """\
event kinds (actor -> target):
  launch          hv -> sp     LAUNCH_START / UPDATE_DATA / UPDATE_VMSA / MEASURE
  vmrun           hv -> cpu    the first VMRUN
  cr-write        guest -> cpu a control-register write (CR0, CR3; CR4 under SEV-ES)
  cr-trap         hv           SEV-ES CR0/CR4/EFER write trap: the new value
  vc              cpu -> guest #VC with the exit code (CPUID, IOIO, NPF, ...)
  exit            cpu -> hv    #VMEXIT (VMGEXIT, HLT, traps; direct exits without ES)
  msr-protocol    hv -> guest  GHCB MSR protocol request and answer, in words
  paging          cpu -> guest paging takes effect, with or without the C-bit
  ghcb-register   hv -> guest  GHCB GPA registration
  vmgexit         hv           a VMGEXIT through the GHCB page, fields decoded
  ghcb-answer     hv -> guest  what the hypervisor answered
  exception       cpu -> guest an exception delivered through the IDT
  inject          hv -> guest  an event the hypervisor injects (e.g. #GP)
  mmio            hv           an MMIO access decoded by the host (no SEV-ES)
  console         hv           a line of guest output (serial, debugcon) and its vCPU
  ipi             hv           INIT, SIPI and other IPIs between vCPUs (--vcpus N)
  ap-reset-hold   hv           an AP parked in AP reset hold (GHCB spec)
  irq-request     hv           an interrupt requested for a vCPU (a device, an IPI)
  irq-dropped     hv           an interrupt no vCPU could take (illegal vector, no target)
  clock           hv           every vCPU halted: the clock warped or slept to a timer
  terminate, halt, shutdown, vmrun-failed, emulation-error, run-end
  world-switch, vmsa-check, ghcb-msr-write   (shown with --all)"""

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
    out.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.set_defaults(func=run)


def _kinds(text: str | None) -> frozenset[str] | None:
    if text is None:
        return None
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    if not kinds:
        raise UsageError(f"no event kinds in {text!r}")
    return kinds


def event_filter(args: argparse.Namespace) -> Callable[[TraceEvent], bool]:
    only = _kinds(args.kinds)
    exclude = _kinds(args.exclude) or frozenset()
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
