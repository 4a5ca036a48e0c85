"""What ``sevx86 run`` and ``sevx86 trace`` share: guest options, the program,
booting it under sevx86's firmware, and the exit status of a run.

A PROGRAM is the payload of the firmware (firmware/README.md): an assembly
source (``.S``, ``.s``, ``.asm``) assembled at the payload address, a flat
binary loaded there, or ``example:NAME`` for a built-in example from
guest_asm/examples.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import IO

from sevx86.arch.ghcb import GeneralTermReason
from sevx86.asm import AsmError, assemble
from sevx86.asm import fw_abi as abi
from sevx86.asm.guest_abi import GUEST_ASM_REASON_SET, VcReason
from sevx86.asm.preprocess import guest_asm_dir
from sevx86.boot.firmware import BootedGuest, FirmwareError, boot_machine, check_machine
from sevx86.boot.ovmf import OvmfError
from sevx86.cli.main import EXIT_INTERNAL, EXIT_USAGE, UsageError
from sevx86.config import ConfigError, GuestConfig, GuestMode, parse_size
from sevx86.hv import Hypervisor, RunReason, RunResult
from sevx86.hv.clock import NS_PER_S, TSC_HZ, ClockChoice, ClockMode, RealtimeClock, TscClock
from sevx86.hv.scheduler import DEFAULT_QUANTUM, SCHEDULERS, Scheduler, make_scheduler
from sevx86.machine import LaunchError
from sevx86.sp.policy import GuestPolicy
from sevx86.trace.events import Tracer

ASSEMBLY_SUFFIXES = (".S", ".s", ".asm")
EXAMPLE_PREFIX = "example:"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MEMORY = "64M"
AP_START = ("sipi", "run")  # sevx86.hv.smp.initial_state


class ExitStatus(IntEnum):
    """Exit statuses of ``sevx86 run`` / ``trace`` besides the guest's own 0..115."""

    OK = 0
    INTERNAL = (
        EXIT_INTERNAL  # a bug in sevx86 (one line on stderr; SEVX86_DEBUG=1 for the traceback)
    )
    USAGE = EXIT_USAGE  # bad option, unreadable or bad PROGRAM, assembly error, too large
    HALTED = 116  # every vCPU halted without an exit status
    EMULATION_ERROR = 117  # the CPU engine could not go on
    HYPERVISOR_ERROR = 118  # a handler or hook of the hypervisor failed
    HV_TERMINATED = 119  # the hypervisor refused to go on
    TERMINATED = 120  # the guest asked to terminate (firmware/#VC handler refusal, fault)
    SHUTDOWN = 121  # triple fault
    VMRUN_FAILED = 122  # VMRUN refused the guest state (VMSA integrity check)
    TIMEOUT = 124  # --timeout seconds passed (as coreutils timeout)
    INSTRUCTION_LIMIT = 125  # --max-instructions ran without an exit


EXIT_STATUS_TABLE = """\
exit status:
  N        the guest wrote N to the debug-exit port 0xF4 (or its payload
           returned N in RAX); keep N in 0..115, larger N are cut to 255
  2        usage error: bad option value, missing or unreadable PROGRAM,
           assembly error (file:line: message), PROGRAM too large
  116      the guest halted with no exit status
  117      emulation error (the CPU engine could not go on)
  118      hypervisor error (a handler or hook failed)
  119      the hypervisor terminated the guest
  120      the guest terminated itself: a GHCB termination request (SEV-ES),
           or the firmware's fatal report (other modes); reason on stderr
  121      shutdown (triple fault)
  122      VMRUN failed (the VMSA integrity check)
  124      --timeout reached
  125      --max-instructions reached
  1        internal error in sevx86"""

_FATAL_LINE = re.compile(r"sevx86-fw: fatal: reason set 0x([0-9a-f]+) code 0x([0-9a-f]+)")


