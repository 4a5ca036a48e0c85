"""The 64-bit handler's contract: set-up, termination, injected #VC, nesting, CPL 3."""

from __future__ import annotations

import pytest

from sevx86.arch.exits import SvmExit
from sevx86.arch.ghcb import GHCB, GeneralTermReason, TermReasonSet
from sevx86.arch.vectors import Vector
from sevx86.arch.vmcb import EventType, encode_event
from sevx86.asm.guest_abi import GUEST_ASM_REASON_SET, VcReason
from sevx86.testing import ScriptedHost

from .conftest import assert_halted, assert_only_changed, assert_terminated, nae_program

TABLE = {0x4000_0000: (1, 2, 3, 4)}


class Injector(ScriptedHost):
    """Runs to the first HLT, then injects #VC(code) at the next VMRUN: a
    hypervisor faking an intercept (the "WeSee" attack on #VC handlers)."""

    def __init__(self, code: int, **kwargs):
        super().__init__(**kwargs)
        self.code = code

    def run(self, host, *, timeout=20.0, max_exits=100_000):
        vcpu = host.vcpus[0]
        assert vcpu.vmrun(timeout=timeout).name == "HLT"
        event = encode_event(Vector.VC, EventType.EXCEPTION, self.code)
        vcpu.vmcb["event_inj"] = event & 0xFFFF_FFFF
        vcpu.vmcb["event_inj_err"] = event >> 32
        return super().run(host, timeout=timeout, max_exits=max_exits)


@pytest.mark.parametrize(
    "code, instruction",
    [
        (SvmExit.CPUID, "nop"),
        (SvmExit.MSR, "xor eax, eax"),
        (SvmExit.IOIO, "add eax, 1"),
        (SvmExit.RDTSC, "pause"),
        (SvmExit.VMMCALL, "nop"),
        (SvmExit.DR7_WRITE, "mov rax, cr0"),
    ],
)
def test_injected_vc_for_an_instruction_that_is_not_there_terminates(sev_guest, code, instruction):
    run = sev_guest(nae_program(f"    hlt\n    {instruction}"), host=Injector(code))
    assert_terminated(run, VcReason.DECODE)
    assert [e.name for e in run.exits] == ["MSR:TERM_REQ"]  # nothing sent through the GHCB


def test_injected_vc_with_an_unknown_code_terminates(sev_guest):
    run = sev_guest(nae_program("    hlt\n    nop"), host=Injector(SvmExit.POPF))
    assert_terminated(run, VcReason.UNSUPPORTED_EXIT)


def test_program_requested_termination_carries_its_reason(sev_guest):
    run = sev_guest(nae_program("    mov edi, 0x42\n    jmp vc_terminate"))
    assert run.terminated is not None
    assert (run.terminated.reason_set, run.terminated.reason_code) == (GUEST_ASM_REASON_SET, 0x42)
    assert run.terminated.via == "msr-protocol"


def test_no_ghcb_configured_terminates(sev_guest):
    run = sev_guest(nae_program("    cpuid"), ghcb_gpa=None)
    assert_terminated(run, VcReason.NO_GHCB)


def test_dr7_read_needs_no_ghcb(sev_guest):
    run = sev_guest(nae_program("    mov rbx, dr7"), ghcb_gpa=None)
    assert_halted(run)
    assert run.reg("rbx") == 0x400


def test_vc_inside_the_handler_terminates(sev_guest):
    # Point the handler's GHCB at MMIO: its first GHCB store raises #VC
    # inside the #VC handler. One GHCB cannot serve two requests at once.
    setup = """
    mov rdi, 0xE00000
    mov rsi, rdi
    xor edx, edx
    call pt_map_2m
    mov rax, 0xE00000
    mov [vc_ghcb_va], rax
"""
    run = sev_guest(nae_program("    cpuid", setup=setup))
    assert_terminated(run, VcReason.NESTED)


