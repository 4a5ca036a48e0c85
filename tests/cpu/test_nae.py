"""Every NAE instruction raises #VC with its exit code and RIP on the instruction."""

from __future__ import annotations

import pytest

from sevx86.arch.exits import SvmExit
from sevx86.arch.vmcb import Intercept

from .conftest import RECORD_AND_HALT, make_guest

MMIO_GPA = 0xFEC0_0000


def _dr(vmcb, *, read=False, write=False):
    if read:
        vmcb["intercept_dr_read"] = vmcb["intercept_dr_read"] | (1 << 7)
    if write:
        vmcb["intercept_dr_write"] = vmcb["intercept_dr_write"] | (1 << 7)


CASES = [
    ("cpuid", "xor eax, eax\ninsn: cpuid", SvmExit.CPUID, lambda v: v.intercept(Intercept.CPUID)),
    ("in", "mov dx, 0x3f8\ninsn: in al, dx", SvmExit.IOIO, lambda v: v.intercept_all_io()),
    ("out imm8", "insn: out 0x80, al", SvmExit.IOIO, lambda v: v.intercept_all_io()),
    ("rdmsr", "mov ecx, 0x10\ninsn: rdmsr", SvmExit.MSR, lambda v: v.intercept_all_msrs()),
    (
        "wrmsr",
        "mov ecx, 0x1b\nxor eax, eax\nxor edx, edx\ninsn: wrmsr",
        SvmExit.MSR,
        lambda v: v.intercept_all_msrs(),
    ),
    ("rdtsc", "insn: rdtsc", SvmExit.RDTSC, lambda v: v.intercept(Intercept.RDTSC)),
    ("rdtscp", "insn: rdtscp", SvmExit.RDTSCP, lambda v: v.intercept(Intercept.RDTSCP)),
    ("rdpmc", "xor ecx, ecx\ninsn: rdpmc", SvmExit.RDPMC, lambda v: v.intercept(Intercept.RDPMC)),
    ("invd", "insn: invd", SvmExit.INVD, lambda v: v.intercept(Intercept.INVD)),
    ("wbinvd", "insn: wbinvd", SvmExit.WBINVD, lambda v: v.intercept(Intercept.WBINVD)),
    ("vmmcall", "insn: vmmcall", SvmExit.VMMCALL, lambda v: v.intercept(Intercept.VMMCALL)),
    (
        "monitor",
        "mov rax, 0x70000\nxor ecx, ecx\nxor edx, edx\ninsn: db 0x0f, 0x01, 0xc8",
        SvmExit.MONITOR,
        lambda v: v.intercept(Intercept.MONITOR),
    ),
    (
        "mwait",
        "xor eax, eax\nxor ecx, ecx\ninsn: db 0x0f, 0x01, 0xc9",
        SvmExit.MWAIT,
        lambda v: v.intercept(Intercept.MWAIT),
    ),
    ("dr7 read", "insn: mov rax, dr7", SvmExit.DR7_READ, lambda v: _dr(v, read=True)),
    (
        "dr7 write",
        "mov eax, 0x400\ninsn: mov dr7, rax",
        SvmExit.DR7_WRITE,
        lambda v: _dr(v, write=True),
    ),
    ("mmio load", f"mov rdi, {MMIO_GPA:#x}\ninsn: mov eax, [rdi]", SvmExit.NPF, lambda v: None),
    (
        "mmio store",
        f"mov rdi, {MMIO_GPA:#x}\ninsn: mov [rdi + 8], rax",
        SvmExit.NPF,
        lambda v: None,
    ),
]


@pytest.mark.parametrize("name,body,code,setup", CASES, ids=[c[0] for c in CASES])
def test_nae_raises_vc_with_exit_code_and_rip(name, body, code, setup):
    source = f"start:\n{body}\n    hlt\n{RECORD_AND_HALT}"
    guest = make_guest(source, handlers={29: "record_handler"}, mmio=[MMIO_GPA])
    setup(guest.vcpu.vmcb)
    exit = guest.run()
    assert exit.code == SvmExit.HLT, exit.detail
    error_code, rip = guest.results(2)
    assert error_code == code
    assert rip == guest.symbol("insn")
    vc = guest.tracer.of_kind("vc")
    assert [e.data["code"] for e in vc] == [code]


@pytest.mark.parametrize("name,body,code,setup", CASES[:3], ids=[c[0] for c in CASES[:3]])
def test_not_intercepted_means_no_vc(name, body, code, setup):
    # Without the host's intercept the instruction runs (or floats, for I/O)
    # and the program reaches its own HLT: #VC only for what the host traps.
    source = f"start:\n{body}\nend:\n    hlt\n{RECORD_AND_HALT}"
    guest = make_guest(source, handlers={29: "record_handler"})
    assert guest.run().code == SvmExit.HLT
    assert guest.tracer.of_kind("vc") == []


def test_cpuid_in_32_bit_protected_mode_raises_vc():
    source = """
start:
    mov eax, 0x8000001f
insn:
    cpuid
    hlt
record_handler:
    pop eax
    mov edi, 0x70000
    mov [edi], eax
    mov ebx, [esp]
    mov [edi + 8], ebx
    hlt
"""
    guest = make_guest(source, handlers={29: "record_handler"}, bits=32)
    guest.vcpu.vmcb.intercept(Intercept.CPUID)
    assert guest.run().code == SvmExit.HLT
    error_code, rip = guest.results(2)
    assert (error_code & 0xFFFF_FFFF, rip & 0xFFFF_FFFF) == (SvmExit.CPUID, guest.symbol("insn"))


@pytest.mark.parametrize("mode", ["none", "sev"])
def test_nae_exits_go_straight_to_the_host_without_sev_es(mode):
    source = "start:\n    mov eax, 7\ninsn:\n    cpuid\nafter:\n    hlt\n" + RECORD_AND_HALT
    guest = make_guest(source, mode, handlers={29: "record_handler"})
    guest.vcpu.vmcb.intercept(Intercept.CPUID)
    exit = guest.run()
    assert exit.code == SvmExit.CPUID
    assert exit.regs.rip == guest.symbol("insn") and exit.regs.rax == 7
    assert guest.vcpu.vmcb["next_rip"] == guest.symbol("after")
    exit.regs.rbx = 0x1234_5678  # the host emulates CPUID with the registers it sees
    exit.regs.rip = guest.vcpu.vmcb["next_rip"]
    assert guest.run().code == SvmExit.HLT
    assert guest.tracer.of_kind("vc") == []
