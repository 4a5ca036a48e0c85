"""The host takes the CPU back (INTR exits) and injects events through EVENTINJ."""

from __future__ import annotations

import pytest

from sevx86.arch.exits import SvmExit
from sevx86.arch.vmcb import EventType, encode_event
from sevx86.sp.secure_processor import SecureProcessor
from sevx86.vmexit import StopReason

from .conftest import make_guest

MODES = ["sev-es", "sev", "none"]

COUNT_LOOP = """
start:
    mov rcx, 200000
    xor rax, rax
top:
    add rax, rcx
    dec rcx
    jnz top
    mov rdi, 0x70000
    mov [rdi], rax
    hlt
"""


@pytest.mark.parametrize("mode", MODES)
def test_instruction_slices_end_in_intr_exits_and_the_guest_resumes_exactly(mode):
    guest = make_guest(COUNT_LOOP, mode)
    slices = 0
    while True:
        exit = guest.vcpu.vmrun(max_instructions=50_000)
        if exit.code == SvmExit.HLT:
            break
        assert exit.code == SvmExit.INTR and exit.stop is StopReason.INSTRUCTION_LIMIT
        slices += 1
    assert slices >= 10  # about 600k instructions in 50k slices
    assert guest.results(1)[0] == 200000 * 200001 // 2


def test_wall_clock_limit_is_an_intr_exit_and_the_guest_can_continue():
    guest = make_guest("start:\n    jmp start\n")
    exit = guest.vcpu.vmrun(timeout=0.05)
    assert exit.code == SvmExit.INTR and exit.stop is StopReason.TIMEOUT
    assert guest.vcpu.alive
    assert guest.vcpu.vmrun(timeout=0.05).stop is StopReason.TIMEOUT


TIMER_GUEST = """
start:
    sti
    hlt                     ; wait for the timer tick
after_hlt:
    mov rdi, 0x70000
    mov rax, [rdi + 8]
    mov [rdi], rax
    hlt
timer_handler:
    mov rdi, 0x70000
    mov qword [rdi + 8], 0x7117
    mov rax, [rsp]          ; where the interrupt returns
    mov [rdi + 16], rax
    iretq
"""


@pytest.mark.parametrize("mode", MODES)
def test_hlt_waits_for_an_injected_timer_interrupt(mode):
    guest = make_guest(TIMER_GUEST, mode, handlers={0x20: "timer_handler"})
    exit = guest.run()
    assert exit.code == SvmExit.HLT
    assert guest.vcpu.vmcb["int_state"] & 2  # the guest has IF set: it can take it
    if exit.regs is not None:
        exit.regs.rip = guest.vcpu.vmcb["next_rip"]  # the host steps over HLT itself
    guest.vcpu.vmcb["event_inj"] = encode_event(0x20, EventType.INTR) & 0xFFFF_FFFF
    assert guest.run().code == SvmExit.HLT
    marker, _, returned_to = guest.results(3)
    assert marker == 0x7117 and returned_to == guest.symbol("after_hlt")
    assert guest.vcpu.vmcb["event_inj"] == 0  # consumed by VMRUN


def test_int_state_reports_interrupts_disabled():
    guest = make_guest("start:\n    cli\n    hlt\n")
    assert guest.run().code == SvmExit.HLT
    assert not guest.vcpu.vmcb["int_state"] & 2


def test_injected_nmi_and_exception_with_error_code():
    source = """
start:
    hlt
    hlt
    hlt
nmi_handler:
    mov rdi, 0x70000
    mov qword [rdi], 0x2222
    iretq
gp_handler:
    mov rdi, 0x70000
    pop rax
    mov [rdi + 8], rax
    iretq
"""
    guest = make_guest(source, handlers={2: "nmi_handler", 13: "gp_handler"})
    assert guest.run().code == SvmExit.HLT
    guest.vcpu.vmcb["event_inj"] = encode_event(2, EventType.NMI) & 0xFFFF_FFFF
    assert guest.run().code == SvmExit.HLT
    value = encode_event(13, EventType.EXCEPTION, error_code=0x1234)
    guest.vcpu.vmcb["event_inj"] = value & 0xFFFF_FFFF
    guest.vcpu.vmcb["event_inj_err"] = value >> 32
    assert guest.run().code == SvmExit.HLT
    assert guest.results(2) == (0x2222, 0x1234)


def test_an_internal_failure_is_an_emulation_error_not_an_exception(monkeypatch):
    guest = make_guest("start:\n    hlt\n    hlt\n")
    assert guest.run().code == SvmExit.HLT

    def broken(*_args):
        raise RuntimeError("simulated failure inside the Secure Processor")

    monkeypatch.setattr(SecureProcessor, "vmsa_verified", broken)
    exit = guest.run()
    assert exit.stop is StopReason.EMULATION_ERROR
    assert "RuntimeError" in exit.detail
    assert not guest.vcpu.alive
    # The operator's trace has the whole message; the host's exit only the type.
    (event,) = guest.tracer.of_kind("emulation-error")
    assert "simulated failure" in event.summary
