"""SEV-ES world switches: CR/EFER traps, register secrecy, VMSA integrity."""

from __future__ import annotations

import pytest

from sevx86.arch.exits import SvmExit
from sevx86.arch.msr import Efer
from sevx86.arch.vmcb import Intercept
from sevx86.arch.vmsa import VMSA, VMSA_DEFINED_SIZE, VMSA_GPR_NAMES

from .conftest import make_guest

SECRET = 0x5EC2E7_0000_0000
GPR_SETUP = "\n".join(
    f"    mov {reg}, {SECRET + i:#x}" for i, reg in enumerate(VMSA_GPR_NAMES) if reg != "rsp"
)
STORE_GPRS = "\n".join(
    f"    mov [rdi + {8 * i}], {reg}"
    for i, reg in enumerate(VMSA_GPR_NAMES)
    if reg not in ("rsp", "rdi")
)
XMM_SECRET = 0x5EC2E7_5EC2E7_5EC2E7_5EC2E7
SECRET_GUEST = f"""
start:
    mov rax, {XMM_SECRET & 0xFFFF_FFFF_FFFF_FFFF:#x}
    movq xmm0, rax
    mov rax, {XMM_SECRET >> 64:#x}
    movq xmm1, rax
    punpcklqdq xmm0, xmm1
{GPR_SETUP}
    hlt
    mov rdi, 0x70000
{STORE_GPRS}
    movq rax, xmm0
    mov [rdi + 128], rax
    hlt
"""


def test_cr_and_efer_write_traps_arrive_after_the_write_with_the_new_value():
    source = """
start:
    mov rax, cr4
    or rax, 0x40          ; MCE
    mov cr4, rax
after_cr4:
    mov rax, cr0
    or rax, 0x40000       ; AM
    mov cr0, rax
after_cr0:
    mov ecx, 0xc0000080
    rdmsr
    and eax, ~0x800       ; clear NXE
    wrmsr
after_efer:
    mov rdi, 0x70000
    mov rax, cr4
    mov [rdi], rax
    hlt
"""
    guest = make_guest(source)
    vmcb = guest.vcpu.vmcb
    vmcb.intercept(Intercept.CR0_WRITE_TRAP, Intercept.CR4_WRITE_TRAP, Intercept.EFER_WRITE_TRAP)
    first = guest.run()
    assert first.code == SvmExit.CR4_WRITE_TRAP
    assert first.info1 & 0x40 and first.info1 & 0x20  # new CR4: MCE added, PAE kept
    assert first.regs is None  # the host sees no registers under SEV-ES
    second = guest.run()
    assert second.code == SvmExit.CR0_WRITE_TRAP and second.info1 & 0x40000
    third = guest.run()
    assert third.code == SvmExit.EFER_WRITE_TRAP
    assert not third.info1 & Efer.NXE and third.info1 & Efer.LMA
    assert guest.run().code == SvmExit.HLT
    assert guest.results(1)[0] == first.info1  # the write really happened before the trap


def _host_reachable_bytes(guest) -> bytes:
    """Everything a host can read: all of DRAM (VMSA included) and the VMCB."""
    data = b"".join(image for _info, image in guest.host.memory.image())
    vmcb = guest.vcpu.vmcb
    return data + bytes(vmcb.control) + bytes(vmcb.iopm) + bytes(vmcb.msrpm)


def test_registers_are_readable_by_the_host_under_sev():
    guest = make_guest(SECRET_GUEST, "sev")
    exit = guest.run()
    assert exit.code == SvmExit.HLT
    for i, reg in enumerate(VMSA_GPR_NAMES):
        if reg != "rsp":
            assert exit.regs[reg] == SECRET + i
    assert exit.regs["xmm0"] == XMM_SECRET


def test_registers_are_absent_from_everything_the_host_reaches_under_sev_es():
    guest = make_guest(SECRET_GUEST, "sev-es")
    exit = guest.run()
    assert exit.code == SvmExit.HLT and exit.regs is None
    reachable = _host_reachable_bytes(guest)
    for i, reg in enumerate(VMSA_GPR_NAMES):
        if reg != "rsp":
            assert (SECRET + i).to_bytes(8, "little") not in reachable, reg
    assert XMM_SECRET.to_bytes(16, "little")[:8] not in reachable
    # ... yet the state survives the exit: the guest finds its registers intact.
    assert guest.run().code == SvmExit.HLT
    values = guest.results(17)
    for i, reg in enumerate(VMSA_GPR_NAMES):
        if reg not in ("rsp", "rdi"):
            assert values[i] == SECRET + i, reg
    assert values[16] == XMM_SECRET & 0xFFFF_FFFF_FFFF_FFFF


def _stopped_guest():
    guest = make_guest(SECRET_GUEST, "sev-es")
    assert guest.run().code == SvmExit.HLT
    return guest


# Every 16-byte slot of the architecturally defined part of the VMSA.
SLOTS = list(range(0, VMSA_DEFINED_SIZE, 16))


@pytest.mark.parametrize("offset", SLOTS, ids=[f"{o:#05x}" for o in SLOTS])
def test_one_changed_byte_of_the_vmsa_fails_vmrun(offset):
    guest = _stopped_guest()
    vmsa = guest.vcpu.vmsa_gpa
    byte = guest.host.memory.read(vmsa + offset, 1)
    guest.host.memory.write(vmsa + offset, bytes([byte[0] ^ 0x01]))
    exit = guest.run()
    assert exit.code == SvmExit.INVALID
    assert not guest.vcpu.alive
    assert guest.run().code == SvmExit.INVALID  # that guest never runs again


def test_an_older_vmsa_put_back_fails_vmrun():
    source = "start:\n    mov rax, 1\n    hlt\n    mov rax, 2\n    hlt\n    mov rax, 3\n    hlt\n"
    guest = make_guest(source, "sev-es")
    assert guest.run().code == SvmExit.HLT
    vmsa = guest.vcpu.vmsa_gpa
    old = guest.host.memory.read(vmsa, 4096)  # ciphertext after the first exit
    assert guest.run().code == SvmExit.HLT
    guest.host.memory.write(vmsa, old)  # replay: decrypts fine, but is stale
    assert guest.run().code == SvmExit.INVALID


def test_untouched_vmsa_resumes_with_every_register_intact():
    guest = _stopped_guest()
    assert guest.run().code == SvmExit.HLT
    values = guest.results(17)
    assert [values[i] for i, r in enumerate(VMSA_GPR_NAMES) if r not in ("rsp", "rdi")] == [
        SECRET + i for i, r in enumerate(VMSA_GPR_NAMES) if r not in ("rsp", "rdi")
    ]


def test_vmsa_holds_the_state_in_plaintext_for_the_cpu_only():
    guest = _stopped_guest()
    vmsa = guest.vcpu.vmsa_gpa
    private = guest.machine.memory.read_private(vmsa, 4096)
    assert VMSA.read(private, "rbx") == SECRET + VMSA_GPR_NAMES.index("rbx")
    assert VMSA.read(private, "cs.selector") == 0x08
    host = guest.host.memory.read(vmsa, 4096)
    assert VMSA.read(host, "rbx") != SECRET + VMSA_GPR_NAMES.index("rbx")
