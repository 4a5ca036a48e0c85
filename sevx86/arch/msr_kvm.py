"""MSRs a kernel probes that KVM answers with a fixed value instead of #GP, and those values.

From Linux ``arch/x86/kvm/x86.c`` ``kvm_get_msr_common`` (the list of MSRs
read as 0, the fixed answers for 0xCD, MSR_EBC_FREQUENCY_ID,
MSR_IA32_PERF_STATUS, MSR_K7_CLK_CTL) and ``arch/x86/kvm/svm/svm.c``
``svm_get_msr`` (MSR_F15H_IC_CFG, MSR_VM_CR); numbers from Linux
``arch/x86/include/asm/msr-index.h`` / AMD APM vol 2 appendix A and the
AMD BKDGs. The MSRs the architecture defines elsewhere are in
``sevx86.arch.msr``.
"""

from __future__ import annotations

from enum import IntEnum


class KvmMsr(IntEnum):
    PLATFORM_ID = 0x0000_0017
    EBL_CR_POWERON = 0x0000_002A
    EBC_FREQUENCY_ID = 0x0000_002C
    PATCH_LEVEL = 0x0000_008B  # IA32_UCODE_REV on Intel
    FSB_FREQ = 0x0000_00CD
    MCG_CAP = 0x0000_0179
    MCG_STATUS = 0x0000_017A
    PERF_STATUS = 0x0000_0198
    PERF_CTL = 0x0000_0199
    POWER_CTL = 0x0000_01FC
    LASTBRANCH_FROM_IP = 0x0000_01DB
    LASTBRANCH_TO_IP = 0x0000_01DC
    LASTINT_FROM_IP = 0x0000_01DD
    LASTINT_TO_IP = 0x0000_01DE
    RAPL_POWER_UNIT = 0x0000_0606
    PKG_ENERGY_STATUS = 0x0000_0611
    DRAM_ENERGY_STATUS = 0x0000_0619
    PP0_ENERGY_STATUS = 0x0000_0639
    PP1_ENERGY_STATUS = 0x0000_0641
    HWCR = 0xC001_0015
    CLK_CTL = 0xC001_001B
    NB_CFG = 0xC001_001F
    INT_PENDING_MSG = 0xC001_0055
    MMIO_CONF_BASE = 0xC001_0058  # family 10h+
    TSEG_ADDR = 0xC001_0112
    TSEG_MASK = 0xC001_0113
    IC_CFG = 0xC001_1021  # family 15h
    DC_CFG = 0xC001_1022
    TW_CFG = 0xC001_1023
    BU_CFG2 = 0xC001_102A
    EX_CFG = 0xC001_102C


# KVM's fixed answers (kvm_get_msr_common): an FSB code of 3, bit 24 of
# EBC_FREQUENCY_ID, a TSC-increment of 1000 with a bus multiplier of 4 in
# PERF_STATUS, and K7_CLK_CTL's 0x2000_0000.
FSB_FREQ_VALUE = 3
EBC_FREQUENCY_ID_VALUE = 1 << 24
PERF_STATUS_VALUE = 1000 | 4 << 40
CLK_CTL_VALUE = 0x2000_0000
# KVM's default microcode revision (kvm_vcpu_reset: 0x1_0000_0000; a VMM may set another).
PATCH_LEVEL_VALUE = 0x1_0000_0000

__all__ = ["KvmMsr"]
