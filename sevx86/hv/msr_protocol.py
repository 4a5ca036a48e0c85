"""The GHCB MSR protocol: requests carried in the GHCB MSR itself.

Before a guest can share a GHCB page (early boot: paging off, every page
private) it talks to the hypervisor through the GHCB MSR: it writes a
request (GHCBInfo in bits 11:0, GHCBData in 63:12), issues VMGEXIT, and reads
the response from the same MSR. The hypervisor sees the value in the VMCB's
GHCB GPA field and writes the response there; the CPU copies it back into
the guest's MSR at the next VMRUN (GHCB spec 56421, "GHCB MSR Protocol").

Answered here (KVM ``sev_handle_vmgexit_msr_protocol`` for behaviour):

* SEV information: protocol versions 1..max and the C-bit position;
* CPUID: one register of one leaf, the register index echoed in 31:30,
  served by the CPUID handler through the same hooks as a GHCB CPUID;
* preferred GHCB GPA ("no preference") and GHCB GPA registration (recorded;
  a later VMGEXIT with another GHCB GPA terminates the guest, GHCB spec 2.3.2);
* hypervisor features (none of the SNP ones);
* termination: the run ends with the guest's reason set and code;
* AP reset hold: the AP parks until INIT + SIPI (``sevx86.hv.smp``);
* page state change, VMPL: not supported; like KVM for an unknown request,
  the MSR is left unchanged, so the guest sees its own request echoed
  instead of a response.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sevx86.arch.exits import SvmExit
from sevx86.arch.ghcb import (
    GFN_MASK,
    GHCB_PROTOCOL_MIN,
    PREF_GPA_NONE,
    GhcbMsr,
    decode_cpuid_request,
    decode_cpuid_response,
    decode_gfn,
    decode_msr,
    decode_sev_info,
    decode_terminate,
    msr_ap_reset_hold_response,
    msr_cpuid_response,
    msr_hv_features_response,
    msr_pref_gpa_response,
    msr_register_gpa_response,
    msr_sev_info_response,
)
from sevx86.arch.paging import PAGE_SIZE
from sevx86.hv import smp
from sevx86.hv.cpuid import describe
from sevx86.hv.requests import MsrCpuidRequest

if TYPE_CHECKING:
    from sevx86.hv.hypervisor import Hypervisor
    from sevx86.machine import HostVcpu


@dataclass
class MsrProtocolRequest:
    """One MSR-protocol request and the response the hypervisor chose."""

    vcpu: HostVcpu
    value: int  # what the guest wrote into the GHCB MSR
    code: int  # GHCBInfo (a GhcbMsr member when known)
    data: int  # GHCBData
    response: int | None = None  # None: leave the MSR unchanged (not supported)
    note: str = ""  # the request and answer in words, for the trace

    @property
    def name(self) -> str:
        return self.code.name if isinstance(self.code, GhcbMsr) else f"{self.code:#x}"


MsrHandler = Callable[["Hypervisor", MsrProtocolRequest], None]


def sev_info(hv: Hypervisor, req: MsrProtocolRequest) -> None:
    cbit = hv.config.cbitpos
    req.response = msr_sev_info_response(hv.ghcb_max_version, GHCB_PROTOCOL_MIN, cbit)
    req.note = (
        f"SEV information -> protocol {GHCB_PROTOCOL_MIN}..{hv.ghcb_max_version}, cbitpos {cbit}"
    )


def cpuid(hv: Hypervisor, req: MsrProtocolRequest) -> None:
    """One register of one leaf, served by the CPUID handler like every other CPUID.

    A failed CPUID (a hook refused it) leaves the MSR unchanged, as KVM does
    when its exit handler fails.
    """
    leaf, reg = decode_cpuid_request(req.value)
    cpuid_req = MsrCpuidRequest(req.vcpu, SvmExit.CPUID, leaf, reg)
    hv.serve_request(cpuid_req)
    value = cpuid_req.answer()
    if value is None:
        req.note = f"CPUID {leaf:#x} -> refused ({cpuid_req.detail or 'failed'}; MSR unchanged)"
        return
    req.response = msr_cpuid_response(value, reg)
    req.note = describe(leaf, reg, value)
    changed = cpuid_req.hook_changed
    if changed:
        req.note += f" [CPUID {changed}]"


def ap_reset_hold(hv: Hypervisor, req: MsrProtocolRequest) -> None:
    """Park the AP until INIT + SIPI; until then the answer is 0x007 with data 0 (KVM)."""
    smp.ap_reset_hold(hv, req.vcpu, smp.HoldKind.MSR)
    req.response = msr_ap_reset_hold_response(wake=False)
    req.note = "AP reset hold -> parked until INIT + SIPI"


def pref_gpa(hv: Hypervisor, req: MsrProtocolRequest) -> None:
    req.response = msr_pref_gpa_response(PREF_GPA_NONE)
    req.note = "preferred GHCB GPA -> no preference"


def register_gpa(hv: Hypervisor, req: MsrProtocolRequest) -> None:
    gfn = decode_gfn(req.value, GhcbMsr.REG_GPA_REQ)
    gpa = gfn * PAGE_SIZE
    if not hv.host.memory.contains(gpa, PAGE_SIZE):
        # A GFN that is not ours to map: answer a GFN the guest did not ask
        # for (all ones), which it must treat as a refusal.
        req.response = msr_register_gpa_response(GFN_MASK)
        req.note = f"register GHCB at {gpa:#x} -> refused (not guest RAM)"
        return
    hv.vcpu_state(req.vcpu.index).ghcb.registered = gpa
    req.response = msr_register_gpa_response(gfn)
    req.note = f"register GHCB at {gpa:#x} -> registered"
    hv.host.log(
        "ghcb-register",
        f"GHCB registered at {gpa:#x}",
        vcpu=req.vcpu.index,
        target="guest",
        gpa=gpa,
    )


def hv_features(hv: Hypervisor, req: MsrProtocolRequest) -> None:
    req.response = msr_hv_features_response(hv.hv_features)
    req.note = f"hypervisor features -> {hv.hv_features:#x}"


def terminate(hv: Hypervisor, req: MsrProtocolRequest) -> None:
    reason_set, reason_code = decode_terminate(req.value)
    req.note = f"termination request, reason set {reason_set} code {reason_code:#x}"
    hv.terminate(
        by="guest",
        reason_set=reason_set,
        reason_code=reason_code,
        detail=f"termination request (MSR protocol), reason set {reason_set} code {reason_code:#x}",
        vcpu=req.vcpu.index,
    )


MSR_PROTOCOL_HANDLERS: dict[int, MsrHandler] = {
    GhcbMsr.SEV_INFO_REQ: sev_info,
    GhcbMsr.CPUID_REQ: cpuid,
    GhcbMsr.AP_RESET_HOLD_REQ: ap_reset_hold,
    GhcbMsr.PREF_GPA_REQ: pref_gpa,
    GhcbMsr.REG_GPA_REQ: register_gpa,
    GhcbMsr.HV_FEATURES_REQ: hv_features,
    GhcbMsr.TERM_REQ: terminate,
}


def describe_response(req: MsrProtocolRequest) -> str:
    """The response the guest receives, in words (for a response a hook chose)."""
    response = req.response
    if response is None:
        return f"{req.name} -> no response (MSR left unchanged)"
    code, _ = decode_msr(response)
    try:
        if code == GhcbMsr.SEV_INFO_RESP:
            info = decode_sev_info(response)
            return (
                f"SEV information -> protocol {info.min_version}..{info.max_version},"
                f" cbitpos {info.cbitpos}"
            )
        if code == GhcbMsr.CPUID_RESP and req.code == GhcbMsr.CPUID_REQ:
            leaf, _ = decode_cpuid_request(req.value)
            value, reg = decode_cpuid_response(response)
            return describe(leaf, reg, value)
    except ValueError:
        pass
    name = code.name if isinstance(code, GhcbMsr) else f"GHCBInfo {code:#x}"
    return f"{req.name} -> {response:#x} ({name})"


def parse(vcpu: HostVcpu, value: int) -> MsrProtocolRequest:
    code, data = decode_msr(value)
    return MsrProtocolRequest(vcpu, value, code, data)


__all__ = [
    "MSR_PROTOCOL_HANDLERS",
    "MsrHandler",
    "MsrProtocolRequest",
    "describe_response",
    "parse",
]
