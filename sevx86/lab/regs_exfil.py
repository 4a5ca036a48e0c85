"""Scenario 1, register exfiltration at an exit (docs/lab/regs-exfil.md).

The guest (guest_asm/lab/regs_exfil.S) keeps a secret in R14/R15 across a
CPUID and an OUT. The host only records what each exit hands it
(``ExitRecorder``); the lab then looks for the secret in those records and
in the whole of DRAM as the host reads it. Without SEV-ES the register file
comes with every intercepted exit; under SEV-ES the host gets the GHCB --
the fields the #VC handler chose to fill -- and VMSA ciphertext.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sevx86.arch.exits import SvmExit
from sevx86.lab.guest import MODES, launch
from sevx86.lab.recorder import ExitRecorder
from sevx86.lab.report import ModeOutcome, Report
from sevx86.lab.scenario import Scenario

RECORDED_EXITS = (SvmExit.CPUID, SvmExit.IOIO, SvmExit.VMGEXIT, SvmExit.HLT)


def make_secret(seed: int) -> int:
    """A 64-bit secret with no zero byte (so it cannot match padding by chance)."""
    rng = random.Random(seed)
    return int.from_bytes(bytes(rng.randrange(1, 256) for _ in range(8)), "little")


def run_mode(mode: str, secret: int) -> ModeOutcome:
    guest = launch("regs_exfil", mode, defines={"SECRET": secret})
    recorder = ExitRecorder(guest.hv, RECORDED_EXITS)
    result = guest.hv.run(timeout=60)
    pattern = secret.to_bytes(8, "little")
    in_regs = sorted(
        {
            name
            for s in recorder.sightings
            if s.registers
            for name, value in s.registers.items()
            if value == secret
        }
    )
    exits_with_regs = sum(
        1 for s in recorder.sightings if s.registers and secret in s.registers.values()
    )
    in_ghcb = sum(1 for s in recorder.sightings if s.ghcb is not None and pattern in s.ghcb)
    in_vmsa = sum(1 for s in recorder.sightings if s.vmsa is not None and pattern in s.vmsa)
    in_dram = any(pattern in data for _, data in guest.hv.host.memory.image())
    shared = sorted({name for s in recorder.sightings for name in s.ghcb_valid_fields()})
    leaked = bool(in_regs or in_ghcb or in_vmsa or in_dram)
    figures = {
        "guest run": f"{result.reason.value} {result.exit_status}",
        "exits recorded": len(recorder.sightings),
        "exits handing over the secret in a register": exits_with_regs,
        "registers holding it": in_regs,
        "GHCB pages holding it": in_ghcb,
        "VMSA pages holding it (plaintext)": in_vmsa,
        "secret anywhere in host-read DRAM": in_dram,
        "GHCB register fields the guest shared": shared,
        "host learned the secret": leaked,
    }
    if mode == "sev-es":
        verdict = "the host saw only the GHCB fields the #VC handler filled" + (
            " -- and still found the secret" if leaked else "; the secret stayed private"
        )
    else:
        verdict = f"every intercepted exit hands the host the registers ({', '.join(in_regs)})"
    return ModeOutcome(mode, figures, verdict)


def run(modes: Sequence[str], seed: int) -> Report:
    secret = make_secret(seed)
    report = Report(
        "regs-exfil",
        "register exfiltration at an exit",
        "The guest keeps a 64-bit secret in R14/R15 across a CPUID and an OUT. The host records "
        "what each exit gives it (registers, the GHCB page, the VMSA page) and the lab searches "
        "those records and all of DRAM, as the host reads it, for the secret.",
        seed,
    )
    report.outcomes = [run_mode(mode, secret) for mode in modes]
    return report


SCENARIO = Scenario(
    "regs-exfil", "register exfiltration at an exit", MODES, run, "docs/lab/regs-exfil.md"
)
