"""``sevx86 boot``: boot a firmware image (OVMF) as an SEV-ES guest on a QEMU-like pc machine."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from sevx86.boot.firmware_run import (
    DEFAULT_MEMORY,
    MILESTONES,
    BootResult,
    FirmwareBoot,
    Milestone,
)
from sevx86.boot.launch import DEFAULT_VCPU_TYPE
from sevx86.boot.linux import LinuxBootError, add_to_fw_cfg, from_files
from sevx86.boot.ovmf import OvmfError
from sevx86.boot.vcpu_types import VCPU_TYPES
from sevx86.cli import common
from sevx86.cli.main import UsageError
from sevx86.config import PAGE_SIZE, ConfigError, parse_size
from sevx86.gdb import session
from sevx86.hv.clock import VirtualClock
from sevx86.hv.hypervisor import EXIT_TABLE
from sevx86.hv.machines import PC_BELOW_4G_LIMIT
from sevx86.sp.policy import GuestPolicy
from sevx86.trace.events import JsonLinesSink, TraceEvent, Tracer
from sevx86.trace.render import mermaid, table

DEFAULT_TIMEOUT = 600.0
EXIT_REACHED = 0
EXIT_NOT_REACHED = 1
EXIT_INTERRUPTED = int(common.ExitStatus.INTERRUPTED)
MERMAID_EVENTS = 400  # a diagram of the first events; more is unreadable
DEFAULT_UNTIL = "shell"
UNTIL_NONE = "none"
# OVMF's X64 build keeps its SEC page tables, temporary PEI RAM and the
# decompressed PEI and DXE volumes in MEMFD, a fixed region from 8 MiB up
# (OvmfPkg/OvmfPkgX64.fdf, [FD.MEMFD]); PlatformPei puts the permanent PEI
# memory and DXE above it, so a few MiB triple-fault. The floor is QEMU's
# default RAM size (-m 128M), with which OVMF boots under QEMU.
MIN_MEMORY = 128 << 20
STATUS_PERIOD = 0.5  # seconds between status-line updates (a terminal only)

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
Each milestone is announced on stderr when it is reached; on a terminal a
status line (elapsed time, exits per second, current phase) is kept at the
bottom while the guest is silent. At the end -- or at Ctrl-C, which also
writes --save-varstore -- the milestones are printed with the wall-clock
time from the first VMRUN, then the exits by kind.
"""

