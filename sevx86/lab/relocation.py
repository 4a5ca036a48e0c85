"""Scenario 4, ciphertext relocation and replay (docs/lab/relocation.md).

SEVered (Morbitzer et al., EuroSec 2018) and the SEVurity line of work
(Wilke et al., IEEE S&P 2020) use that SEV and SEV-ES encrypt memory
without integrity: the host may write any DRAM it likes, and the guest
decrypts whatever is there. Two moves, with one ``on_exit`` hook each
exit, on a guest variable (guest_asm/lab/relocation.S):

* relocation: at exit 1 the host copies the ciphertext block of ``counter``
  (holding 1) over ``copy`` (holding 0). The tweak of the cipher depends on
  the physical address, so the guest reads garbage at ``copy``;
* replay: it also keeps that block, and at exit 2, after the guest wrote 2,
  puts it back at the same address. Same key, same address: the guest reads
  its old value 1 -- a counter rolled back, unnoticed.

Without encryption (mode none) both moves simply copy plaintext.
"""

from __future__ import annotations

from collections.abc import Sequence

from sevx86.arch.exits import SvmExit
from sevx86.hv.hypervisor import ExitEvent
from sevx86.lab.guest import MODES, LabGuest, launch
from sevx86.lab.report import ModeOutcome, Report
from sevx86.lab.scenario import Scenario

BLOCK = 16  # the memory encryption's block (sevx86.memory.cipher)
FIRST_VALUE = 1  # what relocation.S writes to `counter` before exit 1 ...
SECOND_VALUE = 2  # ... and before exit 2
COPY_VALUE = 0  # what it leaves in `copy`


class RelocatingHost:
    """At exit 1 keep ``counter``'s block and copy it over ``copy``; at exit 2 put it back."""

    def __init__(self, guest: LabGuest, code: int):
        # The host loaded the image, so it knows where the variables are.
        self.counter = guest.symbol("counter")
        self.copy = guest.symbol("copy")
        self.kept: bytes | None = None
        self.exits = 0
        guest.hv.on_exit(code, self.on_exit)

    def on_exit(self, ctx: ExitEvent, proceed) -> None:
        proceed()
        memory = ctx.hv.host.memory
        if self.exits == 0:
            self.kept = memory.read(self.counter, BLOCK)
            memory.write(self.copy, self.kept)  # relocation
        elif self.exits == 1 and self.kept is not None:
            memory.write(self.counter, self.kept)  # replay
        self.exits += 1


def run_mode(mode: str) -> ModeOutcome:
    guest = launch("relocation", mode)
    code = SvmExit.VMGEXIT if mode == "sev-es" else SvmExit.CPUID
    host = RelocatingHost(guest, code)
    result = guest.hv.run(timeout=60)
    read = guest.machine.memory.read_private(guest.symbol("results"), BLOCK)
    counter_read = int.from_bytes(read[:8], "little")
    copy_read = int.from_bytes(read[8:], "little")
    figures = {
        "guest run": f"{result.reason.value} {result.exit_status}",
        "exits seen by the host": host.exits,
        "counter written last": SECOND_VALUE,
        "counter read after replay": counter_read,
        "replay brought back the old value": counter_read == FIRST_VALUE,
        "copy read after relocation": f"{copy_read:#x}",
        "relocated block read as the original": copy_read == FIRST_VALUE,
        "guest stopped or refused": not result.ok,
    }
    if mode == "none":
        verdict = "no encryption: relocation and replay both move plaintext"
    else:
        verdict = (
            "relocated ciphertext decrypts to garbage (the tweak is the address); replayed "
            "ciphertext at the same address decrypts to the old value: no memory integrity"
        )
    return ModeOutcome(mode, figures, verdict)


def run(modes: Sequence[str], seed: int) -> Report:
    report = Report(
        "relocation",
        "ciphertext relocation and replay",
        f"The guest writes {FIRST_VALUE} to a counter, exits, writes {SECOND_VALUE}, exits. At "
        "exit 1 the host copies the counter's 16-byte DRAM block over another variable "
        f"(holding {COPY_VALUE}) and keeps it; at exit 2 it puts the kept block back. The guest "
        "then reads both.",
        seed,
    )
    report.outcomes = [run_mode(mode) for mode in modes]
    report.notes.append("The seed plays no part: the attack is deterministic.")
    return report


SCENARIO = Scenario(
    "relocation", "ciphertext relocation and replay", MODES, run, "docs/lab/relocation.md"
)
