"""Which MSRs the guest may read or write through an MSR intercept, and their values.

The hypervisor intercepts every MSR except the ones the hardware owns
(``PASSTHROUGH_MSRS``, the GHCB MSR and SEV_STATUS): what the guest reads is
then the policy's answer. A refused access is answered like KVM does with
``ignore_msrs=0``: #GP in the guest -- for an SEV-ES guest as a GHCB v2
"exception" answer (SW_EXITINFO1 = 1, SW_EXITINFO2 = EVENTINJ of #GP(0)),
for the other modes by EVENTINJ at the next VMRUN.

MSR numbers come from ``sevx86.arch.msr`` and ``sevx86.arch.msr_kvm``; reset
values follow AMD APM vol 2 (MTRRs, PAT) and what KVM reports for an EPYC
guest (DE_CFG). ``KVM_FIXED_MSRS`` is the one table of the model-specific
MSRs a kernel probes that KVM answers instead of raising #GP
(``kvm_get_msr_common``, ``svm_get_msr``; writes as ``kvm_set_msr_common``
takes them: ignored, stored, or refused).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sevx86.arch.bits import U64_MASK as _U64
from sevx86.arch.msr import Msr
from sevx86.arch.msr_kvm import (
    CLK_CTL_VALUE,
    EBC_FREQUENCY_ID_VALUE,
    FSB_FREQ_VALUE,
    PATCH_LEVEL_VALUE,
    PERF_STATUS_VALUE,
    KvmMsr,
)
from sevx86.hv.clock import TscClock

# MSRs the CPU handles without an exit, as KVM's direct-access list: syscall and
# segment-base MSRs, EFER (the engine keeps LMA read-only), and under SEV-ES PAT.
PASSTHROUGH_MSRS: tuple[int, ...] = (
    Msr.EFER,
    Msr.STAR,
    Msr.LSTAR,
    Msr.CSTAR,
    Msr.SFMASK,
    Msr.FS_BASE,
    Msr.GS_BASE,
    Msr.KERNEL_GS_BASE,
    Msr.SYSENTER_CS,
    Msr.SYSENTER_ESP,
    Msr.SYSENTER_EIP,
)
PASSTHROUGH_MSRS_SEV_ES: tuple[int, ...] = (Msr.PAT,)

SPEC_CTRL = 0x48
PRED_CMD = 0x49
DE_CFG = 0xC001_1029  # AMD: bit 1 = LFENCE is dispatch serializing
DE_CFG_LFENCE_SERIALIZE = 1 << 1
APIC_BASE_DEFAULT = 0xFEE0_0000
APIC_BASE_ENABLE = 1 << 11
APIC_BASE_BSP = 1 << 8
MTRRCAP_VALUE = 0x508  # 8 variable ranges, fixed ranges, write-combining
PAT_RESET = 0x0007_0406_0007_0406
MTRR_FIXED = (0x250, 0x258, 0x259, *range(0x268, 0x270))


@dataclass
class MsrRule:
    """What one MSR allows. ``value`` is the reset value of every vCPU."""

    readable: bool = True
    writable: bool = True
    value: int = 0
    ignore_writes: bool = False  # WRMSR succeeds and changes nothing (KVM: "break;")


def _fixed(value: int = 0) -> MsrRule:
    """Reads give ``value``; a write raises #GP (KVM has no case for it)."""
    return MsrRule(writable=False, value=value)


def _sink(value: int = 0) -> MsrRule:
    """Reads give ``value``; writes are accepted and dropped."""
    return MsrRule(value=value, ignore_writes=True)


