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
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from sevx86.arch.exits import SvmExit, exit_name
from sevx86.arch.ghcb import GeneralTermReason, GhcbMsr
from sevx86.asm import AsmError, assemble
from sevx86.asm import fw_abi as abi
from sevx86.asm.guest_abi import GUEST_ASM_REASON_SET, VC_REASON_TEXT, VcReason
from sevx86.asm.preprocess import guest_asm_dir
from sevx86.asm.program import Program
from sevx86.boot.firmware import BootedGuest, FirmwareError, boot_machine, check_machine
from sevx86.boot.ovmf import OvmfError
from sevx86.cli.main import EXIT_INTERNAL, EXIT_USAGE, UsageError
from sevx86.config import ConfigError, GuestConfig, GuestMode, parse_size
from sevx86.hv import Hypervisor, RunReason, RunResult
from sevx86.hv.scheduler import DEFAULT_QUANTUM, SCHEDULERS, Scheduler, make_scheduler
from sevx86.sp.launch import LaunchError, resolve_policy
from sevx86.sp.policy import GuestPolicy
from sevx86.sp.secure_processor import SecureProcessor
from sevx86.trace.events import TraceEvent, Tracer

# Assembly sources, compared case-insensitively (MINE.ASM, guest.nasm, boot.S).
ASSEMBLY_SUFFIXES = (".s", ".asm", ".nasm")
EXAMPLE_PREFIX = "example:"
# Wall-clock limit of a run: long enough for any ordinary program (serial
# output runs at a few KB/s under SEV-ES: thousands of lines take minutes).
DEFAULT_TIMEOUT = 600.0
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
    INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it


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
  130      interrupted (Ctrl-C): the run ends at the next exit or kick, the
           summary and the trace written so far still come
  137      killed from gdb (--gdb), as a shell reports SIGKILL
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
        metavar="SECONDS",
        help=f"wall-clock limit of the run (default {DEFAULT_TIMEOUT:g}, none with --gdb; 0: none)",
    )
    g.add_argument(
        "--max-instructions",
        metavar="N",
        help="stop when N instructions run without an exit to the host",
    )
    g.add_argument(
        "--hv",
        metavar="FILE.py",
        help="play the hypervisor: FILE defines setup(hv) and/or a subclass of "
        "sevx86.hv.Hypervisor, of any name (see sevx86.hv and the README)",
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

    def make_scheduler(self) -> Scheduler:
        return make_scheduler(self.scheduler, seed=self.seed, quantum=self.quantum)


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
    return HvOptions(args.scheduler, seed, quantum, args.ap_start)


def guest_policy(args: argparse.Namespace, mode: GuestMode) -> GuestPolicy | None:
    if args.policy is None:
        return None
    value = parse_number(args.policy, "--policy")
    if not 0 <= value <= 0xFFFF_FFFF:
        raise UsageError(f"--policy {args.policy} is not a 32-bit value")
    if not mode.encrypted:
        raise UsageError("--policy needs an encrypted guest (--mode sev or sev-es)")
    try:
        return resolve_policy(mode, value)
    except LaunchError as exc:
        raise UsageError(f"--{exc}") from None


def run_limits(args: argparse.Namespace) -> tuple[float | None, int | None]:
    if args.timeout is None:
        # A person at a gdb prompt is not a hung guest: no limit unless asked.
        args.timeout = "0" if getattr(args, "gdb", None) else str(DEFAULT_TIMEOUT)
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
    symbols: dict[str, int] = field(default_factory=dict)  # labels, for fault messages
    program: Program | None = None  # when assembled here: its labels, for a symbol file

    def where(self, address: int) -> str:
        """``label+0x12`` for an address inside the program ("" outside it)."""
        start = abi.PAYLOAD_GPA
        if not self.symbols or not start <= address < start + len(self.code):
            return ""
        before = [(a, n) for n, a in self.symbols.items() if start <= a <= address]
        if not before:
            return ""
        at, label = max(before)
        return label if at == address else f"{label}+{address - at:#x}"


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


def is_assembly(path: Path) -> bool:
    return path.suffix.lower() in ASSEMBLY_SUFFIXES


def looks_like_text(data: bytes) -> bool:
    """Printable ASCII with line breaks: a source file, not x86 machine code."""
    sample = data[:4096]
    return b"\n" in sample and all(b in b"\t\r\n" or 0x20 <= b < 0x7F for b in sample)


def load_program(args: argparse.Namespace) -> Payload:
    """Assemble or read PROGRAM; every failure is a one-line UsageError."""
    path = program_path(args)
    name = args.program or f"{EXAMPLE_PREFIX}{args.example}"
    defines = _defines(args.defines)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a program")
    if not is_assembly(path):
        try:
            code = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if not code:
            raise UsageError(f"{path}: empty program")
        if looks_like_text(code):
            raise UsageError(
                f"{path}: looks like text, not a flat binary; to assemble it, name it "
                f"with one of {', '.join(ASSEMBLY_SUFFIXES)} (any case)"
            )
        return Payload(name, code)
    program = _assemble_payload(path, args.include, defines)
    if not program.code:
        raise UsageError(f"{path}: empty program")
    return Payload(name, program.code, dict(program.symbols), program)


# The firmware enters a payload at its first byte (firmware/README.md, "Payload
# ABI"); a program whose `start` is elsewhere gets a jump there in front.
ENTRY_LABEL = "start"
_JMP_REL32 = 5


def _assemble_payload(path: Path, include: list[Path], defines: dict[str, int | str]):
    def build(base: int):
        try:
            return assemble(path=path, base=base, bits=64, include_paths=include, defines=defines)
        except AsmError as exc:
            raise UsageError(str(exc).splitlines()[0]) from None

    program = build(abi.PAYLOAD_GPA)
    if program.base != abi.PAYLOAD_GPA:
        raise UsageError(
            f"{path}: starts at {program.base:#x} (org); the firmware enters "
            f"payloads at {abi.PAYLOAD_GPA:#x}"
        )
    entry = program.symbols.get(ENTRY_LABEL)
    if entry is None:
        raise UsageError(
            f"{path}: no '{ENTRY_LABEL}:' label; the program is entered there "
            f"(at {abi.PAYLOAD_GPA:#x} with RDI = the boot info, firmware/README.md)"
        )
    if entry == abi.PAYLOAD_GPA:
        return program
    # `start` is not the first byte (an %include at the top, data first):
    # assemble again 5 bytes up, behind a JMP rel32 to `start`.
    moved = build(abi.PAYLOAD_GPA + _JMP_REL32)
    target = moved.symbols[ENTRY_LABEL] - (abi.PAYLOAD_GPA + _JMP_REL32)
    jump = b"\xe9" + target.to_bytes(4, "little", signed=True)
    return replace(moved, code=jump + moved.code, base=abi.PAYLOAD_GPA)


def boot(
    args: argparse.Namespace,
    payload: Payload,
    tracer: Tracer | None,
    *,
    sp: SecureProcessor | None = None,
    launch_options: dict[str, Any] | None = None,
) -> tuple[BootedGuest, GuestConfig]:
    config = guest_config(args)
    policy = guest_policy(args, config.mode)
    if (sp is not None or launch_options) and config.mode is GuestMode.NONE:
        raise UsageError("the guest owner's options need an encrypted guest (--mode sev or sev-es)")
    try:
        booted = boot_machine(
            payload.code,
            config,
            policy=policy,
            tracer=tracer,
            sp=sp,
            launch_options=launch_options,
        )
        return booted, config
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
            text = f"#VC handler: {VcReason(code).name}: {VC_REASON_TEXT[code]}"
        except (ValueError, KeyError):
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


_FAULT_LINE = re.compile(r"sevx86-fw: unhandled exception (#\w+).*? at RIP (0x[0-9a-f]+)")
_RIP = re.compile(r"RIP (0x[0-9a-f]+)")


def locate_rips(message: str, console: str, payload: Payload) -> str:
    """Name the program's label at every RIP a failure message mentions.

    The firmware reports an unhandled exception with its RIP on the console
    (firmware/README.md, "Refusals"); the stderr line gets that RIP too, as
    ``label+offset`` of the user's program when it lies inside it.
    """
    if not message:
        return message
    fault = _FAULT_LINE.findall(console)
    if fault and "unhandled exception" in message and "RIP" not in message:
        message += f" at RIP {fault[-1][1]}"

    def name(m: re.Match[str]) -> str:
        where = payload.where(int(m.group(1), 16))
        return f"{m.group(0)} ({where} in {payload.name})" if where else m.group(0)

    return _RIP.sub(name, message)


class LastVc:
    """A tracer sink that remembers each vCPU's last #VC: the exit code and RIP
    the #VC handler was serving when it terminated (the operator's view --
    the emulator sees the guest's RIP; the hypervisor under SEV-ES does not)."""

    def __init__(self) -> None:
        self.by_vcpu: dict[int, tuple[str, int]] = {}

    def __call__(self, event: TraceEvent) -> None:
        if event.kind == "vc":
            self.by_vcpu[event.vcpu or 0] = (event.data.get("name", "?"), event.data.get("rip", 0))

    def describe(self, vcpu: int | None) -> str:
        last = self.by_vcpu.get(vcpu or 0)
        return "" if last is None else f"; while serving the {last[0]} #VC at RIP {last[1]:#x}"


def exit_status(
    result: RunResult,
    timeout: float | None,
    limit: int | None,
    last_vc: LastVc | None = None,
    *,
    vc_hint: str = "",
) -> tuple[int, str]:
    """(exit status, message for stderr or "") of a finished run."""
    reason = result.reason
    detail = result.detail.strip().splitlines()[0] if result.detail.strip() else ""
    if reason is RunReason.EXIT_STATUS:
        status = result.exit_status or 0
        if 0 <= status <= 0xFF:
            return status, ""
        return 0xFF, f"the guest's exit status {status:#x} does not fit 0..255"
    if reason is RunReason.TERMINATED:
        term = result.termination
        if term is not None and term.by == "guest":
            why = describe_termination(term.reason_set, term.reason_code)
            if term.reason_set == GUEST_ASM_REASON_SET:
                why += last_vc.describe(result.vcpu) if last_vc else vc_hint
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
    if reason is RunReason.STOPPED and detail == INTERRUPTED_DETAIL:
        return ExitStatus.INTERRUPTED, f"interrupted (Ctrl-C) after {result.exits} exits"
    if reason is RunReason.TIMEOUT:
        return ExitStatus.TIMEOUT, f"timeout: the guest ran {timeout:g} s (--timeout)"
    if reason is RunReason.INSTRUCTION_LIMIT:
        return ExitStatus.INSTRUCTION_LIMIT, (
            f"instruction limit: {limit} instructions without an exit (--max-instructions)"
        )
    if reason is RunReason.SHUTDOWN:
        return ExitStatus.SHUTDOWN, f"shutdown (triple fault): {detail}"
    if reason is RunReason.VMRUN_FAILED:
        # The failed VMRUN is itself counted as an exit (SVM_EXIT_INVALID).
        where = f"vCPU {result.vcpu or 0}, at its entry after exit {max(result.exits - 1, 0)}"
        return ExitStatus.VMRUN_FAILED, f"VMRUN failed ({where} of the run): {detail}"
    if reason is RunReason.EMULATION_ERROR:
        return ExitStatus.EMULATION_ERROR, f"emulation error: {detail}"
    # A hook of the user's (--hv) failed: say where, from the traceback the
    # hypervisor keeps after the first line of its detail.
    return ExitStatus.HYPERVISOR_ERROR, f"hypervisor error: {detail}{user_frame(result.detail)}"


@dataclass
class HvPlugin:
    """A user's hypervisor from --hv FILE: a class and/or a set-up function."""

    cls: type[Hypervisor] = Hypervisor
    setup: Callable[[Hypervisor], object] | None = None


def load_hv_plugin(path: str | None) -> HvPlugin:
    """Run FILE and take its ``Hypervisor`` subclass and ``setup(hv)``, if any.

    The subclass may have any name (``class LyingCbit(Hypervisor)``, as in
    the ``sevx86.hv`` docstring): the one class FILE defines that derives
    from ``sevx86.hv.Hypervisor``. With several, the one named
    ``Hypervisor`` wins; otherwise FILE must say which.
    """
    if path is None:
        return HvPlugin()
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"--hv {path}: is a directory; give a Python file (FILE.py)")
    if not file.is_file():
        raise UsageError(f"--hv {path}: no such file")
    try:
        namespace = runpy.run_path(path, run_name=HV_PLUGIN_MODULE)
    except Exception as exc:  # the user's code: say where, in one line
        where = user_frame(exc.__traceback__, path)
        raise UsageError(f"--hv {path}{where}: {type(exc).__name__}: {exc}") from None
    setup = namespace.get("setup")
    if setup is not None and not callable(setup):
        raise UsageError(f"--hv {path}: setup is not a function")
    named = namespace.get("Hypervisor", Hypervisor)
    if named is not Hypervisor and not (isinstance(named, type) and issubclass(named, Hypervisor)):
        raise UsageError(f"--hv {path}: Hypervisor is not a subclass of sevx86.hv.Hypervisor")
    defined = [
        v
        for v in namespace.values()
        if isinstance(v, type)
        and issubclass(v, Hypervisor)
        and v is not Hypervisor
        and v.__module__ == HV_PLUGIN_MODULE
    ]
    if named is not Hypervisor:
        cls = named
    elif len(defined) == 1:
        cls = defined[0]
    elif defined:
        names = ", ".join(sorted(c.__name__ for c in defined))
        raise UsageError(
            f"--hv {path}: several Hypervisor subclasses ({names}); "
            "name the one to use Hypervisor (Hypervisor = One)"
        )
    else:
        cls = Hypervisor
    if cls is Hypervisor and setup is None:
        raise UsageError(
            f"--hv {path}: defines neither setup(hv) nor a subclass of sevx86.hv.Hypervisor"
        )
    return HvPlugin(cls, setup)