def test_mmio_before_the_c_bit_is_known_terminates(sev_guest):
    # Mapping the window needs the C-bit (table entries carry it); forget it after.
    setup = """
    mov rdi, 0xE00000
    mov rsi, rdi
    xor edx, edx
    call pt_map_2m
    mov qword [vc_cbit_mask], 0
"""
    run = sev_guest(nae_program("    mov eax, [rdi]", {"rdi": 0xE00000}, setup=setup))
    assert_terminated(run, VcReason.NO_CBIT)


def test_vc_setup_negotiates_version_and_learns_the_c_bit(sev_guest):
    body = "    call vc_setup\n    mov eax, 0x40000000\n    cpuid"
    host = ScriptedHost(cpuid=TABLE, protocol=(1, 2))
    run = sev_guest(nae_program(body), host=host, defines={"VC_CBIT_MASK": 0})
    assert_halted(run)
    assert [e.name for e in run.exits] == ["MSR:SEV_INFO_REQ", "CPUID"]
    assert run.exits[1].version == 2
    assert run.u64("vc_cbit_mask") == 1 << 51
    assert_only_changed(run, None, {"rax", "rbx", "rcx", "rdx"})


def test_vc_setup_takes_the_hypervisors_lower_maximum(sev_guest):
    host = ScriptedHost(cpuid=TABLE, protocol=(1, 1))
    run = sev_guest(nae_program("    call vc_setup\n    cpuid"), host=host)
    assert_halted(run)
    assert run.exits[-1].version == 1


def test_vc_setup_without_a_common_version_terminates_with_the_spec_reason(sev_guest):
    run = sev_guest(nae_program("    call vc_setup"), host=ScriptedHost(protocol=(3, 4)))
    assert run.terminated is not None
    assert (run.terminated.reason_set, run.terminated.reason_code) == (
        TermReasonSet.GENERAL,
        GeneralTermReason.PROTOCOL_UNSUPPORTED,
    )


@pytest.mark.parametrize(
    "event",
    [
        encode_event(Vector.PF, EventType.EXCEPTION, 0),  # not #GP/#UD
        encode_event(Vector.GP, EventType.INTR),  # not an exception
        encode_event(Vector.GP, EventType.EXCEPTION, valid=False),
    ],
    ids=["page-fault", "interrupt-type", "not-valid"],
)
def test_exceptions_other_than_gp_and_ud_are_refused(sev_guest, event):
    def inject(record, page):
        if page is not None:
            GHCB["sw_exit_info_1"].write(page, 1)
            GHCB["sw_exit_info_2"].write(page, event)

    run = sev_guest(nae_program("    cpuid"), host=ScriptedHost(tamper=inject))
    assert_terminated(run, VcReason.BAD_EXCEPTION)


def test_ud_request_reaches_the_ud_handler_without_an_error_code(sev_guest):
    def inject(record, page):
        if page is not None:
            GHCB["sw_exit_info_1"].write(page, 1)
            GHCB["sw_exit_info_2"].write(page, encode_event(Vector.UD, EventType.EXCEPTION))

    ud = """
ud_handler:
    mov rax, [rsp]              ; RIP: no error code on the stack for #UD
    mov [ud_rip], rax
    add qword [rsp], 2          ; skip the CPUID
    iretq
ud_rip: dq 0
"""
    run = sev_guest(
        nae_program("faulting:\n    cpuid", data=ud),
        host=ScriptedHost(tamper=inject),
        handlers={Vector.VC: "vc_handler", Vector.UD: "ud_handler"},
    )
    assert_halted(run)
    assert run.u64("ud_rip") == run.addr("faulting")
    assert_only_changed(run, None, {"rax"})


def test_gp_request_without_a_gp_gate_terminates(sev_guest):
    run = sev_guest(nae_program("    rdmsr", {"rcx": 0x1234}))  # refused, and no #GP gate
    assert_terminated(run, VcReason.BAD_EXCEPTION)


