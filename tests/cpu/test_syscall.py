"""SYSCALL/SYSRET and SYSENTER/SYSEXIT from user-mode guest code, in every guest mode.

Expected values come from AMD APM vol 3 (SYSCALL, SYSRET, SYSENTER, SYSEXIT)
and vol 2, 6.1.1: selectors from STAR/SYSENTER_CS, RCX/R11 from the
architecture, RFLAGS masked by SFMASK; and from the Linux x86-64 ABI for the
system-call numbers (getpid 39, write 1, exit 60), which the tiny "kernel"
below answers itself.
"""

from __future__ import annotations

import struct

import pytest

from sevx86.arch.descriptors import code_segment
from sevx86.arch.exits import SvmExit
from sevx86.cpu.exceptions import CpuMode, GuestFault
from sevx86.cpu.syscall import FastCallState, syscall_transition, sysenter_transition
from sevx86.harness import GDT_BASE, USER_STACK_TOP

from .conftest import RESULTS, make_guest

MODES = ["none", "sev", "sev-es"]
KERNEL_CS, KERNEL_SS = 0x08, 0x10
SYSRET_BASE = 0x18  # STAR[63:48]: 64-bit SYSRET -> CS 0x2B, SS 0x23 (the harness' user segments)
STAR = (SYSRET_BASE << 48) | (KERNEL_CS << 32)
SFMASK = 0x701  # CF | TF | IF | DF, cleared on entry
USER_RFLAGS = 0x243  # IF | ZF | CF | bit 1
PID = 1234


def _run_to_hlt(guest, limit: int = 20):
    """Run, resuming after the write-trap exits SEV-ES takes for EFER writes."""
    for _ in range(limit):
        exit = guest.run()
        if exit.code != SvmExit.EFER_WRITE_TRAP:
            return exit
    raise AssertionError("no HLT")


def _qwords(guest, addr: int, count: int) -> tuple[int, ...]:
    return struct.unpack(f"<{count}Q", guest.machine.memory.read_private(addr, 8 * count))


def _wrmsr(msr: int, value: int | str) -> str:
    if isinstance(value, str):  # a label
        return f"""
    mov ecx, {msr:#x}
    mov rax, {value}
    mov rdx, rax
    shr rdx, 32
    wrmsr"""
    return f"""
    mov ecx, {msr:#x}
    mov eax, {value & 0xFFFF_FFFF:#x}
    mov edx, {value >> 32:#x}
    wrmsr"""


def _to_ring3(cs: int, ss: int, target: str, rflags: int = USER_RFLAGS) -> str:
    return f"""
    push {ss:#x}
    mov rax, {USER_STACK_TOP:#x}
    push rax
    push {rflags:#x}
    push {cs:#x}
    mov rax, {target}
    push rax
    iretq"""


# The "kernel" side: records RCX, R11, RFLAGS, CS, SS, RAX (and R9, which only
# 64-bit code can have loaded) in slot 0 (first call) or slot 1 (exit), then
# answers getpid or halts on exit.
def _kernel(label: str, sysret: str) -> str:
    return f"""
{label}:
    pushfq
    pop r10
    mov r8, {RESULTS:#x}
    cmp eax, 60
    jne .record
    add r8, 0x80
.record:
    mov [r8], rcx
    mov [r8 + 8], r11
    mov [r8 + 16], r10
    xor r9, r9
    mov r9w, cs
    mov [r8 + 24], r9
    mov r9w, ss
    mov [r8 + 32], r9
    mov [r8 + 40], rax
    mov r9, 0x1122334455667788
    mov [r8 + 48], r9
    cmp eax, 60
    je .exit
    mov eax, {PID}
    {sysret}
.exit:
    hlt
"""


