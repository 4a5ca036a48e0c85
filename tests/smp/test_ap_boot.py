"""SEV-ES AP start-up as the GHCB spec and KVM define it.

The BSP sets the AP jump table (SW exit 0x8000_0005 SET) and sends each AP
INIT + SIPI through the x2APIC ICR (a #VC the handler forwards). The first
SIPI starts an AP from its launch VMSA at the AP reset address; the AP parks
in AP reset hold (MSR protocol 0x006). The BSP keeps sending INIT + SIPI
until the AP reports: the next SIPI ends the hold with a non-zero answer,
the AP registers its own GHCB, reads the jump table (GET), jumps there and
says "AP n up" on the serial port.
"""

from __future__ import annotations

import pytest

from sevx86.asm.guest_abi import GUEST_ASM_REASON_SET, VcReason
from sevx86.hv import RunReason
from sevx86.hv.smp import MpState
from sevx86.trace.events import Tracer

from .guests import EXIT, build

VCPUS = 4


def program(
    set_jump_table: bool = True, hold: str = "ap_reset_hold_msr", vcpus: int = VCPUS
) -> str:
    jt = "    lea rdi, [rel jump_table]\n    call ap_jump_table_set\n" if set_jump_table else ""
    return f"""
start:                              ; the BSP
{jt}
    mov r12, 1
.next_ap:
    mov edi, r12d
    mov esi, 0x10                   ; SIPI vector (ignored under SEV-ES: launch VMSA)
    call smp_init_sipi              ; start it / wake it
    mov ecx, 2000
.spin:
    pause
    lea rax, [rel ap_up]
    cmp byte [rax + r12], 0
    jne .up
    dec ecx
    jnz .spin
    jmp .next_ap                    ; not up yet: INIT + SIPI again
.up:
    inc r12
    cmp r12, {vcpus}
    jb .next_ap
    xor eax, eax
    jmp exit_with

ap_reset:                           ; AP reset address; RDI = the AP's index
    mov r12, rdi
    call {hold}                     ; parked until the BSP wakes us
    mov rax, r12
    shl rax, 12
    lea rdi, [rax + 0x20000]        ; our GHCB: tests/smp/guests.ghcb(n)
    call smp_register_ghcb
    jmp ap_jump                     ; where the AP jump table says

ap_main:
    lea rsi, [rel print_lock]
.lock:
    mov eax, 1
    xchg [rsi], eax                 ; a spinlock: one line at a time
    test eax, eax
    jz .locked
    pause
    jmp .lock
.locked:
    mov dx, 0x3F8
    lea rsi, [rel msg]
    mov ecx, 3
.text:
    lodsb
    out dx, al
    loop .text
    mov al, r12b
    add al, '0'
    out dx, al
    mov al, ' '
    out dx, al
    mov al, 'u'
    out dx, al
    mov al, 'p'
    out dx, al
    mov al, 10
    out dx, al
    lea rsi, [rel print_lock]
    mov dword [rsi], 0
    lea rax, [rel ap_up]
    mov byte [rax + r12], 1
.park:                              ; a later INIT + SIPI resumes here: halt again
    cli
    hlt
    jmp .park
{EXIT}
msg: db "AP "
align 8
jump_table: dq ap_main
print_lock: dd 0
ap_up: times 16 db 0
"""


@pytest.mark.parametrize("sched", ["deterministic", "parallel"])
def test_aps_reset_hold_wake_and_report_in(sched):
    tracer = Tracer()
    _, _, hv = build(
        program(),
        VCPUS,
        sched=sched,
        ap_start="sipi",
        preset_ghcbs=[0],
        ap_entry="ap_reset",
        tracer=tracer,
    )
    assert hv.vcpu_state(1).events.mp_state is MpState.UNINITIALIZED
    result = hv.run(timeout=120)
    assert result.ok, result
    lines = sorted(result.console.splitlines())
    assert lines == [f"AP {n} up" for n in range(1, VCPUS)], result.console
    assert hv.ap_jump_table != 0
    for n in range(1, VCPUS):
        st = hv.vcpu_state(n)
        assert st.events.received_first_sipi and st.ghcb.registered == 0x20000 + n * 0x1000
    holds = {e.vcpu for e in tracer.of_kind("ap-reset-hold")}
    assert holds == set(range(1, VCPUS))


def test_the_ghcb_form_of_ap_reset_hold_round_trips():
    # The AP parks through the GHCB (SW exit 0x8000_0004): it needs its GHCB
    # first, so here the harness presets every vCPU's.
    src = program(hold="ap_reset_hold", vcpus=2).replace("call smp_register_ghcb", "nop")
    _, _, hv = build(src, 2, ap_start="sipi", ap_entry="ap_reset")
    result = hv.run(timeout=60)
    assert result.ok, result
    assert result.console == "AP 1 up\n"
    assert result.counters.get("vmgexit:AP_HLT_LOOP", 0) >= 1


def test_an_ap_woken_without_a_jump_table_fails_and_names_itself():
    _, _, hv = build(
        program(set_jump_table=False, vcpus=2),
        2,
        ap_start="sipi",
        preset_ghcbs=[0],
        ap_entry="ap_reset",
    )
    result = hv.run(timeout=60)
    assert result.reason is RunReason.TERMINATED, result
    assert result.vcpu == 1 and "vCPU 1" in result.detail
    t = result.termination
    assert t is not None and (t.reason_set, t.reason_code) == (
        GUEST_ASM_REASON_SET,
        VcReason.AP_NO_JUMP_TABLE,
    )


def test_aps_do_not_run_before_init_sipi():
    # Nobody sends INIT-SIPI: the BSP halts, the APs never start.
    _, _, hv = build(
        "start:\n    cli\n    hlt\nap_reset:\n    ud2\n", 3, ap_start="sipi", ap_entry="ap_reset"
    )
    result = hv.run(timeout=30)
    assert result.reason is RunReason.HALTED
    assert "vCPU 0 halted with IF=0" in result.detail
    assert "vCPU 1 uninitialized" in result.detail


@pytest.mark.parametrize("mode", ["none", "sev"])
def test_without_sev_es_the_sipi_vector_says_where_the_ap_starts(mode):
    # The host owns the vCPU state without SEV-ES, so INIT + SIPI vector V
    # starts the AP in real mode at CS = V << 8, IP = 0 (KVM). The BSP copies
    # a 16-bit stub to V << 12; the AP reports its CS through the exit port.
    src = """
start:
    lea rsi, [rel ap16]
    mov edi, 0xC0000
    mov ecx, ap16_end - ap16
    rep movsb
    mov edi, 1
    mov esi, 0xC0
    call smp_init_sipi
.wait:
    pause
    jmp .wait

bits 16
ap16:
    mov ax, cs                      ; 0xC000 when the vector was applied
    shr ax, 8
    out 0xF4, al                    ; status 0xC0, from the AP
    hlt
ap16_end:
bits 64
"""
    _, _, hv = build(src, 2, ap_start="sipi", ap_entry="start", mode=mode)
    result = hv.run(timeout=60)
    assert result.reason is RunReason.EXIT_STATUS, result
    assert result.exit_status == 0xC0  # only the AP's CS can give it


def test_under_sev_es_the_host_cannot_set_where_an_ap_starts():
    _, _, hv = build("start:\n    hlt\n", 2, ap_start="sipi", ap_entry="start")
    with pytest.raises(PermissionError):
        hv.host.vcpus[1].load_state(bytes(4096))