# The MSRs KVM answers with a fixed value, and what a write does there.
KVM_FIXED_MSRS: dict[int, MsrRule] = {
    Msr.SYSCFG: _fixed(),  # no SME for the guest: MemEncryptionModEn reads 0
    KvmMsr.HWCR: MsrRule(),  # vcpu->arch.msr_hwcr, 0 at reset, written back
    KvmMsr.NB_CFG: _sink(),
    KvmMsr.PLATFORM_ID: _fixed(),
    KvmMsr.EBL_CR_POWERON: _fixed(),
    KvmMsr.LASTBRANCH_FROM_IP: _fixed(),
    KvmMsr.LASTBRANCH_TO_IP: _fixed(),
    KvmMsr.LASTINT_FROM_IP: _fixed(),
    KvmMsr.LASTINT_TO_IP: _fixed(),
    KvmMsr.TSEG_ADDR: _fixed(),
    KvmMsr.TSEG_MASK: _fixed(),
    Msr.VM_HSAVE_PA: _sink(),
    Msr.VM_CR: _fixed(),  # no nested SVM state: 0
    KvmMsr.INT_PENDING_MSG: _fixed(),
    KvmMsr.MMIO_CONF_BASE: _fixed(),
    KvmMsr.BU_CFG2: _sink(),
    KvmMsr.PERF_CTL: _fixed(),
    KvmMsr.DC_CFG: _sink(),
    KvmMsr.TW_CFG: _sink(),
    KvmMsr.EX_CFG: _sink(),
    KvmMsr.IC_CFG: _fixed(),  # svm_get_msr: 0 outside family 15h models 2-1Fh
    KvmMsr.RAPL_POWER_UNIT: _fixed(),
    KvmMsr.PKG_ENERGY_STATUS: _fixed(),
    KvmMsr.DRAM_ENERGY_STATUS: _fixed(),
    KvmMsr.PP0_ENERGY_STATUS: _fixed(),
    KvmMsr.PP1_ENERGY_STATUS: _fixed(),
    KvmMsr.PATCH_LEVEL: _sink(PATCH_LEVEL_VALUE),  # guest writes ignored (host-initiated only)
    KvmMsr.FSB_FREQ: _fixed(FSB_FREQ_VALUE),
    KvmMsr.EBC_FREQUENCY_ID: _fixed(EBC_FREQUENCY_ID_VALUE),
    KvmMsr.PERF_STATUS: _fixed(PERF_STATUS_VALUE),
    KvmMsr.CLK_CTL: _sink(CLK_CTL_VALUE),
    KvmMsr.POWER_CTL: MsrRule(),
    # Machine check: sevx86 reports no banks (KVM's count is set by the VMM).
    KvmMsr.MCG_CAP: _fixed(),
    KvmMsr.MCG_STATUS: MsrRule(),
}


class MsrPolicy:
    """Per-vCPU MSR values behind the intercept; unknown MSRs are refused."""

    def __init__(self, rules: dict[int, MsrRule] | None = None, *, clock: TscClock | None = None):
        self.rules: dict[int, MsrRule] = dict(rules or {})
        self.clock = clock or TscClock()
        self._values: dict[tuple[int, int], int] = {}

    @classmethod
    def default(cls, clock: TscClock | None = None) -> MsrPolicy:
        rules: dict[int, MsrRule] = {
            Msr.TSC: MsrRule(),
            Msr.APIC_BASE: MsrRule(value=APIC_BASE_DEFAULT | APIC_BASE_ENABLE),
            Msr.MTRRCAP: MsrRule(writable=False, value=MTRRCAP_VALUE),
            Msr.MTRR_DEF_TYPE: MsrRule(),
            Msr.PAT: MsrRule(value=PAT_RESET),
            Msr.MISC_ENABLE: MsrRule(),
            Msr.XSS: MsrRule(),
            Msr.TSC_AUX: MsrRule(),
            SPEC_CTRL: MsrRule(),
            PRED_CMD: MsrRule(readable=False),
            DE_CFG: MsrRule(value=DE_CFG_LFENCE_SERIALIZE),
            **KVM_FIXED_MSRS,
        }
        for n in range(8):
            rules[Msr.MTRR_PHYSBASE0 + 2 * n] = MsrRule()
            rules[Msr.MTRR_PHYSMASK0 + 2 * n] = MsrRule()
        for msr in MTRR_FIXED:
            rules[msr] = MsrRule()
        return cls(rules, clock=clock)

    # -- configuration -----------------------------------------------------------
    def allow(self, msr: int, value: int = 0, *, writable: bool = True) -> None:
        self.rules[msr] = MsrRule(True, writable, value & _U64)

    def refuse(self, *msrs: int) -> None:
        for msr in msrs:
            self.rules.pop(msr, None)

    def refuse_all(self, msrs: Iterable[int]) -> None:
        self.refuse(*msrs)

    # -- the guest's accesses ----------------------------------------------------
    def read(self, vcpu: int, msr: int) -> int | None:
        """The value RDMSR returns, or None if the access must raise #GP."""
        rule = self.rules.get(msr)
        if rule is None or not rule.readable:
            return None
        if msr == Msr.TSC:
            return self.clock.read()
        value = self._values.get((vcpu, msr), rule.value)
        if msr == Msr.APIC_BASE and vcpu == 0 and (vcpu, msr) not in self._values:
            value |= APIC_BASE_BSP
        return value

    def write(self, vcpu: int, msr: int, value: int) -> bool:
        """Apply WRMSR; False if the access must raise #GP."""
        rule = self.rules.get(msr)
        if rule is None or not rule.writable:
            return False
        value &= _U64
        if rule.ignore_writes:
            return True
        if msr == Msr.TSC:
            self.clock.write(value)
        else:
            self._values[(vcpu, msr)] = value
        return True


__all__ = ["KVM_FIXED_MSRS", "MsrPolicy", "MsrRule", "PASSTHROUGH_MSRS", "PASSTHROUGH_MSRS_SEV_ES"]