@pytest.mark.parametrize("mode", MODES)
def test_64_bit_syscall_enters_lstar_at_cpl0_and_sysretq_returns_to_ring3(mode):
    source = f"""
start:
{_wrmsr(0xC000_0081, STAR)}
{_wrmsr(0xC000_0082, "kernel_entry")}
{_wrmsr(0xC000_0083, "wrong_entry")}
{_wrmsr(0xC000_0084, SFMASK)}
{_to_ring3(0x2B, 0x23, "user")}
user:
    mov eax, 38
    add eax, 1            ; lazily evaluated flags in the same block: IF | PF remain
    syscall
after_getpid:
    mov rbx, {RESULTS + 0x100:#x}
    mov [rbx], rax
    mov [rbx + 8], rcx
    pushfq
    pop rdx
    mov [rbx + 16], rdx
    mov dx, cs
    mov [rbx + 24], dx
    mov dx, ss
    mov [rbx + 32], dx
    mov eax, 60
    syscall
after_exit:
    ud2
wrong_entry:
    hlt
{_kernel("kernel_entry", "sysretq")}"""
    guest = make_guest(source, mode, user_pages=True)
    assert _run_to_hlt(guest).code == SvmExit.HLT
    rcx, r11, rflags, cs, ss, rax, r9 = _qwords(guest, RESULTS, 7)
    user_flags = 0x206  # IF | PF | bit 1 after 38 + 1
    assert rcx == guest.symbol("after_getpid")  # RCX = the next RIP
    assert r11 == user_flags  # R11 = RFLAGS (RF clear)
    assert rflags == (user_flags & ~SFMASK) | 2  # IF masked by SFMASK
    assert (cs & 0xFFFF, ss & 0xFFFF) == (KERNEL_CS, KERNEL_SS)  # STAR[47:32], +8
    assert rax == 39 and r9 == 0x1122334455667788
    # SYSRETQ: CS = STAR[63:48] + 16 | 3, SS = + 8 | 3, RIP = RCX, RFLAGS = R11.
    ret_rax, ret_rcx, ret_flags, ret_cs, ret_ss = _qwords(guest, RESULTS + 0x100, 5)
    assert ret_rax == PID and ret_rcx == guest.symbol("after_getpid")
    assert ret_flags == user_flags
    assert (ret_cs & 0xFFFF, ret_ss & 0xFFFF) == (SYSRET_BASE + 16 | 3, SYSRET_BASE + 8 | 3)
    exit_rcx, _r11, _fl, exit_cs, _ss, exit_rax, _r9 = _qwords(guest, RESULTS + 0x80, 7)
    assert exit_rax == 60 and exit_rcx == guest.symbol("after_exit") and exit_cs & 0xFFFF == 8
    assert guest.machine.vcpus[0].fast_calls.count == 2
    calls = guest.tracer.of_kind("fast-call")
    assert [(e.data["instruction"], e.data["rax"]) for e in calls] == [
        ("SYSCALL", 39),
        ("SYSCALL", 60),
    ]
    assert calls[0].data["entry"] == guest.symbol("kernel_entry")
    assert calls[0].data["rip"] == guest.symbol("after_getpid") - 2


@pytest.mark.parametrize("mode", MODES)
def test_compat_mode_syscall_enters_cstar_in_64_bit_mode_and_sysretd_returns(mode):
    user32 = code_segment(dpl=3, long=False).encode().hex()
    source = f"""
start:
    mov rax, 0x{int.from_bytes(bytes.fromhex(user32), "little"):x}
    mov rbx, {GDT_BASE + SYSRET_BASE:#x}
    mov [rbx], rax        ; GDT entry 3: 32-bit ring-3 code, SYSRETD's CS
{_wrmsr(0xC000_0081, STAR)}
{_wrmsr(0xC000_0082, "wrong_entry")}
{_wrmsr(0xC000_0083, "compat_entry")}
{_wrmsr(0xC000_0084, SFMASK)}
{_to_ring3(SYSRET_BASE | 3, 0x23, "user32")}
bits 32
user32:
    mov eax, 39
    syscall
after_getpid:
    mov ebx, {RESULTS + 0x100:#x}
    mov [ebx], eax
    mov [ebx + 8], ecx
    mov dx, cs
    mov [ebx + 24], dx
    mov eax, 60
    syscall
    ud2
bits 64
wrong_entry:
    hlt
{_kernel("compat_entry", "sysretd")}"""
    guest = make_guest(source, mode, user_pages=True)
    assert _run_to_hlt(guest).code == SvmExit.HLT
    rcx, r11, rflags, cs, ss, rax, r9 = _qwords(guest, RESULTS, 7)
    assert rcx == guest.symbol("after_getpid") and rax == 39
    assert r11 == USER_RFLAGS and rflags == (USER_RFLAGS & ~SFMASK) | 2
    assert (cs & 0xFFFF, ss & 0xFFFF) == (KERNEL_CS, KERNEL_SS)
    assert r9 == 0x1122334455667788  # the handler ran as 64-bit code
    ret = _qwords(guest, RESULTS + 0x100, 4)
    assert ret[0] & 0xFFFF_FFFF == PID
    assert ret[3] & 0xFFFF == SYSRET_BASE | 3  # 32-bit SYSRET: CS = STAR[63:48] | 3


