"""The one local APIC per vCPU, as guests reach it: x2APIC MSRs and the xAPIC page."""

from __future__ import annotations

import pytest

from sevx86.hv import RunReason
from sevx86.trace.events import Tracer
from tests.smp.guests import EXIT, build

XAPIC_PAGE = 0xFEE0_0000
# Intel SDM vol 3, 10.5.3: ESR bit 5 "Send Illegal Vector".
ESR_SEND_ILLEGAL_VECTOR = 1 << 5

ILLEGAL_SELF_IPI = f"""
start:
    mov ecx, 0x830              ; x2APIC ICR: self, fixed, vector 1 (reserved)
    mov eax, 0x00040001
    xor edx, edx
    wrmsr
    mov ecx, 0x828              ; x2APIC ESR: write 0 to latch, then read
    xor eax, eax
    wrmsr
    rdmsr
    mov [rel esr_x2apic], rax
    mov ecx, 0x83F              ; x2APIC SELF IPI, vector 2
    mov eax, 2
    wrmsr
    mov ecx, 0x828
    xor eax, eax
    wrmsr
    rdmsr
    mov [rel esr_self_ipi], rax
    mov rsi, {XAPIC_PAGE:#x}
    mov dword [rsi + 0x300], 0x00040001  ; xAPIC ICR low: the same IPI
    mov dword [rsi + 0x280], 0  ; latch ESR
    mov eax, [rsi + 0x280]
    mov [rel esr_xapic], rax
    mov dword [rsi + 0x280], 0  ; no error since: the next latch reads 0
    mov eax, [rsi + 0x280]
    mov [rel esr_after], rax
    xor eax, eax
    jmp exit_with
{EXIT}
align 8
esr_x2apic: dq -1
esr_self_ipi: dq -1
esr_xapic: dq -1
esr_after: dq -1
"""


def _read(machine, program, name: str) -> int:
    return int.from_bytes(machine.memory.read_private(program.symbol(name), 8), "little")


@pytest.mark.parametrize("mode", ["none", "sev", "sev-es"])
def test_self_ipi_with_an_illegal_vector_is_not_delivered_and_sets_esr(mode):
    """Issue 15 item 1: ICR/SELF IPI with vector 1 -> no delivery, ESR bit 5, guest goes on."""
    tracer = Tracer()
    machine, program, hv = build(ILLEGAL_SELF_IPI, 1, mode=mode, mmio=(XAPIC_PAGE,), tracer=tracer)
    result = hv.run(timeout=60)
    assert result.reason is RunReason.EXIT_STATUS and result.exit_status == 0, result
    assert _read(machine, program, "esr_x2apic") == ESR_SEND_ILLEGAL_VECTOR
    assert _read(machine, program, "esr_self_ipi") == ESR_SEND_ILLEGAL_VECTOR
    assert _read(machine, program, "esr_xapic") == ESR_SEND_ILLEGAL_VECTOR
    assert _read(machine, program, "esr_after") == 0
    assert not tracer.of_kind("irq-request") and not tracer.of_kind("inject")
    assert len(tracer.of_kind("apic-error")) == 3
    assert hv.vcpu_state(0).events.irr == set()


def test_the_xapic_page_and_the_x2apic_msrs_reach_one_register_file():
    _, _, hv = build("start:\n    hlt\n" + EXIT, 2, mode="none")
    apics = hv.lapic
    hv.current_vcpu = 1
    apics.mmio_write(0x080, 4, 0x20)  # xAPIC TPR of vCPU 1
    assert apics.msr_read(1, 0x808) == 0x20 and apics.msr_read(0, 0x808) == 0
    assert apics.msr_read(1, 0x80A) == 0x20  # PPR follows the TPR class
    assert apics.msr_write(1, 0x808, 0x30) and apics.mmio_read(0x080, 4) == 0x30
    assert apics.mmio_read(0x020, 4) == 1 << 24  # xAPIC ID in bits 31:24
    assert apics.msr_read(1, 0x802) == 1  # x2APIC ID: the whole register
    assert not apics.msr_write(1, 0x802, 5)  # read-only in x2APIC mode: #GP
    assert apics.msr_read(1, 0x80B) is None  # EOI is write-only: #GP
    assert not apics.msr_write(1, 0x828, 1)  # only 0 may be written to the x2APIC ESR
