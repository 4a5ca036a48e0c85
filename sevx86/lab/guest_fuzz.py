"""Scenario 7, a hostile guest, fuzzed (docs/lab/guest-fuzz.md).

The guest (guest_asm/lab/guest_fuzz.S) sends GHCB and MSR-protocol requests
made of random bits -- malformed valid bitmaps, scratch areas outside the
shared buffer or beyond RAM, unknown exit codes, protocol versions 0..3,
GHCB addresses in private memory, beyond RAM or anywhere -- to the
hypervisor as it is (no hooks: the host under test is ``Hypervisor``). Bad
input from a guest is a normal event: the host must answer (an error in
SW_EXITINFO1, an MSR left alone) or refuse to go on with a reason, never
raise, never touch memory it should not. Each run ends with the guest's own
"done" termination unless the host stopped it first.
"""

from __future__ import annotations

import random
import re
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sevx86.hv import Hypervisor, RunReason
from sevx86.lab.guest import launch
from sevx86.lab.report import ModeOutcome, Report
from sevx86.lab.scenario import Scenario

DONE = (0xF, 0x42)  # reason set and code of guest_asm/lab/guest_fuzz.S's last request
CASES_PER_RUN = 2000
DEFAULT_CASES = 500  # the CLI's; the slow test sends 10,000
CANARY_BYTE = 0xA5
GHCB_ANSWERS = ("ok (0)", "exception (1)", "error (2)", "other")
PAGE = 0x1000


@dataclass
class GuestFuzzTally:
    runs: int = 0
    cases: int = 0
    ghcb_answers: Counter[str] = field(default_factory=Counter)
    msr_answers: Counter[str] = field(default_factory=Counter)
    endings: Counter[str] = field(default_factory=Counter)
    host_exceptions: int = 0
    private_page_changed: int = 0


def _shape(detail: str) -> str:
    """A host's reason without its numbers, to group endings."""
    return re.sub(r"0x[0-9a-fA-F]+|\d+", "N", detail.splitlines()[0] if detail else "")[:90]


def fuzz(
    cases: int,
    seed: int,
    per_run: int = CASES_PER_RUN,
    *,
    hv_class: type[Hypervisor] = Hypervisor,
) -> GuestFuzzTally:
    """Run fresh hostile guests against ``hv_class`` until ``cases`` requests were sent."""
    rng = random.Random(seed)
    tally = GuestFuzzTally()
    while tally.cases < cases:
        defines = {"SEED": rng.getrandbits(63) | 1, "CASES": min(per_run, cases - tally.cases)}
        guest = launch("guest_fuzz", "sev-es", defines=defines, vc_handler=False, hv_class=hv_class)
        result = guest.hv.run(timeout=300)
        tally.runs += 1
        memory = guest.machine.memory  # the experimenter's view
        done = guest.private_u64("done_cases")
        tally.cases += max(done, 1)
        answers = struct.unpack("<4Q", memory.read_private(guest.symbol("ghcb_answers"), 32))
        for name, count in zip(GHCB_ANSWERS, answers, strict=True):
            tally.ghcb_answers[name] += count
        msr = memory.read_private(guest.symbol("msr_answers"), 16)
        alone, answered = struct.unpack("<2Q", msr)
        tally.msr_answers["answered"] += answered
        tally.msr_answers["left alone"] += alone
        canary = memory.read_private(guest.symbol("canary_page"), PAGE)
        tally.private_page_changed += canary != bytes([CANARY_BYTE]) * PAGE
        t = result.termination
        if result.reason is RunReason.HYPERVISOR_ERROR:
            tally.host_exceptions += 1
            tally.endings[f"host exception: {_shape(result.detail)}"] += 1
        elif t is not None and (t.by, t.reason_set, t.reason_code) == ("guest", *DONE):
            tally.endings["all cases sent"] += 1
        elif t is not None and t.by == "hypervisor":
            tally.endings[f"host refused to go on: {_shape(t.detail)}"] += 1
        else:
            tally.endings[f"{result.reason.value}: {_shape(result.detail)}"] += 1
    return tally


def run(modes: Sequence[str], seed: int, cases: int = DEFAULT_CASES) -> Report:
    tally = fuzz(cases, seed)
    figures = {
        "requests sent (cases)": tally.cases,
        "runs": tally.runs,
        "GHCB answers": dict(tally.ghcb_answers),
        "MSR-protocol answers": dict(tally.msr_answers),
        "how runs ended": dict(sorted(tally.endings.items())),
        "host exceptions": tally.host_exceptions,
        "private page changed by the host": tally.private_page_changed,
    }
    verdict = (
        "every request was answered or refused without a host exception"
        if tally.host_exceptions == 0
        else "THE HOST RAISED: see host exceptions"
    )
    if tally.private_page_changed:
        verdict += (
            f"; but in {tally.private_page_changed} runs the host wrote its answer into the "
            "private page the GHCB MSR pointed at (an unregistered GHCB)"
        )
    report = Report(
        "guest-fuzz",
        "a hostile guest, fuzzed",
        "A guest sends GHCB and MSR-protocol requests built from a seeded xorshift generator: "
        "random save areas and valid bitmaps, known and unknown exit codes, scratch areas in, "
        "past and far beyond the shared buffer, protocol versions 0..3, the GHCB MSR pointing at "
        "a private page, beyond RAM or anywhere. The hypervisor is the stock one.",
        seed,
    )
    report.outcomes = [ModeOutcome("sev-es", figures, verdict)]
    report.notes.append(
        f"{cases} requests here (--cases N for more); tests/lab/test_guest_fuzz.py sends 10,000."
    )
    return report


SCENARIO = Scenario(
    "guest-fuzz",
    "a hostile guest, fuzzed",
    ("sev-es",),
    run,
    "docs/lab/guest-fuzz.md",
    cases=DEFAULT_CASES,
)