LEGACY = f"""
start:
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1             ; EFER.SCE
    wrmsr
    mov ecx, 0xC0000081
    mov eax, legacy_entry
    mov edx, {STAR >> 32:#x}
    wrmsr
    mov ecx, 0x174        ; SYSENTER_CS
    mov eax, {KERNEL_CS}
    xor edx, edx
    wrmsr
    mov ecx, 0x175        ; SYSENTER_ESP
    mov eax, 0x7F000
    wrmsr
    mov ecx, 0x176        ; SYSENTER_EIP
    mov eax, sysenter_entry
    wrmsr
    push 0x23
    push {USER_STACK_TOP:#x}
    push {USER_RFLAGS:#x}
    push 0x2B
    push user
    iretd
user:
    mov eax, 39
    syscall
after_syscall:
    mov ebx, {RESULTS + 0x100:#x}
    mov [ebx], eax
    mov [ebx + 8], ecx
    pushfd
    pop edx
    mov [ebx + 16], edx
    mov dx, cs
    mov [ebx + 24], dx
    mov dx, ss
    mov [ebx + 32], dx
    mov ecx, esp          ; SYSEXIT's ESP and EIP
    mov edx, after_sysenter
    mov eax, 4
    add eax, 1            ; flags of a lazily evaluated ADD in the same block: PF only
    sysenter
after_sysenter:
    mov ebx, {RESULTS + 0x200:#x}
    mov [ebx], eax
    mov [ebx + 8], esp
    mov dx, cs
    mov [ebx + 16], dx
    mov eax, 60
    sysenter
legacy_entry:
    mov edi, {RESULTS:#x}
    mov [edi], ecx
    pushfd
    pop esi
    mov [edi + 8], esi
    mov si, cs
    mov [edi + 16], si
    mov si, ss
    mov [edi + 24], si
    mov [edi + 32], eax
    mov eax, {PID}
    db 0x0F, 0x07         ; SYSRET (keystone has no 32-bit-code mnemonic for it)
sysenter_entry:
    pushfd
    pop esi
    cmp eax, 60
    je .exit
    mov edi, {RESULTS + 0x80:#x}
    mov [edi], esp
    mov [edi + 8], esi
    mov si, cs
    mov [edi + 16], si
    mov si, ss
    mov [edi + 24], si
    mov eax, 55
    sysexit
.exit:
    hlt
"""


