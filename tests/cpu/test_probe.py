"""The engine probe: each probe is the instruction it claims, and failures are detected."""

from __future__ import annotations

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from unicorn import x86_const as ux

from sevx86.arch.cpuid import FEATURES
from sevx86.cpu.probe import (
    ENGINE_ABSENT,
    ENGINE_PROVIDED,
    PLATFORM,
    PROBES,
    Probe,
    engine_support,
    run_probe,
)


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.feature)
def test_probe_bytes_are_one_instruction_with_the_claimed_mnemonic(probe):
    code = bytes.fromhex(probe.code)
    insns = list(Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, 0))
    assert len(insns) == 1 and insns[0].size == len(code)
    assert insns[0].mnemonic == probe.mnemonic
    assert probe.feature in FEATURES


def test_classifications_name_real_features_and_do_not_overlap():
    probed = {p.feature for p in PROBES}
    for table in (ENGINE_PROVIDED, ENGINE_ABSENT, PLATFORM):
        assert set(table) <= set(FEATURES)
    assert not set(ENGINE_PROVIDED) & set(ENGINE_ABSENT)
    assert not set(ENGINE_PROVIDED) & probed
    assert not set(PLATFORM) & (probed | set(ENGINE_PROVIDED) | set(ENGINE_ABSENT))


def test_the_instructions_the_linux_trial_boot_tripped_on_do_not_run_in_unicorn_2_1():
    """Issue 14: each failed in plain Unicorn 2.1 (QEMU 5's TCG has no VEX, SHA,
    INVPCID, RDPID, XSAVES/XSAVEC for this CPU model)."""
    support = engine_support()
    for name in ("invpcid", "xsaves", "xsavec", "rdpid", "avx", "avx2", "sha_ni", "fma"):
        assert name in support.failures, name
        assert not support.supports(name)
    # WRPKRU itself runs (CR4.PKE set) but the MMU does not enforce keys: not offered.
    assert "pku" in support.runs and not support.supports("pku")


def test_instructions_the_engine_has_run_and_their_results_are_checked():
    support = engine_support()
    for name in ("sse2", "ssse3", "sse4_2", "popcnt", "abm", "bmi1", "bmi2", "fsgsbase"):
        assert support.supports(name), support.failures.get(name)


def test_a_probe_that_faults_or_computes_the_wrong_value_fails():
    assert run_probe(Probe("sse", "0f0b", "ud2")) is not None  # #UD
    assert run_probe(Probe("sse", "0f58c1", "addps")) is None
    # LZCNT of 1 is 31; BSR (what LZCNT is without ABM) would give 0.
    wrong = Probe(
        "abm", "f30fbdc3", "lzcnt", {ux.UC_X86_REG_RBX: 1}, expect=(ux.UC_X86_REG_RAX, 30)
    )
    assert "computed" in (run_probe(wrong) or "")