HV_PLUGIN_MODULE = "sevx86_hv_plugin"
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')
_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)


def user_frame(tb: TracebackType | str | None, prefer: str | None = None) -> str:
    """ " (at FILE:LINE in FUNC)" for the innermost frame of a traceback that is
    the user's code (outside the sevx86 package), or "" if there is none.

    ``tb`` is a traceback object or a formatted traceback (the text a
    hypervisor error carries in ``RunResult.detail``).
    """
    if tb is None:
        return ""
    if isinstance(tb, str):
        frames = [(m["file"], int(m["line"]), m["func"]) for m in _FRAME.finditer(tb)]
    else:
        frames = [(f.filename, f.lineno or 0, f.name) for f in traceback.extract_tb(tb)]
    mine = [f for f in frames if not str(Path(f[0]).resolve()).startswith(_PACKAGE_DIR)]
    if prefer is not None:
        mine = [f for f in mine if Path(f[0]).resolve() == Path(prefer).resolve()] or mine
    if not mine:
        return ""
    file, line, func = mine[-1]
    return f" (at {file}:{line} in {func})" if func != "<module>" else f":{line}"


INTERRUPTED_DETAIL = "interrupted (Ctrl-C)"
_T = TypeVar("_T")


def run_interruptibly(work: Callable[[], _T], interrupt: Callable[[], None]) -> tuple[_T, bool]:
    """Run ``work`` on a worker thread so that Ctrl-C reaches us even in a tight guest loop.

    Python runs signal handlers in the main thread only, between bytecodes,
    and Unicorn may execute guest code for a long time without calling back;
    a KeyboardInterrupt raised inside one of its hooks would also tear the
    emulation down as if the guest had failed. So the main thread waits here
    instead, and the first Ctrl-C calls ``interrupt`` (end the run the way a
    device would, so the summary, the trace and a varstore still come); a
    second Ctrl-C gives up at once.
    """
    box: dict[str, object] = {}

    def worker() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # handed to the main thread below
            box["error"] = exc

    thread = threading.Thread(target=worker, name="sevx86-run", daemon=True)
    thread.start()
    interrupted = False
    # Poll with sleep, not Thread.join: a KeyboardInterrupt inside join() can
    # leave the thread reported as finished while it still runs (CPython).
    while "result" not in box and "error" not in box:
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            interrupt()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"], interrupted  # type: ignore[return-value]