@pytest.mark.parametrize("mode", MODES)
def test_legacy_mode_syscall_sysret_and_sysenter_sysexit(mode):
    guest = make_guest(LEGACY, mode, bits=32)
    assert _run_to_hlt(guest).code == SvmExit.HLT
    ecx, eflags, cs, ss, eax = (v & 0xFFFF_FFFF for v in _qwords(guest, RESULTS, 5))
    # Legacy SYSCALL: ECX = next EIP, CS = STAR[47:32], SS + 8, EIP = STAR[31:0]; VM, IF, RF = 0.
    assert ecx == guest.symbol("after_syscall") and eax == 39
    assert (cs & 0xFFFF, ss & 0xFFFF) == (KERNEL_CS, KERNEL_SS)
    assert eflags == USER_RFLAGS & ~0x200
    ret = [v & 0xFFFF_FFFF for v in _qwords(guest, RESULTS + 0x100, 5)]
    # Legacy SYSRET: CS = STAR[63:48] | 3, SS = + 8 | 3, EIP = ECX, IF = 1.
    assert ret[0] == PID and ret[1] == guest.symbol("after_syscall")
    assert ret[2] & 0x200 and (ret[3] & 0xFFFF, ret[4] & 0xFFFF) == (0x1B, 0x23)
    # SYSENTER: CS = SYSENTER_CS, SS = + 8, ESP = SYSENTER_ESP, IF cleared.
    esp, se_flags, se_cs, se_ss = (v & 0xFFFF_FFFF for v in _qwords(guest, RESULTS + 0x80, 4))
    # SYSENTER clears VM, IF and RF only: the ADD's flags (PF) survive.
    assert esp == 0x7F000 and se_flags == 0x6
    assert (se_cs & 0xFFFF, se_ss & 0xFFFF) == (KERNEL_CS, KERNEL_SS)
    # SYSEXIT: CS = SYSENTER_CS + 16 | 3, ESP = ECX, EIP = EDX.
    ex_eax, ex_esp, ex_cs = (v & 0xFFFF_FFFF for v in _qwords(guest, RESULTS + 0x200, 3))
    assert ex_eax == 55 and ex_esp == USER_STACK_TOP and ex_cs & 0xFFFF == (KERNEL_CS + 16) | 3
    assert guest.machine.vcpus[0].fast_calls.count == 3


RECORD_UD = f"""
ud_handler:
    mov rdi, {RESULTS:#x}
    mov rax, [rsp]
    mov [rdi], rax
    mov rax, [rsp + 8]
    mov [rdi + 8], rax
    hlt
"""


@pytest.mark.parametrize("mode", MODES)
def test_syscall_with_efer_sce_clear_is_ud(mode):
    source = f"""
start:
    mov ecx, 0xC0000080
    rdmsr
    and eax, ~1
    wrmsr
{_wrmsr(0xC000_0082, "wrong_entry")}
{_to_ring3(0x2B, 0x23, "user")}
user:
insn:
    syscall
    ud2
wrong_entry:
    mov rdi, {RESULTS + 0x80:#x}
    mov qword [rdi], 1
    hlt
{RECORD_UD}"""
    guest = make_guest(source, mode, handlers={6: "ud_handler"}, user_pages=True)
    assert _run_to_hlt(guest).code == SvmExit.HLT
    rip, cs = _qwords(guest, RESULTS, 2)
    assert rip == guest.symbol("insn") and cs == 0x2B  # a fault from ring 3, at the SYSCALL
    assert _qwords(guest, RESULTS + 0x80, 1) == (0,)
    assert guest.machine.vcpus[0].fast_calls.count == 0


@pytest.mark.parametrize("mode", MODES)
def test_sysenter_is_ud_in_long_mode_compat_and_64_bit(mode):
    user32 = int.from_bytes(code_segment(dpl=0, long=False).encode(), "little")
    source = f"""
start:
{_wrmsr(0x174, KERNEL_CS)}
{_wrmsr(0x176, "wrong_entry")}
insn64:
    sysenter
compat:
    mov rax, {user32:#x}
    mov rbx, {GDT_BASE + 0x18:#x}
    mov [rbx], rax
    push 0x18
    mov rax, code32
    push rax
    retfq
bits 32
code32:
insn32:
    sysenter
    ud2
bits 64
wrong_entry:
    hlt
ud_handler:
    mov rdi, {RESULTS:#x}
    mov rax, [rsp]
    cmp rax, insn64
    jne .second
    add qword [rsp], 2    ; step over the 64-bit SYSENTER
    mov [rdi], rax
    iretq
.second:
    mov [rdi + 8], rax
    mov rax, [rsp + 8]
    mov [rdi + 16], rax
    hlt
"""
    guest = make_guest(source, mode, handlers={6: "ud_handler"})
    assert _run_to_hlt(guest).code == SvmExit.HLT
    first, second, cs = _qwords(guest, RESULTS, 3)
    assert first == guest.symbol("insn64")
    assert second == guest.symbol("insn32") and cs == 0x18  # from compatibility mode


