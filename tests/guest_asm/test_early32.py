"""The early 32-bit handler: CPUID over the GHCB MSR protocol, before paging."""

from __future__ import annotations

import pytest

from sevx86.arch.exits import SvmExit
from sevx86.arch.ghcb import GhcbMsr, decode_cpuid_request, decode_msr, msr_cpuid_response
from sevx86.arch.vectors import Vector
from sevx86.arch.vmcb import EventType, encode_event
from sevx86.asm.guest_abi import VcReason
from sevx86.testing import ScriptedHost

from .conftest import assert_halted, assert_terminated

TABLE = {
    0x0000_0000: (0x10, 0x6874_7541, 0x444D_4163, 0x6974_6E65),
    0x8000_0000: (0x8000_0021, 0, 0, 0),
    0x8000_001F: (0x0001_000F, 0x0000_0173, 0x1FF, 1),
}
SAVED_MSR = 0x0000_0000_0000_F000  # what the program left in the GHCB MSR


def program(leaf: int, body: str = "    cpuid") -> str:
    return f"""
start:
    mov ecx, 0xC0010130
    mov eax, {SAVED_MSR & 0xFFFF_FFFF:#x}
    xor edx, edx
    wrmsr
    mov esi, 0x51515151
    mov edi, 0xD1D1D1D1
    mov ebp, 0xB0B0B0B0
    mov eax, {leaf:#x}
    mov ecx, 0x77
{body}
    mov [results], eax
    mov [results + 4], ebx
    mov [results + 8], ecx
    mov [results + 12], edx
    mov ecx, 0xC0010130
    rdmsr
    mov [ghcb_msr], eax
    mov [ghcb_msr + 4], edx
    mov eax, [results]
    mov ecx, [results + 8]
    mov edx, [results + 12]
    hlt
results: dd 0, 0, 0, 0
ghcb_msr: dq 0
%include "vc_early32.S"
"""


@pytest.mark.parametrize("leaf", [0x0, 0x8000_0000, 0x8000_001F])
def test_cpuid_through_the_msr_protocol(sev_guest, leaf):
    run = sev_guest(program(leaf), bits=32, host=ScriptedHost(cpuid=TABLE))
    assert_halted(run)
    assert tuple(run.u32("results", i) for i in range(4)) == TABLE[leaf]
    # One VMGEXIT per register, asking for EAX, EBX, ECX, EDX in turn.
    assert [e.name for e in run.exits] == ["MSR:CPUID_REQ"] * 4
    assert [decode_cpuid_request(e.info1) for e in run.exits] == [(leaf, r) for r in range(4)]
    regs = run.vmsa()
    assert (regs["rsi"], regs["rdi"], regs["rbp"]) == (0x51515151, 0xD1D1D1D1, 0xB0B0B0B0)
    assert regs["rsp"] == 0x80000
    assert run.u64("ghcb_msr") == SAVED_MSR  # restored, as OVMF's handler does


def test_a_reply_for_another_register_terminates(sev_guest):
    def wrong_echo(record, page):
        fn, reg = decode_cpuid_request(record.info1)
        return msr_cpuid_response(0x1234, (reg + 1) % 4)

    host = ScriptedHost(cpuid=TABLE, tamper=wrong_echo)
    run = sev_guest(program(0), bits=32, host=host)
    assert_terminated(run, VcReason.MSR_PROTOCOL)


def test_a_wrong_response_code_terminates(sev_guest):
    host = ScriptedHost(cpuid=TABLE, tamper=lambda record, page: int(GhcbMsr.SEV_INFO_RESP))
    run = sev_guest(program(0), bits=32, host=host)
    assert_terminated(run, VcReason.MSR_PROTOCOL)
    code, _ = decode_msr(run.exits[-1].info1)
    assert code == GhcbMsr.TERM_REQ


@pytest.mark.parametrize(
    "leaf, answer",
    [
        (0x8000_0000, (0x8000_0008, 0, 0, 0)),  # hides the SEV leaf
        (0x8000_001F, (0x0000_0001, 0x173, 0, 0)),  # SME only: denies SEV
    ],
)
def test_cpuid_answers_that_deny_sev_terminate(sev_guest, leaf, answer):
    run = sev_guest(program(leaf), bits=32, host=ScriptedHost(cpuid={leaf: answer}))
    assert_terminated(run, VcReason.CPUID_SANITY)


def test_a_vc_other_than_cpuid_terminates(sev_guest):
    run = sev_guest(program(0, body="    rdtsc"), bits=32, host=ScriptedHost(cpuid=TABLE))
    assert_terminated(run, VcReason.UNSUPPORTED_EXIT)


def test_an_injected_cpuid_vc_without_cpuid_terminates(sev_guest):
    class Injector(ScriptedHost):
        def run(self, host, *, timeout=20.0, max_exits=100_000):
            vcpu = host.vcpus[0]
            assert vcpu.vmrun(timeout=timeout).name == "HLT"
            event = encode_event(Vector.VC, EventType.EXCEPTION, SvmExit.CPUID)
            vcpu.vmcb["event_inj"] = event & 0xFFFF_FFFF
            vcpu.vmcb["event_inj_err"] = event >> 32
            return super().run(host, timeout=timeout, max_exits=max_exits)

    run = sev_guest(program(0, body="    hlt\n    nop\n    nop"), bits=32, host=Injector())
    assert_terminated(run, VcReason.DECODE)
