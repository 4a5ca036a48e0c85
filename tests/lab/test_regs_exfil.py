"""Register exfiltration at an exit: what each mode hands the host.

Expectations from the architecture, not from a recorded run: without SEV-ES
an intercepted exit gives the host the guest's register file (APM vol 2,
15.5), so the secret the program keeps in R14/R15 is there at both of its
exits (CPUID, OUT); under SEV-ES the exit carries no registers (15.35.4) and
the GHCB holds only what the #VC handler put there for CPUID and OUT.
"""

from __future__ import annotations

import pytest

from sevx86.lab import regs_exfil


@pytest.mark.parametrize("mode", ["none", "sev"])
def test_without_es_both_exits_hand_over_the_secret_registers(mode):
    outcome = regs_exfil.run([mode], seed=3).mode(mode)
    assert outcome["exits recorded"] == 2  # the program's CPUID and OUT
    assert outcome["exits handing over the secret in a register"] == 2
    assert outcome["registers holding it"] == ["r14", "r15"]
    assert outcome["host learned the secret"] is True


def test_memory_encryption_hides_the_immediate_but_not_the_registers():
    report = regs_exfil.run(["none", "sev"], seed=4)
    assert report.mode("none")["secret anywhere in host-read DRAM"] is True  # plaintext image
    assert report.mode("sev")["secret anywhere in host-read DRAM"] is False  # encrypted image


@pytest.mark.parametrize("seed", [1, 2])
def test_under_sev_es_the_host_sees_only_the_ghcb_fields_of_cpuid_and_out(seed):
    outcome = regs_exfil.run(["sev-es"], seed=seed).mode("sev-es")
    assert outcome["guest run"] == "exit-status 0"
    assert outcome["exits handing over the secret in a register"] == 0
    assert outcome["GHCB pages holding it"] == 0
    assert outcome["VMSA pages holding it (plaintext)"] == 0
    assert outcome["secret anywhere in host-read DRAM"] is False
    # GHCB spec 56421, table of NAE events: CPUID sends RAX, RCX (and XCR0), OUT sends RAX.
    shared = set(outcome["GHCB register fields the guest shared"])
    assert {"rax", "rcx"} <= shared <= {"rax", "rcx", "xcr0"}
    assert outcome["host learned the secret"] is False


def test_the_secret_depends_on_the_seed_and_has_no_zero_byte():
    secrets = {regs_exfil.make_secret(seed) for seed in range(20)}
    assert len(secrets) == 20
    assert all(0 not in s.to_bytes(8, "little") for s in secrets)
