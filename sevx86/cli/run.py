"""``sevx86 run``: run a program under sevx86's firmware as an SEV-ES guest."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack

from sevx86.asm import fw_abi as abi
from sevx86.cli import common, launch_owner
from sevx86.cli.main import UsageError
from sevx86.gdb import session
from sevx86.gdb.server import GdbServer
from sevx86.hv import Hypervisor
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
  sevx86 run guest.S --policy 0x4 --gdb 1234    a debuggable SEV-ES guest, stopped for gdb:
      gdb -ex 'symbol-file FILE' -ex 'target remote :1234'   (FILE: as printed; break vc_do_cpuid)

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
    dbg = parser.add_argument_group("debugging (see the README: debugging a #VC handler)")
    dbg.add_argument(
        "--gdb",
        metavar="[HOST:]PORT",
        help="stop before the first instruction and wait for gdb's 'target remote' on "
        "HOST:PORT (loopback unless HOST is given; port 0 picks a free one). Under "
        "sev/sev-es the debugger sees private memory and the VMSA only through the SP's "
        "DBG_DECRYPT: launch with a policy without NODBG to debug (--policy 0x4 under "
        "sev-es, 0x0 under sev)",
    )
    dbg.add_argument(
        "--symbols",
        metavar="FILE",
        help="write an ELF with the labels of the firmware, its #VC handlers and PROGRAM "
        "(gdb: symbol-file FILE); with --gdb and no --symbols, a temporary file",
    )
    out.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the firmware's debug console and a summary on stderr",
    )
    parser.set_defaults(func=run)


KILLED = 128 + 9  # gdb's kill: what a shell reports for a process killed by SIGKILL


def _gdb_address(args: argparse.Namespace) -> tuple[str, int] | None:
    if not args.gdb:
        return None
    try:
        address = session.parse_address(args.gdb)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.scheduler == "parallel":
        # The stub is all-stop: a stopped vCPU must be the only one running.
        raise UsageError("--gdb needs --scheduler deterministic (one vCPU runs at a time)")
    return address


def _with_kill(plugin: common.HvPlugin, server: GdbServer) -> common.HvPlugin:
    """The user's plugin, plus gdb's ``kill`` wired to end the hypervisor's run."""
    user_setup = plugin.setup

    def setup(hv: Hypervisor) -> None:
        server.on_kill = lambda: hv.stop("killed from gdb")
        if user_setup is not None:
            user_setup(hv)

    return common.HvPlugin(plugin.cls, setup)


def run(args: argparse.Namespace) -> int:
    if args.list_examples:
        return common.print_examples()
    timeout, limit = common.run_limits(args)
    config = common.guest_config(args)  # refuse bad values before assembling anything
    common.guest_policy(args, config.mode)
    options = common.hv_options(args)
    plugin = common.load_hv_plugin(args.hv)
    gdb_address = _gdb_address(args)
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
        symbols = None
        if args.symbols or gdb_address:
            try:
                symbols = session.write_symbols(session.symbol_file(payload.program), args.symbols)
            except OSError as exc:
                raise UsageError(f"--symbols {args.symbols}: {exc.strerror or exc}") from None
            if args.symbols is None:
                stack.callback(session.remove_quietly, symbols)  # our temporary file
        server = None
        if gdb_address is not None:
            try:
                server = session.start(
                    booted.machine, gdb_address, sys.stderr, command="run", symbols=symbols
                )
            except OSError as exc:
                raise UsageError(f"--gdb {args.gdb}: {exc.strerror or exc}") from None
            stack.callback(server.close)
            plugin = _with_kill(plugin, server)
        result = common.run_hypervisor(
            booted,
            console=common.PipeSafe(sys.stdout.buffer),  # type: ignore[arg-type]
            debugcon=sys.stderr.buffer if args.verbose else None,
            timeout=timeout,
            limit=limit,
            plugin=plugin,
            options=options,
        )
        if server is not None and not server.killed:
            server.finish(int(common.exit_status(result, timeout, limit)[0]))
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    status, message = common.exit_status(
        result, timeout, limit, last_vc, vc_hint=" (-v names the #VC)"
    )
    message = common.locate_rips(message, result.console, payload)
    if server is not None and server.killed:
        status, message = KILLED, "killed from gdb"
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