def interrupt_hypervisor(hv: Hypervisor) -> None:
    """End ``hv``'s run from another thread: stop after the exit in hand, kick every vCPU."""
    hv.stop(INTERRUPTED_DETAIL)
    for vcpu in hv.vcpus:
        vcpu.kick()


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
    if plugin.setup is not None:
        try:
            plugin.setup(hv)
        except Exception as exc:  # the user's code
            where = user_frame(exc.__traceback__)
            raise UsageError(f"--hv: setup(hv) raised {type(exc).__name__}: {exc}{where}") from None
    mode = booted.machine.config.mode
    for warning in sev_es_only_hooks(hv, mode):
        print(f"sevx86: warning: {warning}", file=sys.stderr)
    result, _ = run_interruptibly(
        lambda: hv.run(timeout=timeout, max_instructions=limit),
        lambda: interrupt_hypervisor(hv),
    )
    return result


def sev_es_only_hooks(hv: Hypervisor, mode: GuestMode) -> list[str]:
    """Hooks that cannot fire in ``mode``: the GHCB and its MSR protocol exist
    only under SEV-ES (GHCB spec 56421); in modes none and sev the same events
    are plain exits (hook them with on_request or on_exit)."""
    if mode is GuestMode.SEV_ES:
        return []
    out = []
    for kind, code in hv.hooked():
        if kind == "msr":
            try:
                name = GhcbMsr(code).name
            except ValueError:
                name = f"{code:#x}"
            out.append(
                f"on_msr_protocol({name}) never fires under --mode {mode.value}: only an "
                "SEV-ES guest uses the GHCB MSR protocol"
            )
        elif kind == "vmgexit" or (kind == "exit" and code == SvmExit.VMGEXIT):
            hook = "on_vmgexit" if kind == "vmgexit" else "on_exit(SvmExit.VMGEXIT"
            out.append(
                f"{hook}({exit_name(code)}) never fires under --mode {mode.value}: no "
                "GHCB without SEV-ES (use on_request for the same event on every path)"
                if kind == "vmgexit"
                else f"{hook}) never fires under --mode {mode.value}: no VMGEXIT without SEV-ES"
            )
    return out


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
