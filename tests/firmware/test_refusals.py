"""The firmware refuses a hypervisor whose answers about SEV do not fit together.

CPUID and the GHCB MSR protocol answers come from the untrusted hypervisor;
SEV_STATUS comes from the CPU. A hypervisor that hides SEV or moves the
C-bit could make the guest put private data in the clear, so the firmware
checks each answer against the others and ends the guest with a documented
reason (sevx86.asm.fw_abi.FwReason, reason set 3; set 0 for the GHCB spec's
own codes): under SEV-ES through a GHCB MSR protocol termination request,
under plain SEV (no such request) by reporting on the serial port and halting.
"""

from __future__ import annotations

import pytest

from sevx86.arch.cpuid import MemEncryptEax, encode_8000001f_ebx
from sevx86.arch.ghcb import (
    GeneralTermReason,
    GhcbMsr,
    msr_register_gpa_response,
    msr_sev_info_response,
)
from sevx86.asm import fw_abi as abi
from sevx86.asm.fw_abi import FW_REASON_SET, FwReason
from sevx86.cli.common import ExitStatus, exit_status, firmware_fatal
from sevx86.hv import Hypervisor, RunReason
from sevx86.hv.handlers import cpuid as default_cpuid

from .conftest import boot

SEV_ES = int(MemEncryptEax.SEV | MemEncryptEax.SEV_ES)


def _lying_cpuid(entries):
    def setup(hv: Hypervisor) -> None:
        # The table answers the MSR protocol (early boot) and the GHCB path alike.
        hv.cpuid = hv.cpuid.with_entries(entries)

    return setup


def _msr_answer(code, answer):
    def setup(hv: Hypervisor) -> None:
        def hook(req, proceed):
            proceed()
            req.response = answer

        hv.on_msr_protocol(code, hook)

    return setup


