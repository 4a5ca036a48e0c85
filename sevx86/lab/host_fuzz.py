"""Scenario 6, a hostile host, fuzzed (docs/lab/host-fuzz.md).

``LyingHost`` adds one ``on_exit(VMGEXIT)`` hook: after the honest handling
it rewrites, with probability ``p`` per GHCB request, one part of the answer
the guest will read from the shared GHCB page -- SW_EXITINFO1 (exception,
error, an unknown value), SW_EXITINFO2, a register field, bits of the valid
bitmap, SW_SCRATCH, or for string I/O the count and the shared buffer. The
guest (guest_asm/lab/fuzz_payload.S under sevx86's firmware) checks after
every #VC what no answer may change; the #VC handler has to refuse what it
cannot use.

A *case* is one lie. Each run boots a fresh guest; ``fuzz`` runs until it
has told the asked number of lies and counts how the runs ended.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sevx86.arch.exits import SvmExit
from sevx86.arch.ghcb import (
    GHCB,
    GHCB_MSR_INFO_MASK,
    GHCB_SIZE,
    SHARED_BUFFER_OFFSET,
    SHARED_BUFFER_SIZE,
)
from sevx86.arch.vmcb import Ioio
from sevx86.asm import Program, assemble
from sevx86.asm import fw_abi as abi
from sevx86.boot.firmware import boot_machine
from sevx86.config import GuestConfig, GuestMode, MiB
from sevx86.hv import Hypervisor, RunReason
from sevx86.hv.hypervisor import ExitEvent
from sevx86.lab.guest import lab_source
from sevx86.lab.report import ModeOutcome, Report
from sevx86.lab.scenario import Scenario

STATUS_CORRUPTED = 0x66  # guest_asm/lab/fuzz_payload.S
ROUNDS = 4
MEMORY = 4 * MiB
DEFAULT_CASES = 200  # the CLI's; the slow test tells 10,000 lies
DEFAULT_PROBABILITY = 0.25
LIE_REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r12", "r15", "rsp", "rip")
LIE_KINDS = ("exit-info-1", "exit-info-2", "register", "valid-bits", "scratch", "string-io")
_U64 = (1 << 64) - 1


def _u64(rng: random.Random) -> int:
    """Mostly edge values, sometimes any 64 bits."""
    return rng.choice([0, 1, 2, 3, 0xFF, 0xFFFF_FFFF, _U64, 1 << 63, rng.getrandbits(64)])


class LyingHost:
    """After each honest GHCB answer, with probability ``p``, one lie in the GHCB page."""

    def __init__(self, hv: Hypervisor, rng: random.Random, p: float):
        self.hv, self.rng, self.p = hv, rng, p
        self.lies: Counter[str] = Counter()
        hv.on_exit(SvmExit.VMGEXIT, self.on_vmgexit)

    def on_vmgexit(self, ctx: ExitEvent, proceed) -> None:
        msr = ctx.vmcb["ghcb_gpa"]  # read first: the handling may change it
        proceed()
        memory = self.hv.host.memory
        if msr & GHCB_MSR_INFO_MASK or not memory.contains(msr, GHCB_SIZE):
            return  # an MSR-protocol request, or no GHCB the guest could read
        if self.rng.random() >= self.p:
            return
        kind = self.rng.choice(LIE_KINDS)
        self.lies[kind] += 1
        page = bytearray(memory.read(msr, GHCB_SIZE))
        self.lie(kind, page)
        memory.write(msr, bytes(page))

    def lie(self, kind: str, page: bytearray) -> None:
        rng = self.rng
        if kind == "exit-info-1":
            GHCB["sw_exit_info_1"].write(page, rng.choice([1, 2, 3, 0xFFFF_FFFF, _u64(rng)]))
        elif kind == "exit-info-2":
            if rng.random() < 0.5:
                GHCB["sw_exit_info_1"].write(page, 1)  # "take this exception" ...
            GHCB["sw_exit_info_2"].write(page, _u64(rng))  # ... with any event
        elif kind == "register":
            GHCB[rng.choice(LIE_REGISTERS)].write(page, _u64(rng))
        elif kind == "valid-bits":
            bitmap = GHCB["valid_bitmap"].read(page)
            for _ in range(rng.randint(1, 4)):
                bitmap ^= 1 << rng.randrange(8 * GHCB["valid_bitmap"].size)
            GHCB["valid_bitmap"].write(page, bitmap)
        elif kind == "scratch":
            GHCB["sw_scratch"].write(page, _u64(rng))
        else:  # string I/O: another count, and garbage where the data would be
            if GHCB["sw_exit_code"].read(page) == SvmExit.IOIO and (
                GHCB["sw_exit_info_1"].read(page) & Ioio.STR
            ):
                GHCB["sw_exit_info_2"].write(page, rng.choice([0, 1, 0x7F0, 0x10000, _u64(rng)]))
            length = rng.randint(1, SHARED_BUFFER_SIZE)
            page[SHARED_BUFFER_OFFSET : SHARED_BUFFER_OFFSET + length] = rng.randbytes(length)


@dataclass
class FuzzTally:
    """How the runs of a fuzz campaign ended."""

    runs: int = 0
    cases: int = 0
    completed: int = 0
    corrupted: int = 0
    host_exceptions: int = 0
    terminations: Counter[str] = field(default_factory=Counter)
    other_endings: Counter[str] = field(default_factory=Counter)
    lies: Counter[str] = field(default_factory=Counter)


def payload() -> Program:
    return assemble(
        lab_source("fuzz_payload"),
        base=abi.PAYLOAD_GPA,
        name="lab/fuzz_payload.S",
        defines={"ROUNDS": ROUNDS},
    )


def boot(code: bytes, mode: str = "sev-es") -> Hypervisor:
    """A fresh guest: sevx86's firmware with the fuzz payload, and an honest hypervisor."""
    booted = boot_machine(code, GuestConfig(mode=GuestMode(mode), memory=MEMORY))
    return Hypervisor(booted.machine.host_view())


