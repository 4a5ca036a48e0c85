"""The GHCB MSR protocol, driven by a guest that writes the MSR and does VMGEXIT.

Each guest stores the responses it reads back (RDMSR) in private memory;
the test reads them with the god view and decodes them with sevx86.arch.ghcb.
"""

from __future__ import annotations

import pytest

from sevx86.arch.ghcb import (
    GFN_MASK,
    PREF_GPA_NONE,
    CpuidReg,
    GhcbMsr,
    decode_cpuid_response,
    decode_gfn,
    decode_sev_info,
    msr_ap_reset_hold_request,
    msr_cpuid_request,
    msr_cpuid_response,
    msr_hv_features_request,
    msr_pref_gpa_request,
    msr_register_gpa_request,
    msr_sev_info_request,
    msr_terminate,
)
from sevx86.config import GuestConfig
from sevx86.hv import CpuidTable, RunReason
from sevx86.trace.events import Tracer
from tests.hv.guests import (
    CASE_GPA,
    SNAP_BASE,
    build,
    exit_sev_es,
    field,
    ghcb_call,
    msr_protocol,
    register_ghcb,
)


def _exchange(values: list[int]) -> str:
    """Send each MSR-protocol value; store response i at SNAP_BASE + 8 * i."""
    out = []
    for i, value in enumerate(values):
        out.append(msr_protocol(value))
        out.append(
            f"""
    mov rdi, {SNAP_BASE + 8 * i:#x}
    mov [rdi], eax
    mov [rdi + 4], edx
"""
        )
    return "".join(out)


def _responses(machine, n: int) -> list[int]:
    raw = machine.memory.read_private(SNAP_BASE, 8 * n)
    return [int.from_bytes(raw[8 * i : 8 * i + 8], "little") for i in range(n)]


def _run(values: list[int], **kw):
    m, _, hv = build(_exchange(values) + register_ghcb() + exit_sev_es(0), **kw)
    result = hv.run(timeout=20)
    return m, hv, result


@pytest.mark.parametrize("cbitpos", [51, 47])
def test_sev_information_reports_protocol_range_and_cbitpos(cbitpos):
    m, _, result = _run([msr_sev_info_request()], config={"cbitpos": cbitpos})
    assert result.ok, result
    info = decode_sev_info(_responses(m, 1)[0])
    assert (info.min_version, info.max_version, info.cbitpos) == (1, 2, cbitpos)


def test_cpuid_request_answers_from_the_table_and_echoes_the_register():
    table = {(0x8000_001F, None): (0x1111, 0x2222, 0x3333, 0x4444), (0, None): (1, 2, 3, 4)}
    requests = [msr_cpuid_request(leaf, reg) for leaf in (0x8000_001F, 0) for reg in CpuidReg]
    m, _, result = _run(requests, hv_kwargs={"cpuid": table})
    assert result.ok, result
    answers = [decode_cpuid_response(v) for v in _responses(m, len(requests))]
    expected = [(table[(leaf, None)][reg], reg) for leaf in (0x8000_001F, 0) for reg in CpuidReg]
    assert answers == expected


def test_cpuid_request_default_table_reports_the_c_bit_and_the_trace_says_so():
    tracer = Tracer()
    m, _, result = _run([msr_cpuid_request(0x8000_001F, CpuidReg.EBX)], tracer=tracer)
    assert result.ok
    value, reg = decode_cpuid_response(_responses(m, 1)[0])
    assert reg == CpuidReg.EBX and value & 0x3F == 51 and (value >> 6) & 0x3F == 1
    words = [e.summary for e in tracer.of_kind("msr-protocol")]
    assert any("CPUID 0x8000001f EBX -> 0x73 (cbitpos 51, reduced-phys-bits 1)" in w for w in words)


def test_preferred_gpa_and_hv_features_and_unsupported_requests():
    unknown = 0xABC0_0000_0FFE  # GHCBInfo 0xFFE: not a request
    values = [msr_pref_gpa_request(), msr_hv_features_request(), unknown]
    m, _, result = _run(values)
    assert result.ok
    pref, features, other = _responses(m, 3)
    assert pref & 0xFFF == GhcbMsr.PREF_GPA_RESP and decode_gfn(pref, GhcbMsr.PREF_GPA_RESP) == (
        PREF_GPA_NONE
    )
    assert features == GhcbMsr.HV_FEATURES_RESP  # no SNP features
    # Not supported: the MSR keeps the guest's own request (KVM's behaviour).
    assert other == unknown