EPILOG = (
    """\
milestones (in boot order; --until stops at the first exit after one,
default shell: the boot stops at the UEFI shell banner; --until none runs on):
"""
    + "\n".join(f"  {name:<13} {text}" for name, text in MILESTONES.items())
    + """

time: the devices read a virtual clock that advances --clock-step per exit
(default 10 us), so a run and its trace are the same every time.

exit status: 0 if the --until milestone was reached (with --until none: if
the guest powered off), 1 if the run ended otherwise (timeout, instruction
limit, guest dead), 2 for bad usage, 130 for Ctrl-C.

examples:
  sevx86 boot /usr/share/OVMF/OVMF_CODE.fd --varstore /usr/share/OVMF/OVMF_VARS.fd \\
      --until pei-core --timeout 120
  sevx86 boot OVMF_CODE.fd --until shell --trace boot.jsonl --json --quiet
  sevx86 boot OVMF_CODE.fd --until ghcb --trace early.md --mermaid
  sevx86 boot OVMF_CODE.fd --varstore VARS.fd --kernel vmlinuz --initrd initrd.img \\
      --append "console=ttyS0"
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
        help="guest RAM, 128M to 3584M, e.g. 512M or 1G (default 512M)",
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
        choices=[*MILESTONES, UNTIL_NONE],
        default=DEFAULT_UNTIL,
        help=f"stop once this milestone is reached (default {DEFAULT_UNTIL}; none: run on)",
    )
    p.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        help="wall-clock limit in seconds (default 600; none with --gdb)",
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
        "--clock-step",
        metavar="NS",
        type=int,
        default=10_000,
        help="virtual nanoseconds per exit (default 10000)",
    )
    p.add_argument("--quiet", action="store_true", help="do not echo the guest's console")
    linux = p.add_argument_group("direct kernel boot (QEMU's -kernel/-initrd/-append, via fw_cfg)")
    linux.add_argument("--kernel", metavar="BZIMAGE", help="Linux bzImage for the firmware to boot")
    linux.add_argument("--initrd", metavar="FILE", help="initial ramdisk (needs --kernel)")
    linux.add_argument("--append", metavar="CMDLINE", help="kernel command line (needs --kernel)")
    dbg = p.add_argument_group("debugging")
    dbg.add_argument(
        "--policy",
        metavar="VALUE",
        help="SEV policy given to LAUNCH_START (default 0x5, NODBG|ES, as QEMU); it must "
        "have ES (bit 2). 0x4 launches a debuggable guest (MEASURE covers the policy)",
    )
    dbg.add_argument(
        "--gdb",
        metavar="[HOST:]PORT",
        help="stop at the reset vector and wait for gdb's 'target remote' (loopback unless "
        "HOST is given; 0: a free port). Without --policy 0x4 the SP's NODBG refuses "
        "DBG_DECRYPT: gdb sees ciphertext and no registers. No wall-clock limit unless "
        "--timeout is given",
    )
    p.set_defaults(func=run)


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


def _memory(text: str) -> int:
    try:
        memory = parse_size(text)
    except ConfigError as exc:
        raise UsageError(f"--memory: {exc}") from None
    if memory > PC_BELOW_4G_LIMIT:
        raise UsageError(
            f"--memory {text}: the pc machine keeps guest RAM below QEMU's PCI hole at"
            f" {PC_BELOW_4G_LIMIT >> 20}M (sevx86 maps RAM in one block from 0)"
        )
    if memory < MIN_MEMORY:
        raise UsageError(
            f"--memory {text}: OVMF needs at least {MIN_MEMORY >> 20}M, QEMU's default"
            " (its MEMFD region alone reaches past 16 MiB)"
        )
    if memory % PAGE_SIZE:
        raise UsageError(f"--memory {text} is not a whole number of 4 KiB pages")
    return memory


def _varstore(path: str) -> bytes:
    data = _read(path, "varstore")
    if not data or len(data) % PAGE_SIZE:
        raise UsageError(
            f"--varstore {path}: {len(data):#x} bytes is not a flash image"
            " (a non-empty multiple of 4 KiB, like OVMF_VARS.fd)"
        )
    return data


class Progress:
    """Milestone lines on stderr as they come; a status line too when stderr is a terminal."""

    def __init__(self, stream: IO[str], *, status: bool):
        self.stream = stream
        self.status = status
        self.exits = 0
        self.phase = "reset"
        self.start = time.perf_counter()
        self._lock = threading.Lock()
        self._shown = False
        self._done = threading.Event()

    def count_exit(self, _event: object, proceed: Callable[[], None]) -> None:
        self.exits += 1
        proceed()

    def milestone(self, m: Milestone) -> None:
        self.phase = m.name
        elapsed = time.perf_counter() - self.start
        self._write(f"sevx86 boot: {elapsed:7.2f}s milestone {m.name}: {m.description}\n")

    def _write(self, text: str) -> None:
        with self._lock:
            if self._shown:
                self.stream.write("\r\033[K")  # clear the status line first
                self._shown = False
            self.stream.write(text)
            self.stream.flush()

    @contextmanager
    def running(self) -> Iterator[None]:
        thread = None
        if self.status:
            thread = threading.Thread(target=self._status_loop, daemon=True, name="boot-status")
            thread.start()
        try:
            yield
        finally:
            self._done.set()
            if thread is not None:
                thread.join()
                self._write("")

    def _status_loop(self) -> None:
        last_exits, last_t = 0, time.perf_counter()
        while not self._done.wait(STATUS_PERIOD):
            now, exits = time.perf_counter(), self.exits
            rate = (exits - last_exits) / max(now - last_t, 1e-9)
            last_exits, last_t = exits, now
            line = (
                f"[{now - self.start:7.1f}s] {exits:,} exits ({rate:,.0f}/s), phase: {self.phase}"
            )
            with self._lock:
                self.stream.write("\r\033[K" + line)
                self.stream.flush()
                self._shown = True


def _run_interruptibly(boot: FirmwareBoot, **limits: object) -> tuple[BootResult, bool]:
    """The boot on a worker thread; the first Ctrl-C ends it as a device would
    (``FirmwareBoot.interrupt``), so the summary and the varstore still come."""
    return common.run_interruptibly(
        lambda: boot.run(**limits),  # type: ignore[arg-type]
        lambda: boot.interrupt(common.INTERRUPTED_DETAIL),
    )


def run(args: argparse.Namespace) -> int:
    firmware = _read(args.firmware, "firmware")
    varstore = _varstore(args.varstore) if args.varstore else None
    memory = _memory(args.memory)
    if args.vcpus < 1:
        raise UsageError(f"--vcpus {args.vcpus} must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    timeout = args.timeout if args.timeout is not None or args.gdb else DEFAULT_TIMEOUT
    policy = _policy(args.policy)
    gdb_address = None
    if args.gdb:
        try:
            gdb_address = session.parse_address(args.gdb)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.save_varstore and not args.varstore:
        raise UsageError("--save-varstore needs --varstore (there is no flash to save)")
    if (args.initrd or args.append is not None) and not args.kernel:
        raise UsageError("--initrd and --append need --kernel")
    try:
        linux = (
            from_files(args.kernel, args.initrd, args.append or "", ram_below_4g=memory)
            if args.kernel
            else None
        )
    except LinuxBootError as exc:
        raise UsageError(str(exc)) from None
    tracer, close = _trace_writer(args)
    console = None if args.quiet else sys.stdout.buffer
    until = None if args.until == UNTIL_NONE else args.until
    progress = Progress(sys.stderr, status=sys.stderr.isatty())
    try:
        boot = FirmwareBoot(
            firmware,
            varstore=varstore,
            memory=memory,
            vcpus=args.vcpus,
            vcpu_type=args.vcpu_type,
            tracer=tracer,
            console=console,
            clock=VirtualClock(step_ns=args.clock_step),
            until=until,
            on_milestone=progress.milestone,
            policy=policy,
        )
    except (OvmfError, ConfigError, ValueError) as exc:
        close()
        raise UsageError(f"{args.firmware}: {exc}") from None
    if linux is not None:
        add_to_fw_cfg(linux, boot.pc.fw_cfg)
    for code in EXIT_TABLE:
        boot.hv.on_exit(code, progress.count_exit)
    server = None
    try:
        if gdb_address is not None:
            try:
                server = session.start(boot.machine, gdb_address, sys.stderr, command="boot")
            except OSError as exc:
                raise UsageError(f"--gdb {args.gdb}: {exc.strerror or exc}") from None
            server.on_kill = lambda: boot.hv.stop("killed from gdb")
        with progress.running():
            result, interrupted = _run_interruptibly(
                boot, timeout=timeout, max_instructions=args.max_instructions
            )
    except BaseException:
        if server is not None:
            server.close()
        raise
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
    if interrupted:
        print("sevx86 boot: interrupted", file=sys.stderr)
        status = EXIT_INTERRUPTED
    elif until is not None:
        status = EXIT_REACHED if result.milestone(until).reached else EXIT_NOT_REACHED
    else:
        status = EXIT_REACHED if "S5" in result.run.detail else EXIT_NOT_REACHED
    if server is not None:
        server.finish(status)
    return status


def _policy(text: str | None) -> GuestPolicy | None:
    if text is None:
        return None
    try:
        policy = GuestPolicy(int(text, 0))
    except ValueError:
        raise UsageError(f"--policy {text!r} is not a 32-bit number") from None
    if not policy.es:
        raise UsageError(f"--policy {text}: boot launches SEV-ES, the policy needs ES (0x4)")
    return policy


def _save_varstore(boot: FirmwareBoot, path: str) -> None:
    """The pflash1 bytes as the host holds them: what the guest programmed and erased."""
    flash = boot.pc.pflash1
    assert flash is not None  # --varstore was given
    try:
        Path(path).write_bytes(boot.hv.host.memory.read(flash.base, flash.size))
    except OSError as exc:
        print(f"sevx86 boot: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
