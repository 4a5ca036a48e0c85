"""``sevx86 run``: run a program under sevx86's firmware as an SEV-ES guest."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack

from sevx86.asm import fw_abi as abi
from sevx86.cli import common, launch_owner
from sevx86.cli.main import UsageError
from sevx86.trace.events import JsonLinesSink, Tracer

DESCRIPTION = f"""\
Run PROGRAM as the payload of sevx86's firmware, in an emulated SEV-ES guest.

The firmware starts where a vCPU starts (real mode, the reset vector),
finds out whether the guest is encrypted and where the C-bit is (under
SEV-ES through its #VC handler and the GHCB MSR protocol), builds page
tables with the C-bit, registers the GHCB, and jumps to PROGRAM in 64-bit
mode at {abi.PAYLOAD_GPA:#x} with RDI pointing at the boot info
(firmware/README.md). A CPUID, IN/OUT or MMIO access of PROGRAM then goes
through #VC, the firmware's #VC handler, the GHCB and VMGEXIT to the
emulated hypervisor, as on an SEV-ES machine.

With --vcpus N the firmware first starts every AP (INIT-SIPI-SIPI); each
gets its own GHCB, says "AP n up" on the serial console and is parked in
AP reset hold. The hypervisor runs the vCPUs one at a time in seeded
slices (--scheduler deterministic, --seed, --quantum: the same seed gives
the same run) or in parallel host threads (--scheduler parallel).

The serial console (COM1) is printed as it happens. The run ends when the
guest writes its exit status to port 0xF4 (or its payload returns it in
RAX), terminates, faults, or hits a limit."""

EPILOG = f"""\
examples:
  sevx86 run example:hello                      the smallest SEV-ES guest
  sevx86 run --list-examples
  sevx86 run guest.S --mode sev --cbitpos 47    plain SEV, C-bit 47
  sevx86 run guest.S --trace boot.jsonl         every event, as JSON Lines
  sevx86 run guest.bin --memory 256M --timeout 5
  sevx86 run example:hello --vcpus 4            the firmware starts 3 APs first
  sevx86 run example:smp --vcpus 4 --seed 7     ...then wakes them through the AP jump table

a minimal PROGRAM (guest.S):
  start:  mov edx, 0xF4       ; the debug-exit port
          mov eax, 0          ; the run's exit status
          out dx, eax         ; under SEV-ES: #VC, GHCB, VMGEXIT

play a malicious hypervisor (lie.py), with the hooks of sevx86.hv:
  from sevx86.arch.ghcb import GhcbMsr, msr_sev_info_response

  def setup(hv):
      def lie(req, proceed):
          proceed()                                       # the honest answer...
          req.response = msr_sev_info_response(2, 1, 47) # ...then C-bit 47, not 51
      hv.on_msr_protocol(GhcbMsr.SEV_INFO_REQ, lie)

  $ sevx86 run example:hello --hv lie.py     # 120: the firmware refuses the C-bit

{common.EXIT_STATUS_TABLE}"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a program under sevx86's firmware as an SEV-ES guest",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_guest_options(parser)
    launch_owner.add_options(parser)
    out = parser.add_argument_group("output")
    out.add_argument(
        "--trace", metavar="FILE", help="write every event as JSON Lines to FILE, as it happens"
    )
    out.add_argument(
        "--save-image",
        metavar="FILE",
        help="write the flash image (firmware + PROGRAM) that the launch measures",
    )
    out.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the firmware's debug console and a summary on stderr",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list_examples:
        return common.print_examples()
    timeout, limit = common.run_limits(args)
    config = common.guest_config(args)  # refuse bad values before assembling anything
    common.guest_policy(args, config.mode)
    options = common.hv_options(args)
    plugin = common.load_hv_plugin(args.hv)
    payload = common.load_program(args)
    sp, launch_options = launch_owner.owner_launch(args)
    with ExitStack() as stack:
        # With -v the last #VC per vCPU names the instruction a #VC handler
        # refusal was about (tracing costs ~20% of the run, so only then).
        last_vc = common.LastVc() if args.verbose or args.trace else None
        sinks: list = [last_vc] if last_vc is not None else []
        if args.trace:
            try:
                stream = stack.enter_context(open(args.trace, "w", encoding="utf-8"))
            except OSError as exc:
                raise UsageError(f"--trace {args.trace}: {exc.strerror or exc}") from None
            # Each event is written and flushed as it happens: a run that
            # dies still leaves a valid JSON Lines file.
            sinks.append(JsonLinesSink(stream))
        tracer = Tracer(sinks, keep=False) if sinks else None
        booted, _ = common.boot(args, payload, tracer, sp=sp, launch_options=launch_options)
        if args.save_image:
            try:
                with open(args.save_image, "wb") as f:
                    f.write(booted.image)
            except OSError as exc:
                raise UsageError(f"--save-image {args.save_image}: {exc.strerror or exc}") from None
        result = common.run_hypervisor(
            booted,
            console=common.PipeSafe(sys.stdout.buffer),  # type: ignore[arg-type]
            debugcon=sys.stderr.buffer if args.verbose else None,
            timeout=timeout,
            limit=limit,
            plugin=plugin,
            options=options,
        )
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    status, message = common.exit_status(
        result, timeout, limit, last_vc, vc_hint=" (-v names the #VC)"
    )
    message = common.locate_rips(message, result.console, payload)
    if message:
        print(f"sevx86 run: {message}", file=sys.stderr)
    if args.verbose:
        digest = booted.launch_digest
        vmgexits = result.counters.get("VMGEXIT", 0)
        print(
            f"sevx86 run: {result.reason.value} after {result.exits} exits "
            f"({vmgexits} VMGEXIT) in {result.elapsed:.3f} s; exit status {status}"
            + (f"; launch digest {digest.hex()}" if digest else ""),
            file=sys.stderr,
        )
    return int(status)
