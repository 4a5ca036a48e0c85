"""What the hypervisor knows or decided about one vCPU, split as KVM splits it.

KVM keeps a vCPU's host state in separate parts of ``struct kvm_vcpu``: the
SEV-ES GHCB bookkeeping (``vcpu_svm.sev_es``), the register values the host
tracks (``vcpu->arch.cr0/cr4/efer/xcr0``...), and the event and MP state
(``vcpu->arch.mp_state``, ``nmi_pending``, the APIC's IRR). Here:

* ``GhcbState``: the registered GHCB GPA and the protocol version in use;
* ``RegisterShadow``: control registers the host learns from SEV-ES write
  traps (or sets itself), and the XSAVE state CPUID answers depend on;
* ``EventState``: may the vCPU run (``MpState``), what it can take
  (interrupt flag and shadow at the last exit), pending NMIs and interrupts,
  and the AP reset hold;

and ``VcpuHvState`` holds one of each, plus how the vCPU died if it did.
The records have slots, so a misspelt field is an error, not a new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from sevx86.arch.cpuid import Xfeature
from sevx86.hv.run import RunResult


class MpState(StrEnum):
    """Whether a vCPU may run (KVM ``mp_state``)."""

    RUNNABLE = "runnable"
    UNINITIALIZED = "uninitialized"  # an AP before its first INIT-SIPI
    INIT_RECEIVED = "init-received"  # after INIT: waits for SIPI
    AP_RESET_HOLD = "ap-reset-hold"  # parked by the GHCB AP reset hold request
    HALTED = "halted"  # HLT: waits for an interrupt or NMI


class HoldKind(StrEnum):
    """How an AP asked for reset hold: the wake answer goes back the same way."""

    GHCB = "ghcb"  # SW_EXITINFO2 of its GHCB
    MSR = "msr"  # the GHCB MSR (response 0x007)


# DR7 at reset: bit 10 reads as one (APM vol 2, 13.1.1.5).
DR7_RESET = 0x400


@dataclass(slots=True)
class GhcbState:
    """The GHCB protocol as this vCPU uses it (GHCB spec 56421)."""

    registered: int | None = None  # GPA from the MSR-protocol registration
    protocol_version: int | None = None  # last version seen in the guest's GHCB


@dataclass(slots=True)
class RegisterShadow:
    """Register values the host tracks (SEV-ES CR/EFER write traps) or keeps for the guest."""

    cr0: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    xcr0: int = 1 << Xfeature.X87  # XCR0 at reset: x87 only (APM vol 2, 11.5.2)
    xss: int = 0
    dr7: int = DR7_RESET


@dataclass(slots=True)
class EventState:
    """May the vCPU run, and what events wait for it (``sevx86.hv.smp``)."""

    mp_state: MpState = MpState.RUNNABLE
    guest_if: bool = False  # VMCB interrupt state at the last exit: IF
    shadow: bool = False  # ... and the interrupt shadow
    nmi_pending: bool = False
    nmi_masked: bool = False  # an NMI was injected and NMI_COMPLETE has not come
    nmi_injected: bool = False
    irr: set[int] = field(default_factory=set)  # requested interrupt vectors
    hold_kind: HoldKind | None = None  # how the AP asked for reset hold
    hold_ghcb: int | None = None  # its GHCB then (the wake answer goes there)
    received_first_sipi: bool = False


@dataclass(slots=True)
class VcpuHvState:
    """What the hypervisor knows or decided about one vCPU."""

    index: int
    ghcb: GhcbState = field(default_factory=GhcbState)
    regs: RegisterShadow = field(default_factory=RegisterShadow)
    events: EventState = field(default_factory=EventState)
    dead: RunResult | None = None  # how it died (shutdown, failed VMRUN)


__all__ = [
    "DR7_RESET",
    "EventState",
    "GhcbState",
    "HoldKind",
    "MpState",
    "RegisterShadow",
    "VcpuHvState",
]
