"""NMIs and interrupts the host injects (EVENTINJ) into an SEV-ES guest.

NMI rule (APM vol 2, 8.5; GHCB spec "NMI Complete"): while the guest's NMI
handler runs, NMIs are masked; the host cannot see its IRET, so it waits for
the NMI_COMPLETE VMGEXIT. A second NMI requested before that stays pending
in the hypervisor and is injected after it.

Interrupts: injected through the guest IDT when the VMCB interrupt state says
IF=1 and no shadow; HLT waits for one; halted with IF=0 and nothing pending
is halted for good.
"""

from __future__ import annotations

import pytest

from sevx86.arch.exits import SvmExit
from sevx86.arch.vectors import Vector
from sevx86.hv import RunReason

from .guests import EXIT, build

# The guest logs events as bytes: 'E'n (NMI n entered), 'C'n (NMI n about to
# complete), 'I' (interrupt), 'M' (main code saw both NMIs).
NMI_GUEST = f"""
start:
    cli
    hlt                         ; the host requests NMI 1 at this exit (an NMI
                                ; wakes HLT whatever IF says); not from a #VC:
                                ; an NMI landing inside the #VC handler whose
                                ; handler takes a #VC is the nested case the
                                ; handler refuses (Linux shifts its IST stack)
.wait:
    pause
    cmp qword [rel nmis], 2
    jb .wait
    mov al, 'M'
    call log
    xor eax, eax
    jmp exit_with

nmi_handler:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    lea rax, [rel nmis]
    mov rcx, [rax]
    inc rcx
    mov [rax], rcx
    mov al, 'E'
    call log
    cmp rcx, 1
    jne .done
    mov dx, 0x81
    out dx, al                  ; the host requests NMI 2 now: it must wait
    mov ecx, 20000
.busy:                          ; and stay in the handler a while (many exits)
    mov dx, 0x82
    out dx, al
    sub ecx, 1000
    jnz .busy
.done:
    mov al, 'C'
    call log
    call nmi_complete           ; VMGEXIT NMI_COMPLETE: the window opens
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    iretq

log:                            ; append AL to the log
    push rsi
    push rcx
    lea rsi, [rel log_len]
    mov rcx, [rsi]
    inc qword [rsi]
    lea rsi, [rel log_buf]
    mov [rsi + rcx], al
    pop rcx
    pop rsi
    ret
{EXIT}
align 8
nmis: dq 0
log_len: dq 0
log_buf: times 32 db 0
"""


class _Trigger:
    """A port the host watches: a write requests an NMI on the writing vCPU."""

    name = "nmi-trigger"

    def __init__(self, hv, ports):
        self.hv = hv
        self.ports = ports
        self.requests: list[int] = []

    def io_read(self, port, size):
        return 0

    def io_write(self, port, size, value):
        if port in self.ports:
            self.requests.append(port)
            self.hv.request_nmi(self.hv.current_vcpu)


@pytest.mark.parametrize("sched", ["deterministic", "parallel"])
def test_a_second_nmi_waits_for_nmi_complete(sched):
    machine, program, hv = build(NMI_GUEST, 1, sched=sched, handlers={Vector.NMI: "nmi_handler"})
    trigger = _Trigger(hv, {0x81})
    hv.io_bus.register(0x81, 2, trigger)

    @hv.on_exit(SvmExit.HLT)
    def first_nmi(ctx, proceed):
        proceed()
        trigger.requests.append("hlt")
        hv.request_nmi(ctx.vcpu.index)

    result = hv.run(timeout=60)
    assert result.ok, result
    length = int.from_bytes(machine.memory.read_private(program.symbol("log_len"), 8), "little")
    log = machine.memory.read_private(program.symbol("log_buf"), length)
    # NMI 2 was requested inside handler 1 but entered only after its completion.
    assert log == b"ECECM", log
    assert trigger.requests == ["hlt", 0x81]
    assert result.counters["vmgexit:NMI_COMPLETE"] == 2


IRQ_GUEST = f"""
start:
    sti
    hlt                         ; wait for the timer tick
    cmp qword [rel ticks], 1
    jne .bad
    cli
    hlt                         ; IF=0, nothing pending: halted for good
.bad:
    mov al, 1
    jmp exit_with

tick:                           ; vector 0x30
    push rax
    push rcx
    push rdx
    lea rax, [rel ticks]
    inc qword [rax]
    mov ecx, 0x80B              ; x2APIC EOI (a #VC the host accepts)
    xor eax, eax
    xor edx, edx
    wrmsr
    pop rdx
    pop rcx
    pop rax
    iretq
{EXIT}
align 8
ticks: dq 0
"""


def test_hlt_waits_for_an_interrupt_and_ifzero_halts_for_good():
    machine, program, hv = build(IRQ_GUEST, 1, handlers={0x30: "tick"})
    hv.request_interrupt(0, 0x30)  # pending before the guest can take it
    result = hv.run(timeout=30)
    ticks = int.from_bytes(machine.memory.read_private(program.symbol("ticks"), 8), "little")
    assert ticks == 1
    assert result.reason is RunReason.HALTED, result
    assert "vCPU 0 halted with IF=0" in result.detail


def test_an_interrupt_stays_pending_while_if_is_zero():
    source = f"""
start:
    cli
    hlt
{EXIT}
tick:
    iretq
"""
    _, _, hv = build(source, 1, handlers={0x30: "tick"})
    hv.request_interrupt(0, 0x30)
    result = hv.run(timeout=30)
    assert result.reason is RunReason.HALTED and "IF=0" in result.detail
    assert hv.vcpu_state(0).events.irr == {0x30}  # never injected


def test_a_fixed_ipi_interrupts_another_vcpu():
    source = f"""
start:                          ; RDI = index
    test rdi, rdi
    jnz ap
    mov rax, (1 << 32) | (0x40 | (1 << 14))   ; fixed IPI, vector 0x40, to APIC ID 1
    call smp_send_ipi
.wait:
    pause
    cmp qword [rel got], 1
    jne .wait
    xor eax, eax
    jmp exit_with
ap:
    sti
.idle:
    hlt
    jmp .idle
handler:
    push rax
    lea rax, [rel got]
    mov qword [rax], 1
    pop rax
    iretq
{EXIT}
align 8
got: dq 0
"""
    _, _, hv = build(source, 2, handlers={0x40: "handler"})
    result = hv.run(timeout=30)
    assert result.ok, result