@pytest.mark.parametrize("mode", MODES)
def test_sysret_to_a_non_canonical_rcx_faults_with_gp_in_ring3(mode):
    """AMD: SYSRET loads a non-canonical RIP and the #GP(0) comes from the fetch at
    CPL 3 (Intel would #GP at CPL 0: Linux's ``entry_64.S`` warns of that case)."""
    source = f"""
start:
{_wrmsr(0xC000_0081, STAR)}
    mov rcx, 0x0000900000000000
    mov r11, 0x2
    sysretq
gp_handler:
    mov rdi, {RESULTS:#x}
    mov rax, [rsp]
    mov [rdi], rax
    mov rax, [rsp + 8]
    mov [rdi + 8], rax
    mov rax, [rsp + 16]
    mov [rdi + 16], rax
    hlt
"""
    guest = make_guest(source, mode, handlers={13: "gp_handler"}, user_pages=True)
    assert _run_to_hlt(guest).code == SvmExit.HLT
    error, rip, cs = _qwords(guest, RESULTS, 3)
    assert (error, rip, cs) == (0, 0x0000_9000_0000_0000, 0x2B)


def _state(**kw) -> FastCallState:
    base = dict(
        mode=CpuMode.LONG,
        code64=True,
        efer=0xD01,
        star=STAR,
        lstar=0xFFFF_8000_0000_1000,
        cstar=0x2000,
        sfmask=0x47700,
        sysenter_cs=0,
        sysenter_esp=0,
        sysenter_eip=0,
        rflags=0x10246,  # RF set
        next_rip=0x40_1002,
    )
    base.update(kw)
    return FastCallState(**base)


def test_syscall_transition_clears_rf_in_r11_and_masks_with_sfmask():
    t = syscall_transition(_state())
    assert t.rip == 0xFFFF_8000_0000_1000 and t.cs.selector == 8 and t.ss.selector == 0x10
    assert dict(t.gprs) == {1: 0x40_1002, 11: 0x246}
    assert t.rflags == 0x246 & ~0x47700 | 2
    assert t.cs.attrib & 0x200 and (t.cs.attrib >> 5) & 3 == 0  # 64-bit code, DPL 0


def test_sysenter_with_null_sysenter_cs_is_gp_and_real_mode_is_gp():
    with pytest.raises(GuestFault) as info:
        sysenter_transition(_state(mode=CpuMode.PROTECTED, code64=False))
    assert info.value.vector == 13
    with pytest.raises(GuestFault) as info:
        sysenter_transition(_state(mode=CpuMode.REAL, code64=False, sysenter_cs=8))
    assert info.value.vector == 13


def test_a_fast_call_does_not_end_an_instruction_slice_early():
    """The restart after SYSCALL is internal: with an instruction bound, the slice
    still ends only at the bound (an INTR exit) or at the guest's HLT."""
    source = f"""
start:
{_wrmsr(0xC000_0081, STAR)}
{_wrmsr(0xC000_0082, "entry")}
    xor ebx, ebx
again:
    syscall               ; ring 0 -> entry -> ring 3, 50 times
    inc ebx
    jmp again
entry:
    cmp ebx, 50
    je .done
    sysretq
.done:
    hlt
"""
    guest = make_guest(source, "none", user_pages=True)
    exit = guest.machine.vcpus[0].vmrun(timeout=10, max_instructions=100_000)
    assert exit.code == SvmExit.HLT  # 50 SYSCALLs, no INTR exit in between
    assert guest.machine.vcpus[0].fast_calls.count == 51
