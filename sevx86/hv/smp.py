"""Several vCPUs: who may run, IPIs, INIT/SIPI, AP reset hold, NMIs and interrupts.

What a real host does for an SEV-ES guest with several vCPUs, from the specs
and KVM (facts, not code: GHCB spec 56421 "AP Reset Hold", "AP Jump Table",
"NMI Complete"; AMD APM vol 2, 8.5 and 15.20 for NMI masking and event
injection; KVM arch/x86/kvm/lapic.c and svm/sev.c):

* **Run states** (``MpState``, KVM's ``mp_state``). vCPU 0 (the BSP) starts
  runnable. An AP starts *uninitialized* and runs only after the BSP sends it
  INIT then SIPI (the real INIT-SIPI-SIPI sequence). Under SEV-ES the host
  cannot set an AP's registers, so the first SIPI starts it from its launch
  VMSA at the AP reset address, whatever the SIPI vector says. Without
  SEV-ES the host writes the state, as KVM does: real mode, CS = vector << 8,
  IP = 0 (``sipi_state``).
* **AP reset hold** (SW exit 0x8000_0004, or MSR protocol 0x006): the AP
  parks in the host. KVM presets the answer to "not woken" (SW_EXITINFO2 = 0
  / response 0x007 with data 0). A later INIT + SIPI wakes it with a non-zero
  answer (SW_EXITINFO2 = 1 in its GHCB / response data 1); the guest then
  finds where to go through the **AP jump table** (SW exit 0x8000_0005, SET
  and GET), which the hypervisor only stores.
* **INIT** moves any AP (running, halted or held) to *INIT received*, where
  it does not run; **SIPI** does something only in that state. An INIT to the
  BSP is ignored (KVM resets it, which SEV-ES state cannot undergo).
* **NMI**: the host injects it with EVENTINJ type NMI. The host cannot see
  the guest's IRET under SEV-ES, so it keeps NMIs masked until the guest's
  NMI_COMPLETE VMGEXIT (0x8000_0003); one NMI requested meanwhile stays
  pending (NMIs do not queue: APM vol 2, 8.5) and is injected after it.
* **Interrupts** (``request_interrupt``, fixed IPIs): an IRR of pending
  vectors. The host learns whether the guest can take one from the VMCB
  interrupt state at each exit (IF and the interrupt shadow; it cannot read
  RFLAGS): it injects the highest vector when IF=1 and no shadow. A halted
  vCPU wakes for an NMI, or for an interrupt if it halted with IF=1; halted
  with IF=0 and nothing pending, it stays halted for good.
* **IPIs**: each vCPU's local APIC (``sevx86.hv.devices.lapic``) decodes
  its ICR writes; ``send_ipi`` routes them to their targets: fixed ->
  interrupt, NMI -> NMI, INIT, SIPI (KVM ``kvm_apic_send_ipi``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from sevx86.arch.apic import (
    DeliveryMode,
    Icr,
    Shorthand,
)
from sevx86.arch.ghcb import GhcbMsr, msr_encode
from sevx86.arch.vectors import Vector
from sevx86.arch.vmcb import (
    EVENTINJ_V,
    INT_STATE_GUEST_IF,
    INT_STATE_SHADOW,
    EventType,
    encode_event,
)
from sevx86.arch.vmsa import VMSA
from sevx86.boot.reset import reset_vmsa
from sevx86.config import GuestMode
from sevx86.hv.ghcb import GhcbPage
from sevx86.hv.vcpu_state import HoldKind, MpState, VcpuHvState

if TYPE_CHECKING:
    from sevx86.hv.hypervisor import Hypervisor
    from sevx86.machine import HostVcpu
    from sevx86.vmexit import VmExit

_NMI_VECTOR = int(Vector.NMI)


# -- run states --------------------------------------------------------------------------
def initial_state(index: int, ap_start: str) -> MpState:
    """vCPU 0 runs; APs wait for INIT-SIPI unless the host starts them all (``"run"``)."""
    if index == 0 or ap_start == "run":
        return MpState.RUNNABLE
    if ap_start != "sipi":
        raise ValueError(f"ap_start must be 'sipi' or 'run', not {ap_start!r}")
    return MpState.UNINITIALIZED


def is_runnable(st: VcpuHvState) -> bool:
    """May this vCPU enter now? Pure (KVM ``kvm_arch_vcpu_runnable`` asks the same)."""
    return st.dead is None and st.events.mp_state is MpState.RUNNABLE


def wake_on_event(hv: Hypervisor, st: VcpuHvState) -> None:
    """A halted vCPU with an event it can take becomes runnable (KVM ``vcpu_block``)."""
    ev = st.events
    if st.dead is not None or ev.mp_state is not MpState.HALTED:
        return
    if ev.nmi_pending and not ev.nmi_masked:
        ev.mp_state = MpState.RUNNABLE  # an NMI ends HLT whatever IF says
    elif ev.irr and ev.guest_if:
        ev.mp_state = MpState.RUNNABLE
    elif hv.host.vcpus[st.index].vmcb["event_inj"] & EVENTINJ_V:
        ev.mp_state = MpState.RUNNABLE  # the host queued an event itself


def note_exit(hv: Hypervisor, vcpu: HostVcpu, exit: VmExit | None = None) -> None:
    """After any exit: what the VMCB says about the guest's interruptibility."""
    if exit is not None and exit.data.get("entered") is False:
        return  # stopped before its first VMRUN ran: nothing to learn
    st = hv.vcpu_state(vcpu.index)
    state = vcpu.vmcb["int_state"]
    st.events.guest_if = bool(state & INT_STATE_GUEST_IF)
    st.events.shadow = bool(state & INT_STATE_SHADOW)
    if hv.mode is not GuestMode.SEV_ES and st.events.nmi_masked and st.events.nmi_injected:
        # Without SEV-ES the host has no NMI_COMPLETE; lacking an IRET
        # intercept it reopens the NMI window at the next exit after delivery.
        st.events.nmi_masked = st.events.nmi_injected = False


