"""Interface attacks: what the firmware and the #VC handler catch, and what nothing can.

Expectations from the firmware's and handler's documented checks
(firmware/README.md, guest_asm/README.md: reason codes), from the GHCB spec
(the SEV information carries the C-bit) and from what is knowable at all: a
plausible device answer cannot be told from a true one.
"""

from __future__ import annotations

import pytest

from sevx86.asm import fw_abi as abi
from sevx86.asm.guest_abi import GUEST_ASM_REASON_SET, VcReason
from sevx86.lab import interface


def test_an_honest_host_boots_the_payload():
    """The control: without lies the payload runs, so "stopped" below means the lie."""
    assert interface.boot_with_lies("sev-es").went_on


def test_an_inconsistent_c_bit_is_refused_with_the_mismatch_reason():
    v = interface.boot_with_lies("sev-es", cpuid_cbit=47)
    assert not v.went_on
    assert (v.reason_set, v.reason_code) == (abi.FW_REASON_SET, abi.FwReason.CBIT_MISMATCH)


@pytest.mark.parametrize("cbit", [47, 52])
def test_a_consistent_c_bit_lie_is_caught_by_the_c_bit_verification(cbit):
    """Both answers agree on a wrong position, so no cross-check can see it; only reading a
    value back through the new encrypted mapping does (Linux's sev_verify_cbit), and the
    firmware terminates with its reason code before the payload runs."""
    v = interface.boot_with_lies("sev-es", cpuid_cbit=cbit, info_cbit=cbit)
    assert not v.went_on
    assert (v.reason_set, v.reason_code) == (abi.FW_REASON_SET, abi.FwReason.CBIT_VERIFY)


def test_a_c_bit_inside_the_address_width_is_refused():
    v = interface.boot_with_lies("sev-es", cpuid_cbit=40, info_cbit=40)
    assert (v.reason_set, v.reason_code) == (abi.FW_REASON_SET, abi.FwReason.CBIT_ADDRESS_BIT)


def test_denying_sev_es_after_a_vc_is_refused():
    v = interface.boot_with_lies("sev-es", clear_eax=interface.LEAF_EAX_SEV_ES)
    assert (v.reason_set, v.reason_code) == (abi.FW_REASON_SET, abi.FwReason.CPUID_DENIES_SEV_ES)


def test_denying_sev_after_a_vc_is_refused_by_the_early_handler():
    v = interface.boot_with_lies("sev-es", clear_eax=interface.LEAF_EAX_SEV)
    assert not v.went_on and v.reason_set in (abi.FW_REASON_SET, GUEST_ASM_REASON_SET)


def test_a_private_page_as_mmio_leaks_without_es_and_is_refused_with_it():
    for mode in ("none", "sev"):
        verdict, read_secret = interface.private_page_as_mmio(mode)
        assert verdict.went_on and read_secret  # NPF exit: the host emulates the store
    verdict, read_secret = interface.private_page_as_mmio("sev-es")
    assert not read_secret
    assert (verdict.reason_set, verdict.reason_code) == (
        GUEST_ASM_REASON_SET,
        VcReason.MMIO_PRIVATE,
    )


@pytest.mark.parametrize("mode", ["none", "sev-es"])
def test_steered_mmio_is_caught_only_by_the_guests_own_check(mode):
    over, intact = interface.steered_count(mode, 64, bounds_check=False)
    assert over.went_on and not intact  # the copy ran past the buffer over the canary
    checked, intact = interface.steered_count(mode, 64, bounds_check=True)
    assert not checked.went_on and intact
    plausible, intact = interface.steered_count(mode, 7, bounds_check=True)
    assert plausible.went_on and intact and "count 7" in plausible.how
    honest, intact = interface.steered_count(mode, interface.RECORDS, bounds_check=True)
    assert "count 4" in honest.how and intact  # the control


def test_the_report_covers_every_row_in_every_mode():
    report = interface.run(["none"], seed=1)
    rows = set(report.mode("none").figures)
    assert set(interface.BOOT_LIES) <= rows and set(interface.STEERING) <= rows