def _ring3(user_body: str) -> str:
    """Setup code: make the program pages and the user stack U/S, IRETQ to
    ring 3 and run ``user_body`` there; INT 0x80 (wired to ``to_ring0``)
    gets back to ring 0."""
    return f"""
    mov rdi, 0x100000
.user_pages:
    call pt_walk
    bts qword [rcx], 2          ; U/S
    add rdi, 0x1000
    cmp rdi, 0x104000
    jb .user_pages
    mov rdi, 0x9F000
    call pt_walk
    bts qword [rcx], 2
    mov rax, cr3
    mov cr3, rax                ; flush
    push 0x23                   ; SS: user data
    push 0xA0000                ; RSP: user stack top
    push 0x202                  ; RFLAGS
    push 0x2B                   ; CS: user code
    push user_code
    iretq
user_code:
{user_body}
    int 0x80
"""


RING0 = """
to_ring0:
    hlt
pf_handler:
    mov rax, [rsp]
    mov [pf_error], rax
    mov rax, cr2
    mov [pf_cr2], rax
    hlt
align 8
pf_error: dq -1
pf_cr2: dq 0
"""
RING3_VECTORS = {Vector.VC: "vc_handler", 0x80: "to_ring0", Vector.PF: "pf_handler"}


def test_vc_from_ring_3_reports_cpl_3_and_returns_there(sev_guest):
    # The #VC switches to RSP0 through the TSS; the handler returns to ring 3.
    seen = {}

    def hypercall(regs):
        seen.update(regs)
        return 0x77

    user = "    mov eax, 7\n    vmmcall\n    mov r12, rax"
    run = sev_guest(
        nae_program("", setup=_ring3(user), data=RING0),
        host=ScriptedHost(vmmcall=hypercall),
        handlers=RING3_VECTORS,
        user_gates=[0x80],
    )
    assert_halted(run)
    assert seen["cpl"] == 3 and seen["rax"] == 7
    assert run.reg("r12") == 0x77


def test_ring_3_string_io_from_its_own_memory_works(sev_guest):
    host = ScriptedHost()
    user = "    mov rsi, text\n    mov ecx, 5\n    mov edx, 0x3F8\n    rep outsb"
    run = sev_guest(
        nae_program("", setup=_ring3(user), data=RING0 + "text: db 'user!'"),
        host=host,
        handlers=RING3_VECTORS,
        user_gates=[0x80],
    )
    assert_halted(run)
    assert host.ports.out_bytes(0x3F8) == b"user!"


@pytest.mark.parametrize("insn, write", [("rep outsb", False), ("rep insb", True)])
def test_ring_3_string_io_into_kernel_memory_is_a_page_fault(sev_guest, insn, write):
    # 0x5000 is a supervisor page: the CPL-0 handler must not read or write
    # it on behalf of ring 3 (CVE-2023-46813). The string starts 8 bytes
    # before it, on a user page, so CR2 must point at the first refused byte.
    host = ScriptedHost()
    pointer = "rsi" if not write else "rdi"
    user = f"    mov {pointer}, 0x4FF8\n    mov ecx, 0x20\n    mov edx, 0x3F8\n    {insn}"
    setup = """
    mov rdi, 0x4000
    call pt_walk
    bts qword [rcx], 2          ; 0x4000 is a user page, 0x5000 stays supervisor
""" + _ring3(user)
    run = sev_guest(
        nae_program("", setup=setup, data=RING0),
        host=host,
        handlers=RING3_VECTORS,
        user_gates=[0x80],
    )
    assert_halted(run)
    # U/S set (from ring 3), P set (present, protection), W for INS.
    assert run.u64("pf_error") == 0b101 | (0b10 if write else 0)
    assert run.u64("pf_cr2") == 0x5000
    assert host.ports.log == []  # nothing reached or left the port
    assert run.exits == []