# -- options ----------------------------------------------------------------------------
def add_guest_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "program",
        nargs="?",
        metavar="PROGRAM",
        help="assembly source (.S, .s, .asm), flat binary, or example:NAME",
    )
    parser.add_argument("--example", metavar="NAME", help="run a built-in example")
    parser.add_argument(
        "--list-examples", action="store_true", help="list the built-in examples and exit"
    )
    g = parser.add_argument_group("guest")
    g.add_argument(
        "--mode", default="sev-es", metavar="MODE", help="none, sev or sev-es (default sev-es)"
    )
    g.add_argument("--cbitpos", default="51", metavar="N", help="C-bit position (default 51)")
    g.add_argument(
        "--reduced-phys-bits",
        default="1",
        metavar="N",
        help="physical address bits lost to SEV (default 1)",
    )
    g.add_argument(
        "--memory",
        default=DEFAULT_MEMORY,
        metavar="SIZE",
        help=f"guest RAM, {abi.RAM_MIN >> 20}M..{abi.RAM_MAX >> 30}G (default {DEFAULT_MEMORY})",
    )
    g.add_argument(
        "--vcpus",
        default="1",
        metavar="N",
        help=f"vCPUs, 1..{abi.MAX_VCPUS} (default 1); the firmware starts the APs "
        "(INIT-SIPI-SIPI) and parks them; the launch measures one VMSA each",
    )
    g.add_argument(
        "--policy",
        metavar="VALUE",
        help="SEV policy (default 0x5 for sev-es: NODBG|ES, 0x1 for sev)",
    )
    g.add_argument(
        "--timeout",
        default=str(DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help=f"wall-clock limit of the run (default {DEFAULT_TIMEOUT:g}; 0: none)",
    )
    g.add_argument(
        "--max-instructions",
        metavar="N",
        help="stop when N instructions run without an exit to the host",
    )
    g.add_argument(
        "--hv",
        metavar="FILE.py",
        help="play the hypervisor: FILE defines setup(hv) and/or a Hypervisor subclass "
        "named Hypervisor (see sevx86.hv)",
    )
    parser.add_argument(
        "--clock",
        default="icount",
        metavar="realtime|icount[:SHIFT]",
        help="the guest's TSC: icount (default: deterministic, 1000 cycles per read, or "
        "2**SHIFT ns of a 2 GHz TSC per read) or realtime (the host's monotonic clock)",
    )
    h = parser.add_argument_group("several vCPUs (the hypervisor)")
    h.add_argument(
        "--scheduler",
        default="deterministic",
        metavar="NAME",
        help="deterministic (default: one vCPU at a time in seeded slices; the same "
        "--seed gives the same run) or parallel (a host thread per vCPU; LOCKed "
        "instructions are not yet guaranteed atomic there: see the README's Limits)",
    )
    h.add_argument(
        "--seed",
        default="0",
        metavar="S",
        help="deterministic scheduler: the seed of its order and slices (default 0)",
    )
    h.add_argument(
        "--quantum",
        metavar="Q",
        help=f"deterministic scheduler: instructions per slice (default {DEFAULT_QUANTUM})",
    )
    h.add_argument(
        "--ap-start",
        default="sipi",
        metavar="HOW",
        help="sipi (default: APs wait for INIT-SIPI, as under KVM) or run (the host "
        "starts every vCPU at once)",
    )
    a = parser.add_argument_group("assembly")
    a.add_argument(
        "-I", dest="include", action="append", type=Path, default=[], metavar="DIR",
        help="%%include search folder (repeatable)",
    )  # fmt: skip
    a.add_argument(
        "-D", dest="defines", action="append", default=[], metavar="NAME[=VAL]",
        help="%%define before the first line (repeatable)",
    )  # fmt: skip


def parse_number(text: str, what: str) -> int:
    """An option's integer: decimal, 0x.., 0o.., 0b.., with ``_`` between digits."""
    try:
        return int(text, 0)
    except (TypeError, ValueError):
        raise UsageError(f"{what} {text!r} is not a number") from None


def guest_config(args: argparse.Namespace) -> GuestConfig:
    vcpus = parse_number(args.vcpus, "--vcpus")
    if not 1 <= vcpus <= abi.MAX_VCPUS:
        raise UsageError(f"--vcpus {vcpus} is outside 1..{abi.MAX_VCPUS}")
    try:
        mode = GuestMode.parse(args.mode)
        memory = parse_size(args.memory)
        config = GuestConfig(
            mode=mode,
            cbitpos=parse_number(args.cbitpos, "--cbitpos"),
            reduced_phys_bits=parse_number(args.reduced_phys_bits, "--reduced-phys-bits"),
            memory=memory,
            vcpus=vcpus,
        )
        check_machine(0, config.memory, config.vcpus)
    except (ConfigError, FirmwareError) as exc:
        raise UsageError(str(exc)) from None
    return config


@dataclass(frozen=True)
class HvOptions:
    """How the hypervisor runs several vCPUs (--scheduler, --seed, --quantum, --ap-start)."""

    scheduler: str = "deterministic"
    seed: int = 0
    quantum: int | None = None
    ap_start: str = "sipi"
    clock: ClockChoice = ClockChoice(ClockMode.ICOUNT)

    def make_scheduler(self) -> Scheduler:
        return make_scheduler(self.scheduler, seed=self.seed, quantum=self.quantum)

    def make_tsc(self) -> TscClock:
        """The TSC of a run without the pc devices: nothing else reads the clock."""
        if self.clock.mode is ClockMode.REALTIME:
            return TscClock(source=RealtimeClock())
        if self.clock.shift is None:
            return TscClock()
        return TscClock(step=max(1, (1 << self.clock.shift) * TSC_HZ // NS_PER_S))


def hv_options(args: argparse.Namespace) -> HvOptions:
    """Check the scheduler options before anything runs; each failure is one line."""
    if args.scheduler not in SCHEDULERS:
        raise UsageError(f"--scheduler {args.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    seed = parse_number(args.seed, "--seed")
    quantum = None
    if args.quantum is not None:
        quantum = parse_number(args.quantum, "--quantum")
        if quantum < 1:
            raise UsageError(f"--quantum {quantum} must be at least 1")
    if args.ap_start not in AP_START:
        raise UsageError(f"--ap-start {args.ap_start!r} is not one of {', '.join(AP_START)}")
    try:
        clock = ClockChoice.parse(getattr(args, "clock", "icount"))
    except ValueError as exc:
        raise UsageError(f"--clock {exc}") from None
    return HvOptions(args.scheduler, seed, quantum, args.ap_start, clock)


def guest_policy(args: argparse.Namespace, mode: GuestMode) -> GuestPolicy | None:
    if args.policy is None:
        return None
    value = parse_number(args.policy, "--policy")
    if not 0 <= value <= 0xFFFF_FFFF:
        raise UsageError(f"--policy {args.policy} is not a 32-bit value")
    policy = GuestPolicy(value)
    if not mode.encrypted:
        raise UsageError("--policy needs an encrypted guest (--mode sev or sev-es)")
    if policy.es != (mode is GuestMode.SEV_ES):
        has = "has" if policy.es else "lacks"
        raise UsageError(f"--policy {value:#x} {has} the SEV-ES bit (0x4) but --mode is {mode}")
    return policy


def run_limits(args: argparse.Namespace) -> tuple[float | None, int | None]:
    try:
        timeout = float(args.timeout)
    except ValueError:
        raise UsageError(f"--timeout {args.timeout!r} is not a number of seconds") from None
    if timeout < 0 or timeout != timeout:
        raise UsageError(f"--timeout {args.timeout} must be 0 (no limit) or more")
    limit = None
    if args.max_instructions is not None:
        limit = parse_number(args.max_instructions, "--max-instructions")
        if limit < 1:
            raise UsageError(f"--max-instructions {limit} must be at least 1")
    return (timeout or None), limit


def _defines(items: list[str]) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name.isidentifier():
            raise UsageError(f"-D {item}: expected NAME or NAME=VALUE")
        out[name] = value
    return out


# -- examples -------------------------------------------------------------------------
def examples_dir() -> Path:
    base = guest_asm_dir()
    if base is None or not (base / "examples").is_dir():
        raise UsageError("the built-in examples (guest_asm/examples) are not installed")
    return base / "examples"


def list_examples() -> dict[str, str]:
    """Example name -> its one-line summary (the first comment line after the name)."""
    out: dict[str, str] = {}
    for path in sorted(examples_dir().glob("*.S")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        summary = first.lstrip("; ").partition(":")[2].strip() or first
        out[path.stem] = summary
    return out


def print_examples(stream: IO[str] | None = None) -> int:
    stream = stream or sys.stdout
    for name, summary in list_examples().items():
        print(f"{name:<8} {summary}", file=stream)
    return 0


# -- the program ----------------------------------------------------------------------
@dataclass
class Payload:
    name: str  # how messages refer to it
    code: bytes


def program_path(args: argparse.Namespace) -> Path:
    spec = args.program
    if args.example is not None:
        if spec is not None:
            raise UsageError("give PROGRAM or --example NAME, not both")
        spec = EXAMPLE_PREFIX + args.example
    if spec is None:
        raise UsageError("no PROGRAM given (try example:hello, or --list-examples)")
    if spec.startswith(EXAMPLE_PREFIX):
        name = spec[len(EXAMPLE_PREFIX) :]
        examples = list_examples()
        if name not in examples:
            raise UsageError(f"no example {name!r}; examples: {', '.join(examples)}")
        return examples_dir() / f"{name}.S"
    return Path(spec)


def load_program(args: argparse.Namespace) -> Payload:
    """Assemble or read PROGRAM; every failure is a one-line UsageError."""
    path = program_path(args)
    name = args.program or f"{EXAMPLE_PREFIX}{args.example}"
    defines = _defines(args.defines)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a program")
    if path.suffix in ASSEMBLY_SUFFIXES:
        try:
            program = assemble(
                path=path,
                base=abi.PAYLOAD_GPA,
                bits=64,
                include_paths=args.include,
                defines=defines,
            )
        except AsmError as exc:
            raise UsageError(str(exc).splitlines()[0]) from None
        if program.base != abi.PAYLOAD_GPA:
            raise UsageError(
                f"{path}: starts at {program.base:#x} (org); the firmware enters "
                f"payloads at {abi.PAYLOAD_GPA:#x}"
            )
        code = program.code
    else:
        try:
            code = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not code:
        raise UsageError(f"{path}: empty program")
    return Payload(name, code)


def boot(
    args: argparse.Namespace, payload: Payload, tracer: Tracer | None
) -> tuple[BootedGuest, GuestConfig]:
    config = guest_config(args)
    policy = guest_policy(args, config.mode)
    try:
        return boot_machine(payload.code, config, policy=policy, tracer=tracer), config
    except FirmwareError as exc:
        raise UsageError(f"{payload.name}: {exc}") from None
    except (LaunchError, OvmfError, ValueError) as exc:
        raise UsageError(str(exc)) from None


# -- the result -----------------------------------------------------------------------
def describe_termination(reason_set: int | None, code: int | None) -> str:
    """A guest's termination reason in words (GHCB spec set 0, guest_asm, firmware)."""
    if reason_set is None or code is None:
        return "no reason given"
    where = f"reason set {reason_set} code {code:#x}"
    if reason_set == 0:
        try:
            text = f"GHCB spec: {GeneralTermReason(code).name.lower().replace('_', ' ')}"
        except ValueError:
            text = "GHCB spec: unknown code"
    elif reason_set == GUEST_ASM_REASON_SET:
        try:
            text = f"#VC handler: {VcReason(code).name}"
        except ValueError:
            text = "#VC handler: unknown code"
    elif reason_set == abi.FW_REASON_SET:
        text = f"sevx86 firmware: {abi.describe_reason(code)}"
    elif reason_set == 1:
        text = "Linux/OVMF reason"
    else:
        text = "unknown reason set"
    return f"{where} ({text})"


def firmware_fatal(console: str) -> tuple[int, int] | None:
    """The firmware's fatal report on the console (how it ends without SEV-ES)."""
    found = _FATAL_LINE.findall(console)
    if not found:
        return None
    reason_set, code = found[-1]
    return int(reason_set, 16), int(code, 16)


def exit_status(result: RunResult, timeout: float | None, limit: int | None) -> tuple[int, str]:
    """(exit status, message for stderr or "") of a finished run."""
    reason = result.reason
    detail = result.detail.strip().splitlines()[0] if result.detail.strip() else ""
    if reason is RunReason.EXIT_STATUS:
        status = result.exit_status or 0
        if 0 <= status <= 0xFF:
            return status, ""
        return 0xFF, f"the guest's exit status {status:#x} does not fit 0..255"
    if reason is RunReason.POWERED_OFF:
        return 0, ""
    if reason is RunReason.TERMINATED:
        term = result.termination
        if term is not None and term.by == "guest":
            why = describe_termination(term.reason_set, term.reason_code)
            return ExitStatus.TERMINATED, f"the guest terminated: {why}"
        return ExitStatus.HV_TERMINATED, f"the hypervisor terminated the guest: {detail}"
    if reason is RunReason.HALTED:
        fatal = firmware_fatal(result.console)
        if fatal is not None:
            why = describe_termination(*fatal)
            return ExitStatus.TERMINATED, f"the guest stopped (firmware fatal report): {why}"
        return ExitStatus.HALTED, (
            "the guest halted without an exit status (write it to port 0xf4, "
            "or return it in RAX from the payload)"
        )
    if reason is RunReason.TIMEOUT:
        return ExitStatus.TIMEOUT, f"timeout: the guest ran {timeout:g} s (--timeout)"
    if reason is RunReason.INSTRUCTION_LIMIT:
        return ExitStatus.INSTRUCTION_LIMIT, (
            f"instruction limit: {limit} instructions without an exit (--max-instructions)"
        )
    if reason is RunReason.SHUTDOWN:
        return ExitStatus.SHUTDOWN, f"shutdown (triple fault): {detail}"
    if reason is RunReason.VMRUN_FAILED:
        return ExitStatus.VMRUN_FAILED, f"VMRUN failed: {detail}"
    if reason is RunReason.EMULATION_ERROR:
        return ExitStatus.EMULATION_ERROR, f"emulation error: {detail}"
    return ExitStatus.HYPERVISOR_ERROR, f"hypervisor error: {detail}"


@dataclass
class HvPlugin:
    """A user's hypervisor from --hv FILE: a class and/or a set-up function."""

    cls: type[Hypervisor] = Hypervisor
    setup: Callable[[Hypervisor], object] | None = None


def load_hv_plugin(path: str | None) -> HvPlugin:
    """Run FILE and take its ``Hypervisor`` subclass and ``setup(hv)``, if any."""
    if path is None:
        return HvPlugin()
    if not Path(path).is_file():
        raise UsageError(f"--hv {path}: no such file")
    try:
        namespace = runpy.run_path(path, run_name="sevx86_hv_plugin")
    except Exception as exc:  # the user's code: say where, in one line
        raise UsageError(f"--hv {path}: {type(exc).__name__}: {exc}") from None
    cls = namespace.get("Hypervisor", Hypervisor)
    setup = namespace.get("setup")
    if not (isinstance(cls, type) and issubclass(cls, Hypervisor)):
        raise UsageError(f"--hv {path}: Hypervisor is not a subclass of sevx86.hv.Hypervisor")
    if setup is not None and not callable(setup):
        raise UsageError(f"--hv {path}: setup is not a function")
    if cls is Hypervisor and setup is None:
        raise UsageError(f"--hv {path}: defines neither setup(hv) nor a Hypervisor subclass")
    return HvPlugin(cls, setup)


def run_hypervisor(
    booted: BootedGuest,
    *,
    console: IO[bytes] | None,
    debugcon: IO[bytes] | None,
    timeout: float | None,
    limit: int | None,
    plugin: HvPlugin | None = None,
    options: HvOptions | None = None,
) -> RunResult:
    plugin = plugin or HvPlugin()
    options = options or HvOptions()
    try:
        hv = plugin.cls(
            booted.machine.host_view(),
            console=console,
            scheduler=options.make_scheduler(),
            ap_start=options.ap_start,
        )
    except TypeError as exc:  # a --hv subclass with its own __init__ signature
        raise UsageError(
            f"--hv: {plugin.cls.__name__}(host, console=, scheduler=, ap_start=) failed: {exc}"
        ) from None
    hv.console.routes["debugcon"] = debugcon
    if options.clock != ClockChoice(ClockMode.ICOUNT):  # the default keeps the hv's own TSC
        hv.msrs.clock = options.make_tsc()
    if plugin.setup is not None:
        try:
            plugin.setup(hv)
        except Exception as exc:  # the user's code
            raise UsageError(f"--hv: setup(hv) raised {type(exc).__name__}: {exc}") from None
    return hv.run(timeout=timeout, max_instructions=limit)


class PipeSafe:
    """The terminal stream for guest output; a closed pipe (``| head``) only stops the echo.

    The guest keeps running to its end and the exit status stays the guest's.
    """

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.closed = False

    def write(self, data: bytes) -> int:
        if not self.closed:
            try:
                self.stream.write(data)
            except BrokenPipeError:
                self.close_quietly()
        return len(data)

    def flush(self) -> None:
        if not self.closed:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.close_quietly()

    def close_quietly(self) -> None:
        self.closed = True
        # Python flushes stdout at exit: point it at /dev/null so that fails quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())
        os.close(devnull)