LEAF_1F = 0x8000_001F
LIES = {
    # The SEV information says C-bit 47, CPUID says 51.
    "sev-info-cbit": (
        _msr_answer(GhcbMsr.SEV_INFO_REQ, msr_sev_info_response(2, 1, 47)),
        FwReason.CBIT_MISMATCH,
    ),
    # CPUID says C-bit 47, the SEV information says 51.
    "cpuid-cbit": (
        _lying_cpuid({(LEAF_1F, None): (SEV_ES, encode_8000001f_ebx(47, 1), 0, 0)}),
        FwReason.CBIT_MISMATCH,
    ),
    "cbit-below-32": (
        _lying_cpuid({(LEAF_1F, None): (SEV_ES, encode_8000001f_ebx(20, 1), 0, 0)}),
        FwReason.CBIT_RANGE,
    ),
    # 60 physical address bits: the C-bit (51) would be an address bit.
    "cbit-inside-address": (
        _lying_cpuid({(0x8000_0008, None): (60 | (48 << 8), 0, 0, 0)}),
        FwReason.CBIT_ADDRESS_BIT,
    ),
    # SEV_STATUS says SEV-ES; CPUID admits SEV only.
    "cpuid-denies-es": (
        _lying_cpuid({(LEAF_1F, None): (int(MemEncryptEax.SEV), encode_8000001f_ebx(51, 1), 0, 0)}),
        FwReason.CPUID_DENIES_SEV_ES,
    ),
    "sev-info-wrong-code": (
        _msr_answer(GhcbMsr.SEV_INFO_REQ, msr_sev_info_response(2, 1, 51) + 4),
        FwReason.SEV_INFO,
    ),
    "ghcb-registration-moved": (
        _msr_answer(GhcbMsr.REG_GPA_REQ, msr_register_gpa_response(0x1234)),
        FwReason.GHCB_REGISTER,
    ),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_sev_es_firmware_terminates_on_an_inconsistent_answer(lie):
    setup, reason = LIES[lie]
    b = boot(setup=setup)
    assert b.result.reason is RunReason.TERMINATED
    term = b.result.termination
    assert term is not None and term.by == "guest"
    assert (term.reason_set, term.reason_code) == (FW_REASON_SET, reason)
    assert b.events("ghcb-register") == [] or reason is FwReason.GHCB_REGISTER
    status, message = exit_status(b.result, 30, None)
    assert status == ExitStatus.TERMINATED and f"code {int(reason):#x}" in message


def test_no_common_protocol_version_is_the_spec_s_own_reason():
    b = boot(setup=_msr_answer(GhcbMsr.SEV_INFO_REQ, msr_sev_info_response(9, 5, 51)))
    term = b.result.termination
    assert term is not None
    assert (term.reason_set, term.reason_code) == (0, GeneralTermReason.PROTOCOL_UNSUPPORTED)


class HidesSev(Hypervisor):
    """Plain SEV: CPUID is a direct exit; this host says there is no SEV."""

    def handle_cpuid(self, req):
        leaf = req.reg("rax") & 0xFFFF_FFFF
        default_cpuid(self, req)
        if leaf == LEAF_1F:
            req.set_reg("rax", 0)


def test_plain_sev_firmware_refuses_a_cpuid_that_hides_sev():
    """SEV_STATUS (the CPU) says SEV: believing CPUID would mean running in the clear."""
    b = boot(mode="sev", hv_class=HidesSev)
    assert b.result.reason is RunReason.HALTED  # no termination request without SEV-ES
    assert firmware_fatal(b.result.outputs["serial"].decode()) == (
        FW_REASON_SET,
        FwReason.CPUID_DENIES_SEV,
    )
    assert b.events("paging") == []  # it stopped before building page tables
    status, message = exit_status(b.result, 30, None)
    assert status == ExitStatus.TERMINATED and "denies" in message


def _consistent_cbit_lie(position: int):
    """CPUID 0x8000001F and the SEV information agree on ``position``, and
    CPUID 0x80000008 reports an address width below it: every answer fits
    the others, so only a test with paging on can tell the lie."""

    def setup(hv: Hypervisor) -> None:
        hv.cpuid = hv.cpuid.with_entries(
            {
                (LEAF_1F, None): (SEV_ES, encode_8000001f_ebx(position, 1), 0, 0),
                (0x8000_0008, None): (40 | (40 << 8), 0, 0, 0),
            }
        )
        _msr_answer(GhcbMsr.SEV_INFO_REQ, msr_sev_info_response(2, 1, position))(hv)

    return setup


@pytest.mark.parametrize("position", [47, 48, 50, 52, 63])
def test_item10_a_consistent_cbit_lie_is_caught_after_paging_on(position):
    """Issue 15 item 10: as Linux's sev_verify_cbit, the firmware writes a
    random value with paging off (private) and reads it back through a
    mapping with the claimed C-bit; the wrong position ends the guest with
    FwReason.CBIT_VERIFY instead of a triple fault."""
    b = boot(setup=_consistent_cbit_lie(position))
    assert b.result.reason is RunReason.TERMINATED, b.result
    term = b.result.termination
    assert term is not None and term.by == "guest"
    assert (term.reason_set, term.reason_code) == (FW_REASON_SET, FwReason.CBIT_VERIFY)
    assert b.events("ghcb-register") == []  # no page was ever shared
    status, message = exit_status(b.result, 30, None)
    assert status == ExitStatus.TERMINATED and "C-bit" in message


def test_item10_plain_sev_reports_the_cbit_lie_on_the_serial_port():
    def setup(hv: Hypervisor) -> None:
        hv.cpuid = hv.cpuid.with_entries(
            {
                (LEAF_1F, None): (int(MemEncryptEax.SEV), encode_8000001f_ebx(47, 1), 0, 0),
                (0x8000_0008, None): (40 | (40 << 8), 0, 0, 0),
            }
        )

    b = boot(mode="sev", setup=setup)
    assert b.result.reason is RunReason.HALTED, b.result
    assert firmware_fatal(b.result.outputs["serial"].decode()) == (
        FW_REASON_SET,
        FwReason.CBIT_VERIFY,
    )


def test_the_right_cbit_passes_the_check_which_leaves_no_trace():
    b = boot()
    assert (b.result.reason, b.result.exit_status) == (RunReason.EXIT_STATUS, 7)
    scratch = b.booted.machine.memory.read_private(abi.CBIT_CHECK_GPA, abi.CBIT_CHECK_SIZE)
    assert scratch == bytes(abi.CBIT_CHECK_SIZE)
