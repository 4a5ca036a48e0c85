"""The guest moves itself from the reset state to long mode; in-place MSRs; VMGEXIT."""

from __future__ import annotations

import struct

import pytest

from sevx86.arch.exits import SvmExit
from sevx86.arch.ghcb import GhcbMsr, msr_encode
from sevx86.arch.msr import SevStatus
from sevx86.arch.vmcb import Intercept
from sevx86.asm import assemble
from sevx86.boot.reset import BSP_RESET_ADDR, reset_vmsa
from sevx86.config import GuestConfig, GuestMode
from sevx86.harness import TABLES_BASE, build_tables
from sevx86.machine import Machine

from .conftest import make_guest

BOOT = """
bits 16
org 0x8000
entry16:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdt_ptr]
    mov eax, cr0
    or eax, 1                       ; PE
    mov cr0, eax
    jmp 0x18:entry32
bits 32
entry32:
    mov ax, 0x10
    mov ds, ax
    mov ss, ax
    mov esp, 0x7000
    mov eax, cr4
    or eax, 0x20                    ; PAE
    mov cr4, eax
    mov eax, CR3_VALUE
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100                   ; LME
    wrmsr
    mov eax, cr0
    or eax, 0x80000000              ; PG
    mov cr0, eax
    jmp 0x08:entry64
bits 64
entry64:
    mov rdi, 0x500
    mov rax, 0x64646464
    mov [rdi], rax
    mov ecx, 0xC0000080
    rdmsr
    mov [rdi + 8], eax
    hlt
align 8
gdt:
    dq 0
    dq 0x00209B0000000000           ; 0x08: 64-bit code
    dq 0x00CF93000000FFFF           ; 0x10: data
    dq 0x00CF9B000000FFFF           ; 0x18: 32-bit code
gdt_ptr:
    dw gdt_ptr - gdt - 1
    dd gdt
"""

RESET = """
bits 16
org 0xFFFFFFF0
    jmp 0x0000:0x8000
pad_to 0x100000000
"""


def _boot_machine(mode: str) -> Machine:
    config = GuestConfig(mode=GuestMode(mode), memory=4 << 20)
    cr3, tables = build_tables(config, [])
    program = assemble(BOOT, bits=16, defines={"CR3_VALUE": cr3})
    reset = assemble(RESET, bits=16)
    machine = Machine(config)
    machine.load(TABLES_BASE, tables, name="page tables")
    machine.load(program.base, program.code, name="boot")
    machine.load(reset.base & ~0xFFF, bytes(0xFF0) + reset.code, name="reset vector")
    machine.add_vcpu(reset_vmsa(BSP_RESET_ADDR, 0x00A00F11))
    return machine


@pytest.mark.parametrize("mode", ["none", "sev", "sev-es"])
def test_guest_switches_real_to_protected_to_long_mode(mode):
    machine = _boot_machine(mode)
    host = machine.host_view()
    exit = host.vcpus[0].vmrun(timeout=10)
    assert exit.code == SvmExit.HLT, exit.detail
    marker, efer = struct.unpack("<QI", machine.memory.read_private(0x500, 12))
    assert marker == 0x64646464
    assert efer & 0x500 == 0x500  # LME and LMA: really in long mode


def test_sev_es_traps_follow_the_mode_switch_step_by_step():
    machine = _boot_machine("sev-es")
    vcpu = machine.host_view().vcpus[0]
    vcpu.vmcb.intercept(
        Intercept.CR0_WRITE_TRAP, Intercept.CR4_WRITE_TRAP, Intercept.EFER_WRITE_TRAP
    )
    seen = []
    while True:
        exit = vcpu.vmrun(timeout=10)
        if exit.code == SvmExit.HLT:
            break
        seen.append((exit.name, exit.info1))
    assert [name for name, _ in seen] == [
        "CR0_WRITE_TRAP",
        "CR4_WRITE_TRAP",
        "EFER_WRITE_TRAP",
        "CR0_WRITE_TRAP",
    ]
    assert seen[0][1] & 1 and seen[1][1] & 0x20 and seen[2][1] & 0x100
    assert seen[3][1] & 0x8000_0000  # paging on: the C-bit can now take effect


PROBE = """
start:
    mov ecx, 0xC0010131            ; SEV_STATUS
    rdmsr
    mov rdi, 0x70000
    mov [rdi], eax
    mov ecx, 0xC0010130            ; GHCB MSR: write a request, read it back
    mov eax, REQUEST
    xor edx, edx
    wrmsr
    rdmsr
    mov [rdi + 8], eax
    vmgexit
    mov ecx, 0xC0010130
    rdmsr
    mov [rdi + 16], eax
    mov [rdi + 20], edx
    hlt
"""


def test_ghcb_msr_and_sev_status_are_handled_in_place_and_vmgexit_is_an_ae():
    request = msr_encode(GhcbMsr.SEV_INFO_REQ)
    guest = make_guest(PROBE.replace("REQUEST", hex(request)))
    guest.vcpu.vmcb.intercept_all_msrs()  # even so: no #VC for these two MSRs
    exit = guest.run()
    assert exit.code == SvmExit.VMGEXIT
    assert guest.vcpu.vmcb["ghcb_gpa"] == request  # the host sees the GHCB MSR value
    guest.vcpu.vmcb["ghcb_gpa"] = 0x1234_5678_0000_0001  # the host's answer
    assert guest.run().code == SvmExit.HLT
    status, echoed, lo, hi = struct.unpack("<QQII", guest.machine.memory.read_private(0x70000, 24))
    assert status == SevStatus.SEV_ENABLED | SevStatus.SEV_ES_ENABLED
    assert echoed == request
    assert (hi << 32 | lo) == 0x1234_5678_0000_0001  # answer copied into the MSR at VMRUN
    assert guest.tracer.of_kind("vc") == []


def test_sev_status_reads_sev_only_without_es():
    source = "start:\n    mov ecx, 0xC0010131\n    rdmsr\n    mov rdi, 0x70000\n"
    source += "    mov [rdi], eax\n    hlt\n"
    guest = make_guest(source, "sev")
    assert guest.run().code == SvmExit.HLT
    assert guest.results(1)[0] & 0xFFFF_FFFF == SevStatus.SEV_ENABLED


def test_host_written_registers_reach_the_guest_in_mode_sev():
    source = """
start:
    mov eax, 1
    cpuid
    mov rdi, 0x70000
    mov [rdi], rbx
    mov [rdi + 8], r9
    hlt
"""
    guest = make_guest(source, "sev")
    guest.vcpu.vmcb.intercept(Intercept.CPUID)
    exit = guest.run()
    exit.regs.rbx = 0xB0B0
    exit.regs.r9 = 0x9999  # a malicious SEV host can rewrite any register
    exit.regs.rip = guest.vcpu.vmcb["next_rip"]
    assert guest.run().code == SvmExit.HLT
    assert guest.results(2) == (0xB0B0, 0x9999)
