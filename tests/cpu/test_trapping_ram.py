"""RAM the host takes back for emulation (``HostMemory.set_trapping``), KVM's memslots.

While a range traps, a guest access to it is a nested page fault exactly as
for a GPA without RAM: #VC with error code NPF under SEV-ES (the edk2 commit
that added NPF handling to OVMF's #VC handler: "a NPF intercept for an NPT
entry with a reserved bit set generates a #VC exception"), an NPF exit with
the registers otherwise. Toggling flushes the TLBs, so a translation cached
before the change is never used after it; toggled back, the page is plain
memory again with its bytes unchanged.
"""

from __future__ import annotations

import pytest

from sevx86.arch.exits import SvmExit
from sevx86.memory.dram import UnmappedAddress

from .conftest import RESULTS, make_guest

PAGE = 0x200000  # a guest RAM page of its own (mapped C=1 by the harness)
VALUE = 0x1122_3344_5566_7788

# The #VC handler records its error code and the faulting RIP, halts (the
# host changes the memory map meanwhile), then returns to the instruction.
VC_RECORD_HALT_RETURN = f"""
vc_handler:
    push rdi
    mov rdi, {RESULTS:#x}
    mov rax, [rsp + 8]
    mov [rdi], rax
    mov rax, [rsp + 16]
    mov [rdi + 8], rax
    pop rdi
    add rsp, 8
    hlt
    iretq
"""

DATA_PROGRAM = f"""
start:
    mov rdi, {PAGE:#x}
    mov rsi, {RESULTS:#x}
    mov rax, [rdi]          ; plain RAM: the TLB now maps the page
    mov [rsi + 16], rax
    hlt                     ; the host makes the page trap
insn:
    mov rax, [rdi]
    mov [rsi + 24], rax
    hlt
{VC_RECORD_HALT_RETURN}
"""


def _guest(source: str, mode: str):
    guest = make_guest(source, mode, handlers={29: "vc_handler"})
    guest.machine.memory.write_private(PAGE, VALUE.to_bytes(8, "little"))
    return guest


def test_sev_es_read_of_a_trapping_ram_page_is_vc_npf_and_plain_again_when_toggled_back():
    guest = _guest(DATA_PROGRAM, "sev-es")
    memory = guest.host.memory
    assert guest.run().code == SvmExit.HLT
    assert memory.set_trapping(PAGE, 0x1000, True) is True
    assert memory.is_trapping(PAGE) and not memory.is_trapping(PAGE + 0x1000)
    assert memory.set_trapping(PAGE, 0x1000, True) is False  # no change, no flush
    assert guest.run().code == SvmExit.HLT  # the one in the #VC handler
    error_code, rip = guest.results(2)
    assert (error_code, rip) == (SvmExit.NPF, guest.symbol("insn"))
    assert memory.set_trapping(PAGE, 0x1000, False) is True
    assert guest.run().code == SvmExit.HLT  # IRETQ replayed the load: plain memory
    assert guest.results(4)[2:] == (VALUE, VALUE)
    assert [e.data["code"] for e in guest.tracer.of_kind("vc")] == [SvmExit.NPF]


def test_without_sev_es_the_host_gets_an_npf_exit_with_the_gpa():
    guest = _guest(DATA_PROGRAM, "none")
    memory = guest.host.memory
    halt = guest.run()
    assert halt.code == SvmExit.HLT
    halt.regs.rip = guest.vcpu.vmcb["next_rip"]  # a direct exit: the host steps over HLT
    memory.set_trapping(PAGE, 0x1000, True)
    exit = guest.run()
    assert exit.code == SvmExit.NPF and exit.info2 == PAGE
    assert exit.regs.rip == guest.symbol("insn")
    # The host could emulate the load; here it gives the page back and re-enters.
    memory.set_trapping(PAGE, 0x1000, False)
    assert guest.run().code == SvmExit.HLT
    assert guest.results(4)[2:] == (VALUE, VALUE)


