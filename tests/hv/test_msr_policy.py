"""MSRs a kernel probes get KVM's answers (kvm_get_msr_common / svm_get_msr), not #GP.

Expected values are KVM's, read off its source: 0 for SYSCFG, NB_CFG and the
rest of its "data = 0" list; 3 for MSR 0xCD; 1 << 24 for EBC_FREQUENCY_ID;
1000 | 4 << 40 for PERF_STATUS; 0x2000_0000 for K7_CLK_CTL; writes to NB_CFG
and the DC/BU/TW/EX_CFG group accepted and dropped; SYSCFG writes refused.
"""

from __future__ import annotations

import pytest

from sevx86.hv.msr_policy import MsrPolicy

ZERO = [
    0xC001_0010,  # SYSCFG
    0xC001_0015,  # HWCR
    0xC001_001F,  # NB_CFG
    0x17,  # PLATFORM_ID
    0x2A,  # EBL_CR_POWERON
    0xC001_0112,  # TSEG_ADDR
    0xC001_0114,  # VM_CR
    0xC001_0055,  # INT_PENDING_MSG
    0xC001_0058,  # MMIO_CONF_BASE
    0xC001_1021,  # IC_CFG
    0xC001_1022,  # DC_CFG
    0x606,  # RAPL_POWER_UNIT
    0x611,  # PKG_ENERGY_STATUS
]


@pytest.mark.parametrize("msr", ZERO)
def test_kvm_reads_these_as_zero(msr: int):
    assert MsrPolicy.default().read(0, msr) == 0


@pytest.mark.parametrize(
    ("msr", "value"),
    [(0xCD, 3), (0x2C, 1 << 24), (0x198, 1000 | 4 << 40), (0xC001_001B, 0x2000_0000)],
)
def test_kvm_fixed_answers(msr: int, value: int):
    assert MsrPolicy.default().read(0, msr) == value


def test_writes_kvm_drops_are_accepted_and_change_nothing():
    policy = MsrPolicy.default()
    for msr in (0xC001_001F, 0xC001_102A, 0xC001_1022, 0xC001_1023, 0xC001_102C):
        assert policy.write(0, msr, 0xFFFF)
        assert policy.read(0, msr) == 0


def test_hwcr_keeps_what_the_guest_writes_syscfg_refuses_writes():
    policy = MsrPolicy.default()
    assert policy.write(0, 0xC001_0015, 1 << 24)
    assert policy.read(0, 0xC001_0015) == 1 << 24
    assert not policy.write(0, 0xC001_0010, 1 << 23)  # #GP, as KVM without ignore_msrs


def test_an_msr_kvm_does_not_know_still_raises_gp():
    assert MsrPolicy.default().read(0, 0xC001_0299) is None