def prepare_entry(hv: Hypervisor, vcpu: HostVcpu) -> None:
    """Before VMRUN: inject one pending event the guest can take (NMI first, as KVM)."""
    st = hv.vcpu_state(vcpu.index)
    vmcb = vcpu.vmcb
    if vmcb["event_inj"] & EVENTINJ_V:
        return  # the host queued an event itself: that one goes first
    if st.events.nmi_pending and not st.events.nmi_masked:
        st.events.nmi_pending = False
        st.events.nmi_masked = True
        st.events.nmi_injected = True
        _inject(vcpu, _NMI_VECTOR, EventType.NMI)
        hv.log("inject", "inject NMI", vcpu=vcpu.index, target="guest", vector=_NMI_VECTOR)
        return
    if st.events.irr and st.events.guest_if and not st.events.shadow:
        vector = max(st.events.irr)  # the highest vector has the highest priority class
        st.events.irr.discard(vector)
        _inject(vcpu, vector, EventType.INTR)
        # Until the next exit reports otherwise, the gate cleared IF.
        st.events.guest_if = False
        hv.log(
            "inject",
            f"inject interrupt {vector:#x}",
            vcpu=vcpu.index,
            target="guest",
            vector=vector,
        )


def _inject(vcpu: HostVcpu, vector: int, kind: EventType) -> None:
    value = encode_event(vector, kind)
    vcpu.vmcb["event_inj"] = value & 0xFFFF_FFFF
    vcpu.vmcb["event_inj_err"] = value >> 32


# -- host requests -------------------------------------------------------------------------
def request_nmi(hv: Hypervisor, index: int) -> None:
    st = hv.vcpu_state(index)
    already = st.events.nmi_pending
    st.events.nmi_pending = True  # NMIs do not queue: a second one while pending is the same one
    hv.log(
        "nmi-request",
        f"NMI requested{' (one already pending)' if already else ''}"
        f"{' (masked until NMI_COMPLETE)' if st.events.nmi_masked else ''}",
        vcpu=index,
    )
    hv.wake(index)


