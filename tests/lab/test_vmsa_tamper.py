"""VMSA tampering and rollback.

Expectations: without SEV-ES the host's writes to the register file at an
exit are what the guest resumes with (the guest program reports a hijacked
RIP as status 0x22 and a changed R15 as 0x11); under SEV-ES the state lives
in the VMSA, whose integrity the Secure Processor checks at every VMRUN, so
any change and any older copy is refused, while the unchanged page is not.
"""

from __future__ import annotations

import pytest

from sevx86.arch.vmsa import VMSA_SIZE
from sevx86.lab import vmsa_tamper


@pytest.mark.parametrize("mode", ["none", "sev"])
def test_without_es_the_host_redirects_rip_and_changes_a_register(mode):
    hijack = vmsa_tamper.tamper(mode, "rip", lambda target: target)
    assert hijack.exit_status == vmsa_tamper.STATUS_HIJACKED
    change = vmsa_tamper.tamper(mode, "r15", lambda _: 1)
    assert change.exit_status == vmsa_tamper.STATUS_REGISTER_CHANGED


def test_under_es_the_same_writes_are_refused_at_vmrun():
    assert vmsa_tamper.tamper("sev-es", "rip", lambda target: target).refused
    assert vmsa_tamper.tamper("sev-es", "r15", lambda _: 1).refused


def test_an_untampered_guest_reports_nothing_changed():
    """The control for the two above: the status codes mean what they say."""
    for mode in ("none", "sev", "sev-es"):
        quiet = vmsa_tamper.tamper(mode, "r15", lambda _: 0)
        if mode == "sev-es":
            # Writing zeros in the R15 slot still changes the ciphertext: refused.
            assert quiet.refused
        else:
            assert quiet.exit_status == vmsa_tamper.STATUS_UNCHANGED


def test_flips_across_the_page_and_rollbacks_are_refused_the_same_page_is_not():
    offsets = vmsa_tamper.sampled_offsets(5)[::16]  # one block in 16, spread over the page
    assert vmsa_tamper.flip_sweep(offsets, seed=5) == (len(offsets), 0)
    assert vmsa_tamper.rollback(1).refused and vmsa_tamper.rollback(3).refused
    assert not vmsa_tamper.rollback(0).refused  # the control: an unchanged page runs on


@pytest.mark.slow
def test_a_flip_in_every_block_and_every_rollback_is_refused_the_same_page_is_not():
    outcome = vmsa_tamper.run(["sev-es"], seed=5).mode("sev-es")
    assert outcome["VMSA byte flips tried"] == VMSA_SIZE // 16
    assert outcome["VMSA byte flips refused"] == VMSA_SIZE // 16
    assert outcome["VMSA byte flips accepted"] == 0
    assert outcome["rollbacks refused"] == vmsa_tamper.ROLLBACK_DEPTH
    assert outcome["same page written back: accepted"] is True


def test_the_sampled_offsets_cover_each_block_once():
    offsets = vmsa_tamper.sampled_offsets(9)
    assert sorted(o // 16 for o in offsets) == list(range(VMSA_SIZE // 16))


@pytest.mark.slow
def test_every_byte_of_the_vmsa_page_flipped_is_refused():
    refused, accepted = vmsa_tamper.flip_sweep(range(VMSA_SIZE), seed=11)
    assert (refused, accepted) == (VMSA_SIZE, 0)
