"""A hostile guest, fuzzed: malformed GHCB and MSR-protocol requests never break the host.

Expectation (the project's rule, and KVM's: sev_es_validate_vmgexit answers
bad input with an error, never a host crash): every request is answered or
the host refuses to go on with a reason; no host exception; no write into
private memory the guest never registered as its GHCB.
"""

from __future__ import annotations

import pytest

from sevx86.arch.ghcb import GhcbMsr
from sevx86.hv import Hypervisor
from sevx86.lab import guest_fuzz

EXPECTED_ENDINGS = ("all cases sent", "host refused to go on: ")


def test_a_small_campaign_raises_nothing_and_answers_most_requests_with_errors():
    tally = guest_fuzz.fuzz(300, seed=3)
    assert tally.cases >= 300
    assert tally.host_exceptions == 0
    assert all(e.startswith(EXPECTED_ENDINGS) for e in tally.endings), tally.endings
    # Random valid bitmaps and exit codes are mostly invalid: the GHCB spec's answer is
    # SW_EXITINFO1 = 2 with a reason in SW_EXITINFO2.
    assert tally.ghcb_answers["error (2)"] > tally.ghcb_answers["ok (0)"]
    assert sum(tally.msr_answers.values()) > 0


def test_a_host_that_raises_is_counted():
    """The control: the campaign does see a host exception when there is one."""

    class Broken(Hypervisor):
        def __init__(self, host, **kwargs):
            super().__init__(host, **kwargs)
            self.on_msr_protocol(GhcbMsr.SEV_INFO_REQ, self.fail)

        def fail(self, req, proceed):
            raise RuntimeError("a bug in a hook")

    tally = guest_fuzz.fuzz(400, seed=4, hv_class=Broken)
    assert tally.host_exceptions >= 1


def test_no_request_makes_the_host_write_private_memory():
    assert guest_fuzz.fuzz(600, seed=5).private_page_changed == 0


@pytest.mark.slow
def test_ten_thousand_hostile_requests_raise_nothing():
    tally = guest_fuzz.fuzz(10_000, seed=17)
    assert tally.cases >= 10_000
    assert tally.host_exceptions == 0
    assert all(e.startswith(EXPECTED_ENDINGS) for e in tally.endings), tally.endings
