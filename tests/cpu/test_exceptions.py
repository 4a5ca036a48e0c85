"""Exception and interrupt delivery through the guest's IVT/IDT, as the processor does it."""

from __future__ import annotations

import struct

import pytest

from sevx86.arch.exits import SvmExit
from sevx86.arch.paging import PfErr
from sevx86.boot.reset import BSP_RESET_ADDR, reset_vmsa
from sevx86.config import GuestConfig, GuestMode
from sevx86.harness import IST1_TOP, STACK_TOP, USER_STACK_TOP
from sevx86.machine import Machine

from .conftest import RESULTS, make_guest

MODES = ["sev-es", "sev", "none"]

TO_RING3 = """
    mov rax, 0x23
    push rax
    mov rax, 0xA0000
    push rax
    pushfq
    mov rax, 0x2B
    push rax
    mov rax, user
    push rax
    iretq
"""

# Stores error code, RIP, CS, RFLAGS, old RSP, old SS, current RSP, CR2.
RECORD_FRAME = f"""
record_frame:
    mov rdi, {RESULTS:#x}
    pop rax
    mov [rdi], rax
    mov rax, [rsp]
    mov [rdi + 8], rax
    mov rax, [rsp + 8]
    mov [rdi + 16], rax
    mov rax, [rsp + 16]
    mov [rdi + 24], rax
    mov rax, [rsp + 24]
    mov [rdi + 32], rax
    mov rax, [rsp + 32]
    mov [rdi + 40], rax
    mov [rdi + 48], rsp
    mov rax, cr2
    mov [rdi + 56], rax
    hlt
"""


@pytest.mark.parametrize("mode", MODES)
def test_page_fault_lands_in_the_handler_with_cr2_and_error_code(mode):
    source = f"""
start:
    mov rsi, 0x40001234
insn:
    mov [rsi], eax
    hlt
{RECORD_FRAME}"""
    guest = make_guest(source, mode, handlers={14: "record_frame"})
    assert guest.run().code == SvmExit.HLT
    error, rip, cs, rflags, *_rest, cr2 = guest.results(8)
    assert error == PfErr.WR  # not present, write, supervisor
    assert cr2 == 0x40001234
    assert rip == guest.symbol("insn") and cs == 0x08


def test_nx_fetch_page_fault_has_the_id_bit():
    source = f"""
start:
    mov rax, 0xFEC00000
    jmp rax
{RECORD_FRAME}"""
    guest = make_guest(source, handlers={14: "record_frame"}, mmio=[0xFEC00000])
    assert guest.run().code == SvmExit.HLT
    error, rip, *_rest, cr2 = guest.results(8)
    assert error == PfErr.P | PfErr.ID and cr2 == rip == 0xFEC00000


@pytest.mark.parametrize("mode", MODES)
def test_privilege_change_switches_to_rsp0_and_pushes_ss_rsp(mode):
    source = f"""
start:
{TO_RING3}
user:
insn:
    mov rax, cr0          ; #GP(0) at CPL 3
    hlt
{RECORD_FRAME}"""
    guest = make_guest(source, mode, handlers={13: "record_frame"}, user_pages=True)
    assert guest.run().code == SvmExit.HLT
    error, rip, cs, rflags, old_rsp, old_ss, rsp, _cr2 = guest.results(8)
    assert error == 0 and rip == guest.symbol("insn")
    assert (cs, old_ss, old_rsp) == (0x2B, 0x23, USER_STACK_TOP)
    # RSP0 from the TSS, 16-byte aligned, minus SS, RSP, RFLAGS, CS, RIP (+ error, popped).
    assert rsp == STACK_TOP - 5 * 8


def test_ist_stack_and_double_fault_from_a_missing_gate():
    source = f"""
start:
{TO_RING3}
user:
    mov rax, cr0          ; #GP, but IDT entry 13 is empty: #GP(0x6b) -> #DF
    hlt
{RECORD_FRAME}"""
    guest = make_guest(source, handlers={8: "record_frame"}, ist={8: 1}, user_pages=True)
    assert guest.run().code == SvmExit.HLT
    error, _rip, cs, _rfl, old_rsp, _ss, rsp, _ = guest.results(8)
    assert error == 0  # #DF always pushes zero
    assert rsp == IST1_TOP - 5 * 8 and old_rsp == USER_STACK_TOP and cs == 0x2B
    chain = guest.tracer.of_kind("exception")[-1].summary
    # An empty entry is no interrupt/trap gate: #GP(13 * 8 + 2 + EXT), contributory
    # twice, hence #DF (APM vol 2, 8.2.9).
    assert chain.startswith("#GP(0x0) -> #GP(0x6b) -> #DF(0x0)")


