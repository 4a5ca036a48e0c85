"""Scenario 2, VMSA tampering and rollback (docs/lab/vmsa-tamper.md).

Three things a hostile host does to a vCPU's saved state, all with an
``on_exit`` hook:

* redirect RIP to a label nothing jumps to, and change a register the guest
  never writes again (guest_asm/lab/vmsa_tamper.S reports which happened in
  its exit status). Without SEV-ES the hook writes the register file the exit
  hands over, and the guest runs on with it. Under SEV-ES it can only write
  the VMSA page in DRAM, without the key.
* flip one byte of the VMSA page at a seeded offset in each of its 256
  16-byte blocks (``flip_sweep`` takes any offsets: the slow test does all
  4096);
* put back the VMSA page of 1..N exits earlier (a rollback), and, as the
  control, write back the current page unchanged.

Under SEV-ES every change must end in a refused VMRUN (the Secure Processor
checks the VMSA's integrity at every entry; sevx86.sp), and the control must
be accepted: the check refuses changes, not writes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sevx86.arch.exits import SvmExit
from sevx86.arch.vmsa import VMSA, VMSA_SIZE
from sevx86.hv import RunReason
from sevx86.hv.hypervisor import ExitEvent
from sevx86.lab.guest import MODES, launch
from sevx86.lab.report import ModeOutcome, Report
from sevx86.lab.scenario import Scenario

ROUNDS = 4
ROLLBACK_DEPTH = 8
DEFAULT_FLIPS = 256  # one per 16-byte block of the page
BLOCK = 16  # the memory encryption's block (sevx86.memory.cipher)

# The exit statuses of guest_asm/lab/vmsa_tamper.S.
STATUS_UNCHANGED = 0x00
STATUS_REGISTER_CHANGED = 0x11
STATUS_HIJACKED = 0x22


@dataclass(frozen=True)
class TamperResult:
    """What became of the guest after one tampering."""

    reason: RunReason
    exit_status: int | None

    @property
    def refused(self) -> bool:
        return self.reason is RunReason.VMRUN_FAILED

    def describe(self) -> str:
        if self.refused:
            return "refused at VMRUN"
        if self.reason is RunReason.EXIT_STATUS:
            return {
                STATUS_HIJACKED: "guest ran the hijacked path",
                STATUS_REGISTER_CHANGED: "guest ran on with the host's value",
                STATUS_UNCHANGED: "no effect",
            }.get(self.exit_status or 0, f"status {self.exit_status:#x}")
        return self.reason.value


def once_after(code: int, action: Callable[[ExitEvent], None], *, at: int = 0):
    """An ``on_exit`` hook: the normal handling, then ``action`` at the ``at``-th exit only."""
    seen = [0]

    def hook(ctx: ExitEvent, proceed) -> None:
        proceed()
        if seen[0] == at:
            action(ctx)
        seen[0] += 1

    return hook


def write_register(register: str, value: int) -> Callable[[ExitEvent], None]:
    """Set ``register`` the only way this mode lets the host: the register file or the VMSA."""

    def action(ctx: ExitEvent) -> None:
        if ctx.exit.regs is not None:  # none / sev: the host owns the registers at an exit
            ctx.exit.regs[register] = value
        else:  # SEV-ES: the host can write the page, but only as ciphertext it cannot make
            slot = ctx.vcpu.vmsa_gpa + VMSA[register].offset
            ctx.hv.host.memory.write(slot, value.to_bytes(VMSA[register].size, "little"))

    return action


def tamper(mode: str, register: str, value_of: Callable[[int], int]) -> TamperResult:
    """Run vmsa_tamper.S with ``register`` set to ``value_of(address of hijacked)`` at exit 1."""
    guest = launch("vmsa_tamper", mode, defines={"ROUNDS": ROUNDS})
    code = SvmExit.VMGEXIT if mode == "sev-es" else SvmExit.CPUID
    value = value_of(guest.symbol("hijacked"))
    guest.hv.on_exit(code, once_after(code, write_register(register, value)))
    result = guest.hv.run(timeout=60)
    return TamperResult(result.reason, result.exit_status)


def _rewrite_vmsa(at: int, page_of: Callable[[list[bytes]], bytes]) -> TamperResult:
    """vmsa_flip.S under SEV-ES: at VMGEXIT ``at``, write ``page_of(pages so far)`` over the VMSA.

    The run stops at the exit after it: a page that is accepted lets the
    guest's endless loop exit again, which is the proof it ran.
    """
    guest = launch("vmsa_flip", "sev-es", vc_handler=False)
    pages: list[bytes] = []

    def hook(ctx: ExitEvent, proceed) -> None:
        proceed()
        memory, gpa = ctx.hv.host.memory, ctx.vcpu.vmsa_gpa
        if len(pages) == at:
            memory.write(gpa, page_of(pages + [memory.read(gpa, VMSA_SIZE)]))
        elif len(pages) > at:
            ctx.hv.stop("the tampered state was accepted: the guest exited again")
        pages.append(memory.read(gpa, VMSA_SIZE))

    guest.hv.on_exit(SvmExit.VMGEXIT, hook)
    result = guest.hv.run(timeout=60)
    return TamperResult(result.reason, result.exit_status)


def flip_sweep(offsets: Iterable[int], seed: int) -> tuple[int, int]:
    """(refused, accepted) over one-byte flips at ``offsets`` of the VMSA page (one run each)."""
    rng = random.Random(seed)
    refused = accepted = 0
    for offset in offsets:
        mask = 1 << rng.randrange(8)

        def flip(pages: list[bytes], offset: int = offset, mask: int = mask) -> bytes:
            page = bytearray(pages[-1])
            page[offset] ^= mask
            return bytes(page)

        if _rewrite_vmsa(0, flip).refused:
            refused += 1
        else:
            accepted += 1
    return refused, accepted


def sampled_offsets(seed: int, count: int = DEFAULT_FLIPS) -> list[int]:
    """``count`` offsets of the VMSA page to flip, seeded.

    Up to one per 16-byte block, the blocks evenly spread over the page and a
    random byte in each; more than that, a random sample; the page size or
    more, every byte.
    """
    rng = random.Random(seed)
    blocks = VMSA_SIZE // BLOCK
    if count >= VMSA_SIZE:
        return list(range(VMSA_SIZE))
    if count > blocks:
        return sorted(rng.sample(range(VMSA_SIZE), count))
    return [(i * blocks // count) * BLOCK + rng.randrange(BLOCK) for i in range(count)]


def rollback(depth: int) -> TamperResult:
    """Put back the VMSA page of ``depth`` exits earlier (0: the current page, unchanged)."""
    return _rewrite_vmsa(ROLLBACK_DEPTH, lambda pages: pages[-1 - depth])


def run_mode(mode: str, seed: int, flips: int = DEFAULT_FLIPS) -> ModeOutcome:
    hijack = tamper(mode, "rip", lambda target: target)
    change = tamper(mode, "r15", lambda _: 1)
    figures: dict = {
        "RIP redirected to an unused label": hijack.describe(),
        "R15 set to 1": change.describe(),
    }
    if mode != "sev-es":
        figures["VMSA byte flips tried"] = "n/a: no VMSA"
        verdict = (
            "the host rewrites any register at any exit and the guest cannot tell: "
            "control flow and data are the host's"
        )
        return ModeOutcome(mode, figures, verdict)
    offsets = sampled_offsets(seed, flips)
    refused, accepted = flip_sweep(offsets, seed)
    rollbacks = [rollback(depth) for depth in range(1, ROLLBACK_DEPTH + 1)]
    control = rollback(0)
    figures.update(
        {
            "VMSA byte flips tried": len(offsets),
            "VMSA byte flips refused": refused,
            "VMSA byte flips accepted": accepted,
            "rollbacks tried (1..N exits back)": len(rollbacks),
            "rollbacks refused": sum(r.refused for r in rollbacks),
            "same page written back: accepted": not control.refused,
        }
    )
    verdict = (
        "every change to the VMSA, and every old VMSA put back, ended in a refused VMRUN; "
        "the guest never ran on a state the host chose"
    )
    return ModeOutcome(mode, figures, verdict)


def run(modes: Sequence[str], seed: int, cases: int = DEFAULT_FLIPS) -> Report:
    report = Report(
        "vmsa-tamper",
        "VMSA tampering and rollback",
        "At an exit the host redirects RIP to a label nothing jumps to and sets a register the "
        f"guest never writes; under SEV-ES it also flips one byte at each of "
        f"{min(cases, VMSA_SIZE)} offsets of the VMSA page (one run per flip; --cases "
        f"{VMSA_SIZE} flips every byte) and puts back the VMSA of 1..{ROLLBACK_DEPTH} exits "
        "earlier, with the unchanged page written back as the control.",
        seed,
    )
    report.outcomes = [run_mode(mode, seed, cases) for mode in modes]
    return report


SCENARIO = Scenario(
    "vmsa-tamper",
    "VMSA tampering and rollback",
    MODES,
    run,
    "docs/lab/vmsa-tamper.md",
    cases=DEFAULT_FLIPS,
)