def test_code_on_a_trapping_page_faults_on_fetch_even_after_it_ran():
    source = f"""
start:
    call func               ; runs (and is translated) as plain RAM
    hlt                     ; the host makes func's page trap
    call func
    hlt
{VC_RECORD_HALT_RETURN}
    align 0x1000
func:
    mov rax, 0x77
    ret
"""
    guest = make_guest(source, "sev-es", handlers={29: "vc_handler"})
    func = guest.symbol("func")
    assert guest.run().code == SvmExit.HLT
    guest.host.memory.set_trapping(func & ~0xFFF, 0x1000, True)
    assert guest.run().code == SvmExit.HLT
    assert guest.results(2) == (SvmExit.NPF, func)
    guest.host.memory.set_trapping(func & ~0xFFF, 0x1000, False)
    assert guest.run().code == SvmExit.HLT


def test_only_whole_pages_of_guest_ram_can_trap():
    guest = _guest(DATA_PROGRAM, "none")
    memory = guest.host.memory
    with pytest.raises(ValueError):
        memory.set_trapping(PAGE + 8, 0x1000, True)
    with pytest.raises(UnmappedAddress):
        memory.set_trapping(0xFEB0_0000, 0x1000, True)


# -- read-only RAM (KVM_MEM_READONLY): reads are memory, writes fault -----------------

STORE_PROGRAM = f"""
start:
    mov rdi, {PAGE:#x}
    mov rsi, {RESULTS:#x}
    mov rax, [rdi]          ; a read of a read-only page is plain memory
    mov [rsi + 16], rax
    mov rax, 0x5a5a
store:
    mov [rdi + 8], rax
    hlt
{VC_RECORD_HALT_RETURN}
"""


def test_a_store_to_read_only_ram_is_an_npf_exit_the_host_can_emulate():
    guest = _guest(STORE_PROGRAM, "none")
    memory = guest.host.memory
    assert memory.set_readonly(PAGE, 0x1000, True) is True
    exit = guest.run()
    assert exit.code == SvmExit.NPF and exit.info2 == PAGE + 8
    assert exit.info1 & 0b11 == 0b11  # present, write
    assert exit.regs.rip == guest.symbol("store")
    assert guest.results(3)[2] == VALUE  # the read before it was plain memory
    # The host emulates the store (QEMU's ROM device write) and steps over it.
    memory.write(PAGE + 8, exit.regs.rax.to_bytes(8, "little"))
    exit.regs.rip = guest.vcpu.vmcb["next_rip"]
    assert guest.run().code == SvmExit.HLT
    assert memory.read(PAGE + 8, 8) == (0x5A5A).to_bytes(8, "little")
    assert memory.set_readonly(PAGE, 0x1000, False) is True


def test_under_sev_es_a_store_to_read_only_ram_is_no_vc_but_an_automatic_npf_exit():
    guest = _guest(STORE_PROGRAM, "sev-es")
    guest.host.memory.set_readonly(PAGE, 0x1000, True)
    exit = guest.run()
    # Not the reserved-bit fault of MMIO: no #VC; the host gets the GPA only.
    assert exit.code == SvmExit.NPF and exit.info2 == PAGE + 8 and exit.regs is None
    assert guest.tracer.of_kind("vc") == []
    assert guest.results(3)[2] == VALUE
    assert guest.machine.memory.read_private(PAGE + 8, 8) == bytes(8)
    # The host cannot emulate it; once the page is writable the store goes through.
    guest.host.memory.set_readonly(PAGE, 0x1000, False)
    assert guest.run().code == SvmExit.HLT
    assert guest.machine.memory.read_private(PAGE + 8, 8) == (0x5A5A).to_bytes(8, "little")


def test_the_hypervisor_ends_the_run_on_an_npf_it_cannot_emulate():
    from sevx86.hv import Hypervisor, RunReason

    guest = _guest(STORE_PROGRAM, "sev-es")
    guest.host.memory.set_readonly(PAGE, 0x1000, True)
    result = Hypervisor(guest.host).run(timeout=10)
    assert result.reason is RunReason.EMULATION_ERROR
    assert f"GPA {PAGE + 8:#x}" in result.detail and "encrypted" in result.detail
