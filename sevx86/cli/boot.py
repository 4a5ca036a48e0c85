"""``sevx86 boot``: boot a firmware image (OVMF) as an SEV-ES guest on a QEMU-like pc machine."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import IO

from sevx86.boot.firmware_run import DEFAULT_MEMORY, MILESTONES, BootResult, FirmwareBoot
from sevx86.boot.launch import DEFAULT_VCPU_TYPE
from sevx86.boot.ovmf import OvmfError
from sevx86.boot.vcpu_types import VCPU_TYPES
from sevx86.cli.main import UsageError
from sevx86.config import ConfigError, parse_size
from sevx86.hv import RunReason
from sevx86.hv.clock import ClockChoice, ClockMode, RealtimeClock, VirtualClock
from sevx86.trace.events import JsonLinesSink, TraceEvent, Tracer
from sevx86.trace.render import mermaid, table

EXIT_REACHED = 0
EXIT_NOT_REACHED = 1
MERMAID_EVENTS = 400  # a diagram of the first events; more is unreadable

DESCRIPTION = """\
Boot FIRMWARE (e.g. Debian's /usr/share/OVMF/OVMF_CODE.fd) as QEMU boots an
SEV-ES guest: the Secure Processor measures the flash (mapped to end at
4 GiB, the varstore right below it) and QEMU's initial VMSAs, then the guest
runs from the reset vector with encrypted memory and encrypted registers.
Its own #VC handlers talk to an untrusted KVM-like hypervisor through the
GHCB; the hypervisor has the devices of QEMU's pc machine: fw_cfg (with DMA),
CMOS/RTC, PCI configuration with the i440FX/PIIX chipset, the ACPI PM timer,
the local APIC, the serial port, the debug console at 0x402, and the
varstore as a CFI flash (QEMU's pflash1): the variables the guest sets land
in it, and --save-varstore keeps them for the next boot.

The guest's console (serial and debug console) is shown as it is written.
At the end the milestones reached are printed on stderr with the wall-clock
time from the first VMRUN, then the exits by kind.
"""

EPILOG = (
    """\
milestones (in boot order; --until stops at the first exit after one):
"""
    + "\n".join(f"  {name:<13} {text}" for name, text in MILESTONES.items())
    + """

time (--clock): one platform clock drives the TSC, PIT, HPET, PM timer, RTC
and APIC timer. realtime (default): guest time is the host's, a 5-second
countdown takes 5 s. icount: deterministic -- each exit advances guest time
by --clock-step ns (default 10 us), or 2**SHIFT ns with icount:SHIFT, and a
machine whose vCPUs all halt jumps to its next timer; a run and its trace
are then the same every time.

exit status: 0 if the --until milestone was reached (without --until: if
the guest powered off), 1 if the run ended otherwise (timeout, instruction
limit, guest dead), 2 for bad usage.

examples:
  sevx86 boot /usr/share/OVMF/OVMF_CODE.fd --varstore /usr/share/OVMF/OVMF_VARS.fd \\
      --until pei-core --timeout 120
  sevx86 boot OVMF_CODE.fd --until shell --trace boot.jsonl --json --quiet
  sevx86 boot OVMF_CODE.fd --until ghcb --trace early.md --mermaid
"""
    + textwrap.fill(
        "vCPU types: " + ", ".join(VCPU_TYPES),
        width=78,
        subsequent_indent="  ",
        break_on_hyphens=False,
    )
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "boot",
        help="boot a firmware image (OVMF) as an SEV-ES guest",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("firmware", metavar="FIRMWARE", help="flash image with an OVMF footer table")
    p.add_argument("--varstore", metavar="FILE", help="variable store (QEMU's pflash1), unmeasured")
    p.add_argument(
        "--save-varstore",
        metavar="FILE",
        help="write the varstore flash to FILE when the run ends (QEMU writes its drive back)",
    )
    p.add_argument(
        "--memory",
        metavar="SIZE",
        default=f"{DEFAULT_MEMORY >> 20}M",
        help="guest RAM, e.g. 512M or 1G (default 512M)",
    )
    p.add_argument("--vcpus", metavar="N", type=int, default=1, help="vCPUs (default 1)")
    p.add_argument(
        "--vcpu-type",
        metavar="TYPE",
        default=DEFAULT_VCPU_TYPE,
        help=f"QEMU vCPU model for the reset state (default {DEFAULT_VCPU_TYPE})",
    )
    p.add_argument(
        "--until",
        metavar="MILESTONE",
        choices=list(MILESTONES),
        help="stop once this milestone is reached",
    )
    p.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=600.0,
        help="wall-clock limit in seconds (default 600)",
    )
    p.add_argument(
        "--max-instructions",
        metavar="N",
        type=int,
        help="bound each guest entry to about N instructions",
    )
    p.add_argument(
        "--trace",
        metavar="FILE",
        help="write the trace of the run: a table, or see --json/--mermaid",
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument(
        "--json",
        action="store_true",
        help="trace as JSON Lines (one event per line); the summary as JSON",
    )
    fmt.add_argument(
        "--mermaid",
        action="store_true",
        help=f"trace as a Mermaid sequence diagram (first {MERMAID_EVENTS} events)",
    )
    p.add_argument(
        "--clock",
        default="realtime",
        metavar="realtime|icount[:SHIFT]",
        help="guest time: the host's (default) or deterministic per exit (see below)",
    )
    p.add_argument(
        "--clock-step",
        metavar="NS",
        type=int,
        default=10_000,
        help="with --clock icount: virtual nanoseconds per exit (default 10000)",
    )
    p.add_argument("--quiet", action="store_true", help="do not echo the guest's console")
    p.set_defaults(func=run)


def _clock(args: argparse.Namespace) -> VirtualClock | RealtimeClock:
    try:
        choice = ClockChoice.parse(args.clock)
    except ValueError as exc:
        raise UsageError(f"--clock {exc}") from None
    if args.clock_step <= 0:
        raise UsageError(f"--clock-step {args.clock_step} must be positive")
    if choice.mode is ClockMode.ICOUNT and choice.shift is None:
        return VirtualClock(step_ns=args.clock_step)
    return choice.make()


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _trace_writer(args: argparse.Namespace) -> tuple[Tracer, Callable[[], None]]:
    """A tracer streaming to --trace FILE in the chosen format, and its closer."""
    if not args.trace:
        return Tracer(keep=False), lambda: None
    try:
        stream: IO[str] = open(args.trace, "w")  # noqa: SIM115 - closed by the closer
    except OSError as exc:
        raise UsageError(f"cannot write trace {args.trace}: {exc.strerror or exc}") from None
    if args.json:
        return Tracer([JsonLinesSink(stream)], keep=False), stream.close
    if args.mermaid:
        first: list[TraceEvent] = []

        def keep_first(event: TraceEvent) -> None:
            if len(first) <= MERMAID_EVENTS:
                first.append(event)

        def close() -> None:
            stream.write(mermaid(first, limit=MERMAID_EVENTS, title="sevx86 boot"))
            stream.close()

        return Tracer([keep_first], keep=False), close
    header = table([]).splitlines()
    stream.write("\n".join(header) + "\n")

    def line(event: TraceEvent) -> None:
        stream.write(table([event]).splitlines()[-1] + "\n")

    return Tracer([line], keep=False), stream.close


def summary(result: BootResult) -> dict[str, object]:
    return {
        "reason": result.run.reason.value,
        "detail": result.run.detail.splitlines()[0] if result.run.detail else "",
        "furthest": result.furthest,
        "milestones": {
            m.name: {"seconds": result.since_first_vmrun(m.name), "event": m.seq}
            for m in result.milestones
            if m.reached
        },
        "exits": result.run.exits,
        "elapsed": round(result.run.elapsed, 3),
        "exit_kinds": result.exit_kinds(),
    }


def run(args: argparse.Namespace) -> int:
    firmware = _read(args.firmware, "firmware")
    varstore = _read(args.varstore, "varstore") if args.varstore else None
    try:
        memory = parse_size(args.memory)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if args.vcpus < 1:
        raise UsageError(f"--vcpus {args.vcpus} must be at least 1")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    clock = _clock(args)
    if args.save_varstore and not args.varstore:
        raise UsageError("--save-varstore needs --varstore (there is no flash to save)")
    tracer, close = _trace_writer(args)
    console = None if args.quiet else sys.stdout.buffer
    try:
        boot = FirmwareBoot(
            firmware,
            varstore=varstore,
            memory=memory,
            vcpus=args.vcpus,
            vcpu_type=args.vcpu_type,
            tracer=tracer,
            console=console,
            clock=clock,
            until=args.until,
        )
    except (OvmfError, ConfigError, ValueError) as exc:
        close()
        raise UsageError(f"{args.firmware}: {exc}") from None
    try:
        result = boot.run(timeout=args.timeout, max_instructions=args.max_instructions)
    finally:
        close()
    if console is not None:
        sys.stdout.flush()
    if args.save_varstore:
        _save_varstore(boot, args.save_varstore)
    if args.json:
        print(json.dumps(summary(result), indent=2))
    else:
        print("\n" + result.report(), file=sys.stderr)
    if args.until is not None:
        return EXIT_REACHED if result.milestone(args.until).reached else EXIT_NOT_REACHED
    return EXIT_REACHED if result.run.reason is RunReason.POWERED_OFF else EXIT_NOT_REACHED


def _save_varstore(boot: FirmwareBoot, path: str) -> None:
    """The pflash1 bytes as the host holds them: what the guest programmed and erased."""
    flash = boot.pc.pflash1
    assert flash is not None  # --varstore was given
    try:
        Path(path).write_bytes(boot.hv.host.memory.read(flash.base, flash.size))
    except OSError as exc:
        print(f"sevx86 boot: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
