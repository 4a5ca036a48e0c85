"""A hostile host, fuzzed: lies in the GHCB answers never corrupt the guest or crash the host.

The guest checks after every #VC what the #VC handler promises no answer can
change (guest_asm/README.md); a lie is either absorbed (a different but
well-formed answer) or refused (a termination request with a reason).
"""

from __future__ import annotations

import pytest

from sevx86.arch.exits import SvmExit
from sevx86.hv import RunReason
from sevx86.lab import host_fuzz


def test_the_payload_completes_under_an_honest_host():
    hv = host_fuzz.boot(host_fuzz.payload().code)
    assert hv.run(timeout=60).ok


def test_the_payload_sees_a_register_the_host_changes():
    """The control: the corruption check can fail. Without SEV-ES the host owns the
    registers, and changing R8 at an OUT is exactly what the payload must notice."""
    hv = host_fuzz.boot(host_fuzz.payload().code, mode="sev")

    def clobber(ctx, proceed):
        proceed()
        if ctx.exit.regs is not None and ctx.exit.regs["r8"] >> 48 == 0xC4A2:
            ctx.exit.regs["r8"] = 0

    hv.on_exit(SvmExit.IOIO, clobber)
    result = hv.run(timeout=60)
    assert result.reason is RunReason.EXIT_STATUS
    assert result.exit_status == host_fuzz.STATUS_CORRUPTED


def test_a_small_campaign_is_clean_and_covers_every_kind_of_lie():
    tally = host_fuzz.fuzz(150, seed=2)
    assert tally.cases >= 150
    assert tally.corrupted == 0 and tally.host_exceptions == 0
    assert set(tally.lies) == set(host_fuzz.LIE_KINDS)
    assert tally.completed + sum(tally.terminations.values()) + sum(
        tally.other_endings.values()
    ) == tally.runs
    # Every termination is the guest's own, with a reason (never a crash of either side).
    assert all(key.startswith("guest set ") for key in tally.terminations)


@pytest.mark.slow
def test_ten_thousand_lies_corrupt_nothing():
    tally = host_fuzz.fuzz(10_000, seed=16)
    assert tally.cases >= 10_000
    assert tally.corrupted == 0
    assert tally.host_exceptions == 0
    assert not tally.other_endings, tally.other_endings