def request_interrupt(hv: Hypervisor, index: int, vector: int) -> None:
    if not 16 <= vector <= 255:
        raise ValueError(f"interrupt vector {vector} is not 16..255")
    st = hv.vcpu_state(index)
    st.events.irr.add(vector)
    hv.log("irq-request", f"interrupt {vector:#x} requested", vcpu=index, vector=vector)
    hv.wake(index)


def nmi_complete(hv: Hypervisor, index: int) -> None:
    st = hv.vcpu_state(index)
    st.events.nmi_masked = st.events.nmi_injected = False
    hv.log(
        "nmi-complete",
        "NMI complete: NMI window open" + (", pending NMI next" if st.events.nmi_pending else ""),
        vcpu=index,
    )


# -- INIT, SIPI, AP reset hold ----------------------------------------------------------
def ap_reset_hold(hv: Hypervisor, vcpu: HostVcpu, kind: HoldKind) -> None:
    """Park the AP until INIT + SIPI; the preset answer says "not woken" (KVM)."""
    st = hv.vcpu_state(vcpu.index)
    st.events.mp_state = MpState.AP_RESET_HOLD
    st.events.hold_kind = kind
    st.events.hold_ghcb = vcpu.vmcb["ghcb_gpa"] if kind is HoldKind.GHCB else None
    if kind is HoldKind.MSR:
        vcpu.vmcb["ghcb_gpa"] = msr_encode(GhcbMsr.AP_RESET_HOLD_RESP, 0)
    hv.log("ap-reset-hold", f"vCPU {vcpu.index} parked in AP reset hold ({kind})", vcpu=vcpu.index)


def init(hv: Hypervisor, index: int, source: int | None) -> None:
    st = hv.vcpu_state(index)
    if st.dead is not None:
        return
    if index == 0:
        hv.log("ipi", "INIT to the BSP ignored (SEV-ES state cannot be reset)", vcpu=index)
        return
    before = st.events.mp_state
    st.events.mp_state = MpState.INIT_RECEIVED
    hv.log("ipi", f"INIT from vCPU {source}: {before} -> {st.events.mp_state}", vcpu=index)


def sipi(hv: Hypervisor, index: int, vector: int, source: int | None) -> None:
    st = hv.vcpu_state(index)
    if st.dead is not None:
        return
    if st.events.mp_state is not MpState.INIT_RECEIVED:
        hv.log("ipi", f"SIPI from vCPU {source} ignored: vCPU is {st.events.mp_state}", vcpu=index)
        return
    st.events.mp_state = MpState.RUNNABLE
    if not st.events.received_first_sipi:
        st.events.received_first_sipi = True
        if hv.mode is GuestMode.SEV_ES:
            # The host cannot set CS:IP from the vector under SEV-ES: the AP
            # starts from its launch VMSA (KVM keeps the VMM's values).
            where = "AP starts at its launch VMSA"
        elif hv.host.vcpus[index].entered:
            # Started by the host already (ap_start="run"); the model does not
            # reset a running vCPU's state on INIT.
            where = "AP already running; the vector is not applied"
        else:
            hv.host.vcpus[index].load_state(sipi_state(vector, hv.cpuid.raw(1)[0]))
            where = f"AP starts at {vector << 8:#06x}:0000"
        hv.log("ipi", f"SIPI {vector:#x} from vCPU {source}: {where}", vcpu=index)
    else:
        _wake_from_hold(hv, index, source)
    hv.wake(index)