def fuzz(cases: int, seed: int, p: float = DEFAULT_PROBABILITY) -> FuzzTally:
    """Boot fresh guests against ``LyingHost`` until ``cases`` lies were told."""
    code = payload().code
    rng = random.Random(seed)
    tally = FuzzTally()
    while tally.cases < cases:
        hv = boot(code)
        host = LyingHost(hv, rng, p)
        result = hv.run(timeout=60)
        tally.runs += 1
        tally.cases += sum(host.lies.values())
        tally.lies.update(host.lies)
        if result.reason is RunReason.EXIT_STATUS and result.exit_status == 0:
            tally.completed += 1
        elif result.reason is RunReason.EXIT_STATUS and result.exit_status == STATUS_CORRUPTED:
            tally.corrupted += 1
        elif result.reason is RunReason.TERMINATED and result.termination is not None:
            t = result.termination
            tally.terminations[f"{t.by} set {t.reason_set} code {t.reason_code}"] += 1
        elif result.reason is RunReason.HYPERVISOR_ERROR:
            tally.host_exceptions += 1
        else:
            tally.other_endings[f"{result.reason.value} {result.exit_status or ''}".strip()] += 1
    return tally


def run(modes: Sequence[str], seed: int, cases: int = DEFAULT_CASES) -> Report:
    tally = fuzz(cases, seed)
    figures = {
        "lies told (cases)": tally.cases,
        "lie probability per GHCB answer": DEFAULT_PROBABILITY,
        "runs": tally.runs,
        "completed runs": tally.completed,
        "clean terminations": sum(tally.terminations.values()),
        "terminations by reason": dict(sorted(tally.terminations.items())),
        "other endings": dict(sorted(tally.other_endings.items())),
        "lies by kind": dict(sorted(tally.lies.items())),
        "corrupted guest states": tally.corrupted,
        "host exceptions": tally.host_exceptions,
    }
    verdict = (
        "no lie corrupted the guest: each was absorbed or refused"
        if tally.corrupted == 0 and tally.host_exceptions == 0
        else "SOME LIE GOT THROUGH: see corrupted guest states / host exceptions"
    )
    report = Report(
        "host-fuzz",
        "a hostile host, fuzzed",
        f"Fresh SEV-ES guests (sevx86's firmware, a payload checking its own state after each "
        f"of {8 * ROUNDS} #VCs) against a host that, after the honest answer, rewrites one part "
        f"of the GHCB with probability {DEFAULT_PROBABILITY}: SW_EXITINFO1/2, a register, valid "
        "bits, SW_SCRATCH, string-I/O counts and data.",
        seed,
    )
    report.outcomes = [ModeOutcome("sev-es", figures, verdict)]
    report.notes.append(
        f"{cases} lies here (--cases N for more); tests/lab/test_host_fuzz.py tells 10,000 (slow)."
    )
    return report


SCENARIO = Scenario(
    "host-fuzz",
    "a hostile host, fuzzed",
    ("sev-es",),
    run,
    "docs/lab/host-fuzz.md",
    cases=DEFAULT_CASES,
)