def test_ap_reset_hold_parks_the_only_vcpu_with_a_not_woken_answer():
    # AP reset hold is served (tests/smp has the wake-up): nothing wakes the
    # only vCPU, and its MSR holds response 0x007 with data 0 (KVM presets it).
    m, _, result = _run([msr_ap_reset_hold_request()])
    assert result.reason is RunReason.HALTED and "ap-reset-hold" in result.detail


def test_item11_a_vmgexit_on_an_unregistered_ghcb_terminates_and_leaves_the_page_alone():
    """Issue 15 item 11: GHCB spec 56421 2.3.2 -- after registration the
    guest must use the registered GHCB; the hypervisor terminates a guest
    that does not. Nothing is written into the other page (it was written
    ``SW_EXITINFO1 = 2, SW_EXITINFO2 = NOT_REGISTERED`` before)."""
    body = (
        register_ghcb()
        + f"""
    mov ecx, 0xC0010130
    mov eax, {CASE_GPA:#x}
    xor edx, edx
    wrmsr
"""
        + ghcb_call(
            {"sw_exit_code": 0x72, "sw_exit_info_1": 0, "sw_exit_info_2": 0, "rax": 0, "rcx": 0},
            gpa=CASE_GPA,
        )
        + exit_sev_es(0)
    )
    m, _, hv = build(body)
    result = hv.run(timeout=20)
    assert hv.vcpu_state(0).ghcb.registered == 0x5000
    assert result.reason is RunReason.TERMINATED, result
    term = result.termination
    assert term is not None and term.by == "hypervisor"
    assert f"{CASE_GPA:#x}" in term.detail and "registered 0x5000" in term.detail
    page = m.memory.read(CASE_GPA, 0x1000, private=False)
    assert (field(page, "sw_exit_info_1"), field(page, "sw_exit_info_2")) == (0, 0)
    assert field(page, "sw_exit_code") == 0x72  # the guest's request, untouched


def test_registering_a_page_outside_ram_is_refused():
    m, hv, result = _run([msr_register_gpa_request(0xFEB00)])
    assert result.ok
    response = _responses(m, 1)[0]
    assert decode_gfn(response, GhcbMsr.REG_GPA_RESP) == GFN_MASK
    assert hv.vcpu_state(0).ghcb.registered == 0x5000  # only the later, valid one


def test_termination_request_ends_the_run_with_its_reason():
    tracer = Tracer()
    m, _, hv = build(msr_protocol(msr_terminate(1, 0x42)) + "    hlt\n", tracer=tracer)
    result = hv.run(timeout=20)
    assert result.reason is RunReason.TERMINATED
    t = result.termination
    assert t is not None and (t.by, t.reason_set, t.reason_code) == ("guest", 1, 0x42)
    assert tracer.of_kind("terminate")


def test_msr_protocol_hook_can_lie():
    """An instrumenting hypervisor rewriting one MSR-protocol answer."""
    body = _exchange([msr_cpuid_request(0x8000_001F, CpuidReg.EBX)])
    m, _, hv = build(body + register_ghcb() + exit_sev_es(0))

    def lie(req, proceed):
        proceed()
        value, reg = decode_cpuid_response(req.response)
        req.response = msr_cpuid_response((value & ~0x3F) | 40, reg)

    hv.on_msr_protocol(GhcbMsr.CPUID_REQ, lie)
    assert hv.run(timeout=20).ok
    value, _ = decode_cpuid_response(_responses(m, 1)[0])
    assert value & 0x3F == 40


def test_table_lookup_uses_cpuid_table_object():
    table = CpuidTable.default(GuestConfig()).with_entries({(0x8000_001F, None): (0xA, 46, 0, 0)})
    m, _, result = _run([msr_cpuid_request(0x8000_001F, CpuidReg.EBX)], hv_kwargs={"cpuid": table})
    assert decode_cpuid_response(_responses(m, 1)[0])[0] == 46