@pytest.mark.parametrize("mode", MODES)
def test_triple_fault_is_a_reported_shutdown(mode):
    guest = make_guest("start:\n    ud2\n", mode)  # no IDT entries at all
    exit = guest.run()
    assert exit.code == SvmExit.SHUTDOWN
    assert "triple fault" in exit.detail
    assert not guest.vcpu.alive
    assert guest.run().code == SvmExit.INVALID  # a dead vCPU never runs again


def test_int_n_from_ring3_through_a_dpl3_gate_and_refused_through_dpl0():
    source = f"""
start:
{TO_RING3}
user:
    int 0x80
back:
    int 0x81              ; DPL 0 gate: #GP(0x81 * 8 + 2)
    hlt
syscall_handler:
    mov rdi, {RESULTS + 0x100:#x}
    mov rax, [rsp]
    mov [rdi], rax
    iretq
{RECORD_FRAME}"""
    guest = make_guest(
        source,
        handlers={0x80: "syscall_handler", 0x81: "syscall_handler", 13: "record_frame"},
        user_gates=[0x80],
        user_pages=True,
    )
    assert guest.run().code == SvmExit.HLT
    assert struct.unpack("<Q", guest.machine.memory.read_private(RESULTS + 0x100, 8))[0] == (
        guest.symbol("back")
    )
    error, rip, *_ = guest.results(8)
    assert error == 0x81 * 8 + 2 and rip == guest.symbol("back")


def test_interrupt_gate_clears_if_and_trap_flag():
    source = f"""
start:
    pushfq
    or qword [rsp], 0x200  ; IF
    popfq
    int3
    hlt
{RECORD_FRAME}"""
    guest = make_guest(source, handlers={3: "record_frame"})
    assert guest.run().code == SvmExit.HLT
    # INT3 pushes no error code: slot 0 is the RIP, slot 2 the RFLAGS.
    rip, _cs, rflags = guest.results(3)
    assert rflags & 0x200  # IF was set when the interrupt came
    state = guest.machine.vcpus[0]
    live = state.uc.reg_read(__import__("unicorn").x86_const.UC_X86_REG_RFLAGS)
    assert not live & 0x200 and not live & 0x100


def test_32_bit_protected_mode_delivery_with_error_code():
    source = """
start:
    mov ax, 0x77          ; beyond the GDT limit
insn:
    mov ds, ax
    hlt
gp_handler:
    mov edi, 0x70000
    pop eax
    mov [edi], eax
    mov eax, [esp]
    mov [edi + 8], eax
    mov [edi + 16], esp
    hlt
"""
    guest = make_guest(source, handlers={13: "gp_handler"}, bits=32)
    assert guest.run().code == SvmExit.HLT
    error, rip, esp = (v & 0xFFFF_FFFF for v in guest.results(3))
    assert error == 0x74 and rip == guest.symbol("insn")
    assert esp == STACK_TOP - 3 * 4  # EIP, CS, EFLAGS on the same stack


REAL_MODE = """
bits 16
org 0x8000
entry:
    xor ax, ax
    mov ss, ax
    mov sp, 0x7000
    mov ds, ax
    mov word [0x40], int10          ; IVT[0x10] = 0000:int10
    mov word [0x42], 0
    mov word [0x00], de             ; IVT[0] = #DE
    mov word [0x02], 0
    int 0x10
    mov cx, 0
    mov ax, 5
divide:
    div cl                          ; #DE
    hlt
int10:
    mov word [0x500], 0x1010
    iret
de:
    mov bp, sp
    mov ax, [bp]                    ; saved IP: the DIV itself (a fault)
    mov [0x502], ax
    mov ax, [bp + 2]                ; saved CS
    mov [0x504], ax
    mov word [0x506], 0xDEDE
    hlt
"""

# The reset vector: from F000:FFF0 (CS base FFFF0000) far-jump to low RAM.
RESET = """
bits 16
org 0xFFFFFFF0
    jmp 0x0000:0x8000
pad_to 0x100000000
"""


@pytest.mark.parametrize("mode", MODES)
def test_real_mode_ivt_delivery_from_the_reset_state(mode):
    from sevx86.asm import assemble

    program = assemble(REAL_MODE, bits=16)
    reset = assemble(RESET, bits=16)
    machine = Machine(GuestConfig(mode=GuestMode(mode), memory=1 << 20))
    machine.load(program.base, program.code, name="code")
    machine.load(reset.base & ~0xFFF, bytes(0xFF0) + reset.code, name="reset vector")
    machine.add_vcpu(reset_vmsa(BSP_RESET_ADDR, 0x00A00F11))
    host = machine.host_view()
    exit = host.vcpus[0].vmrun(timeout=10)
    assert exit.code == SvmExit.HLT, exit.detail
    marker, ip, cs, de = struct.unpack("<4H", machine.memory.read_private(0x500, 8))
    assert marker == 0x1010 and de == 0xDEDE
    assert (cs, ip) == (0, program.symbol("divide"))
