"""Scenario 3, CipherLeaks: register values from VMSA ciphertext (docs/lab/cipherleaks.md).

Li, Zhang, Wang, Lin, "CipherLeaks: Breaking Constant-time Cryptography on
AMD SEV via the Ciphertext Side Channel", USENIX Security 2021. The memory
encryption of SEV/SEV-ES is a tweakable block cipher whose tweak depends
only on the physical address, and the VMSA of a vCPU stays at one address:
the same register values give the same ciphertext at every exit. A host
that learns the plaintext of a slot once (a loop counter the guest also
reports, RAX at a CPUID exit) can read it again whenever it recurs.

``CipherLeaksHost`` is the attack, on one ``on_vmgexit`` hook: at each IOIO
request it reads the 16-byte VMSA block holding R14/R15 (ciphertext, from
DRAM). Warm-up reports (port 0x80) pair that block with the counter the
guest reports; at each work report (port 0x81) it looks the block up. The
scenario then compares what it recovered with the secret the lab chose.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sevx86.arch.exits import SvmExit
from sevx86.arch.vmcb import decode_ioio
from sevx86.arch.vmsa import VMSA
from sevx86.hv import GhcbRequest, Hypervisor
from sevx86.lab.guest import launch
from sevx86.lab.report import ModeOutcome, Report
from sevx86.lab.scenario import Scenario

WARMUP_PORT = 0x80  # guest_asm/lab/cipherleaks.S
WORK_PORT = 0x81
WARMUP_ROUNDS = 4
SECRET_BITS = 32
BLOCK = 16  # the memory encryption's block (sevx86.memory.cipher)
# The VMSA block the secret register shares with its neighbour (R14 at 0x370, R15 at 0x378).
SECRET_BLOCK = VMSA["r15"].offset & ~(BLOCK - 1)


class CipherLeaksHost:
    """The attack: a ciphertext -> plaintext dictionary of one VMSA block, from one hook."""

    def __init__(self, hv: Hypervisor):
        self.hv = hv
        self.dictionary: dict[bytes, int] = {}
        self.observed: list[bytes] = []  # the block at each work report, in order
        self.warmup_exits = 0
        hv.on_vmgexit(SvmExit.IOIO, self.observe)

    def observe(self, req: GhcbRequest, proceed) -> None:
        port = decode_ioio(req.info1).port
        gpa = req.vcpu.vmsa_gpa
        if gpa is not None and port in (WARMUP_PORT, WORK_PORT):
            block = self.hv.host.memory.read(gpa + SECRET_BLOCK, BLOCK)
            if port == WARMUP_PORT:
                # Known plaintext: the guest reports the counter it also keeps in R15.
                self.dictionary[block] = req.reg("rax") & 0xFF
                self.warmup_exits += 1
            else:
                self.observed.append(block)
        proceed()

    def recovered(self) -> list[int | None]:
        """Bit i of the secret as the dictionary reads it (None: ciphertext never seen)."""
        return [self.dictionary.get(block) for block in self.observed]


def make_secret(seed: int) -> int:
    return random.Random(seed).getrandbits(SECRET_BITS)


def attack(secret: int, *, no_repeat: bool) -> ModeOutcome:
    defines: dict[str, int | str] = {
        "SECRET": secret,
        "SECRET_BITS": SECRET_BITS,
        "WARMUP_ROUNDS": WARMUP_ROUNDS,
    }
    if no_repeat:
        defines["NO_REPEAT"] = 1
    guest = launch("cipherleaks", "sev-es", defines=defines, vc_handler=False)
    host = CipherLeaksHost(guest.hv)
    result = guest.hv.run(timeout=60)
    bits = host.recovered()
    known = [(i, b) for i, b in enumerate(bits) if b is not None]
    correct = sum(1 for i, b in known if b == (secret >> i) & 1)
    guess = sum(b << i for i, b in known if b in (0, 1))
    figures = {
        "guest run": f"{result.reason.value} {result.exit_status}",
        "secret bits": SECRET_BITS,
        "exits observed": host.warmup_exits + len(bits),
        "exits to build the dictionary": host.warmup_exits,
        "dictionary entries": len(host.dictionary),
        "bits recovered": len(known),
        "bits correct": correct,
        "secret recovered": f"{guess:#010x}" if len(known) == SECRET_BITS else "no",
        "actual secret": f"{secret:#010x}",
    }
    if no_repeat:
        verdict = (
            f"guest never repeats a (R14, R15) block: {len(known)} of {SECRET_BITS} bits learned"
        )
    else:
        verdict = (
            f"{correct} of {SECRET_BITS} bits read from VMSA ciphertext alone, "
            f"after {host.warmup_exits} known-plaintext exits; the guest cannot notice"
        )
    return ModeOutcome("sev-es (no repeat)" if no_repeat else "sev-es", figures, verdict)


def run(modes: Sequence[str], seed: int) -> Report:
    secret = make_secret(seed)
    report = Report(
        "cipherleaks",
        "CipherLeaks: registers read from VMSA ciphertext",
        "At every VMGEXIT the host reads the ciphertext of the VMSA block holding R14/R15. "
        f"{WARMUP_ROUNDS} warm-up exits, where the guest reports a counter it also keeps in R15, "
        f"give ciphertext -> value pairs; then the guest processes a {SECRET_BITS}-bit secret one "
        "bit at a time in R15, exiting for a public progress report after each bit. Second "
        "column: the same host against the guest built so that R14 counts every exit.",
        seed,
    )
    report.outcomes = [attack(secret, no_repeat=False), attack(secret, no_repeat=True)]
    report.notes.append(
        "Without SEV-ES the registers are not encrypted at all: see regs-exfil. SEV-SNP keeps "
        "the same deterministic encryption; docs/lab/cipherleaks.md has the mitigations."
    )
    return report


SCENARIO = Scenario(
    "cipherleaks",
    "CipherLeaks: registers read from VMSA ciphertext",
    ("sev-es",),
    run,
    "docs/lab/cipherleaks.md",
)