def sipi_state(vector: int, signature: int) -> bytes:
    """The state an AP starts from after INIT + SIPI when the host owns it.

    INIT puts the vCPU in its reset state (real mode, RDX = the CPUID
    signature); the SIPI vector then gives CS = vector << 8, CS base =
    vector << 12 and IP = 0 (APM vol 2, 16.x MP initialisation; KVM
    ``kvm_vcpu_deliver_sipi_vector``).
    """
    page = reset_vmsa(vector << 12, signature)
    VMSA.write(page, "cs.selector", vector << 8)
    VMSA.write(page, "cs.base", vector << 12)
    VMSA.write(page, "rip", 0)
    return bytes(page)


def _wake_from_hold(hv: Hypervisor, index: int, source: int | None) -> None:
    """A later SIPI: answer the AP reset hold with "woken" (non-zero), as KVM does."""
    st = hv.vcpu_state(index)
    vcpu = hv.host.vcpus[index]
    kind, st.events.hold_kind = st.events.hold_kind, None
    if kind is HoldKind.MSR:
        vcpu.vmcb["ghcb_gpa"] = msr_encode(GhcbMsr.AP_RESET_HOLD_RESP, 1)
    elif kind is HoldKind.GHCB and st.events.hold_ghcb is not None:
        page = GhcbPage.read(hv.host.memory, st.events.hold_ghcb)
        page.set("sw_exit_info_2", 1)
        page.write_back(hv.host.memory)
    how = f"AP reset hold ends ({kind})" if kind else "resumes (it was not in AP reset hold)"
    if kind and not hv.ap_jump_table:
        how += "; no AP jump table is set"
    hv.log("ipi", f"SIPI from vCPU {source}: {how}", vcpu=index, jump_table=hv.ap_jump_table)


def send_ipi(hv: Hypervisor, source: int, icr: Icr) -> None:
    """Deliver an ICR write of vCPU ``source`` (physical destination mode only)."""
    if icr.is_init_deassert:
        return
    for target in _targets(hv, source, icr):
        mode = icr.mode
        if mode == DeliveryMode.FIXED or mode == DeliveryMode.LOWEST_PRIORITY:
            request_interrupt(hv, target, icr.vector)
        elif mode == DeliveryMode.NMI:
            request_nmi(hv, target)
        elif mode == DeliveryMode.INIT:
            init(hv, target, source)
        elif mode == DeliveryMode.STARTUP:
            sipi(hv, target, icr.vector, source)
        else:
            hv.log("ipi", f"IPI delivery mode {mode} not modelled; dropped", vcpu=source)


def _targets(hv: Hypervisor, source: int, icr: Icr) -> Iterable[int]:
    count = len(hv.host.vcpus)
    if icr.shorthand is Shorthand.SELF:
        return [source]
    if icr.shorthand is Shorthand.ALL_INCLUDING_SELF:
        return range(count)
    if icr.shorthand is Shorthand.ALL_EXCLUDING_SELF:
        return [i for i in range(count) if i != source]
    if icr.broadcast:
        return range(count)
    if icr.logical:
        # Flat logical mode with LDR = 1 << APIC ID (what firmware sets up).
        return [i for i in range(min(count, 8)) if icr.destination >> i & 1]
    # Physical mode: the APIC ID is the vCPU index.
    return [icr.destination] if icr.destination < count else []


def describe_stuck(hv: Hypervisor) -> str:
    """Why nobody can run: one clause per vCPU."""
    parts = []
    for st in hv.states():
        if st.dead is not None:
            what = f"dead ({st.dead.reason.value})"
        elif st.events.mp_state is MpState.HALTED:
            if_set = st.events.guest_if
            what = "halted with IF=1 and nothing pending" if if_set else "halted with IF=0"
        else:
            what = str(st.events.mp_state)
        parts.append(f"vCPU {st.index} {what}")
    return "; ".join(parts)


__all__ = [
    "HoldKind",
    "MpState",
    "ap_reset_hold",
    "describe_stuck",
    "init",
    "initial_state",
    "nmi_complete",
    "note_exit",
    "prepare_entry",
    "request_interrupt",
    "request_nmi",
    "is_runnable",
    "send_ipi",
    "sipi",
    "wake_on_event",
]
