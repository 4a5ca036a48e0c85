"""Translations: flushed when the architecture says so, kept across world switches.

APM vol 2, 5.5: after changing a PTE the guest must INVLPG the page (or
write CR3) before the new translation is guaranteed; a translation nothing
invalidated may stay cached -- here, across an automatic exit and VMRUN.
Fills are counted on the engine's TLB-fill hook.
"""

from __future__ import annotations

import pytest

from sevx86.arch.exits import SvmExit

from .conftest import RESULTS, make_guest

PAGE_A, PAGE_B, VIRT = 0xB0000, 0xB1000, 0xC0000
ADDR_MASK = 0x0007_FFFF_FFFF_F000  # entry bits 50:12 (below the C-bit at 51)

PROGRAM = f"""
start:
    mov rdi, {RESULTS:#x}
    mov r11, {VIRT:#x}
    mov r12, {PAGE_A:#x}
    mov r13, {PAGE_B:#x}
    mov rax, 0x1111
    mov [r12], rax
    mov rax, 0x2222
    mov [r13], rax
    mov rax, [r11]            ; a translation of VIRT to itself
    ; the PTE of VIRT: CR3 -> PML4[0] -> PDPT[0] -> PD[0] -> PT[VIRT >> 12]
    mov r8, {ADDR_MASK:#x}
    mov rbx, cr3
    and rbx, r8
    mov rbx, [rbx]
    and rbx, r8
    mov rbx, [rbx]
    and rbx, r8
    mov rbx, [rbx]
    and rbx, r8
    lea rbx, [rbx + {(VIRT >> 12) * 8}]
    mov r9, [rbx]                   ; the original entry
    mov r10, r8
    not r10
    and r10, r9                     ; its flags and C-bit

    mov rax, r10                    ; VIRT -> A, then INVLPG
    or rax, {PAGE_A:#x}
    mov [rbx], rax
    invlpg [r11]
    mov rax, [r11]
    mov [rdi], rax

    mov rax, r10                    ; VIRT -> B, then INVLPG
    or rax, {PAGE_B:#x}
    mov [rbx], rax
    invlpg [r11]
    mov rax, [r11]
    mov [rdi + 8], rax

    mov rax, r10                    ; VIRT -> A, then a CR3 write (same value)
    or rax, {PAGE_A:#x}
    mov [rbx], rax
    mov rax, cr3
    mov cr3, rax
    mov rax, [r11]
    mov [rdi + 16], rax

    hlt                             ; a world switch; nothing invalidated VIRT
    mov rax, [r11]
    mov [rdi + 24], rax
    hlt
"""

C_BIT_PROGRAM = PROGRAM.replace(
    "    hlt                             ; a world switch; nothing invalidated VIRT\n"
    "    mov rax, [r11]\n"
    "    mov [rdi + 24], rax\n",
    # VIRT -> B with the C-bit cleared: the same frame read as shared.
    "    mov rax, r10\n"
    "    btr rax, 51\n"
    f"    or rax, {PAGE_B:#x}\n"
    "    mov [rbx], rax\n"
    "    invlpg [r11]\n"
    "    mov rax, [r11]\n"
    "    mov [rdi + 24], rax\n",
)


def _count_fills(guest, page: int) -> list[int]:
    """Record each fill of ``page`` on vCPU 0's TLB-fill hook."""
    filler = guest.machine.vcpus[0].filler
    fill = filler.fill
    fills: list[int] = []

    def counting(uc, vaddr, access, entry, data):
        if vaddr & ~0xFFF == page:
            fills.append(access)
        return fill(uc, vaddr, access, entry, data)

    filler.fill = counting
    return fills


@pytest.mark.parametrize("mode", ["sev-es", "sev", "none"])
def test_invlpg_and_cr3_writes_make_the_next_access_use_the_new_pte(mode):
    guest = make_guest(PROGRAM, mode)
    fills = _count_fills(guest, VIRT)
    assert guest.run().code == SvmExit.HLT
    assert guest.results(3) == (0x1111, 0x2222, 0x1111)
    assert len(fills) >= 4  # the first access, after each INVLPG, after the CR3 write


@pytest.mark.parametrize("mode", ["sev-es", "sev", "none"])
def test_a_translation_survives_a_world_switch_when_nothing_flushed_it(mode):
    guest = make_guest(PROGRAM, mode)
    fills = _count_fills(guest, VIRT)
    exit = guest.run()
    assert exit.code == SvmExit.HLT
    if exit.regs is not None:  # none/sev: the host steps over HLT itself
        exit.regs.rip = guest.vcpu.vmcb["next_rip"]
    fills.clear()
    assert guest.run().code == SvmExit.HLT  # VMRUN, the read of VIRT, HLT
    assert guest.results(4)[3] == 0x1111  # still VIRT -> A
    assert fills == []  # the translation cached before the exit was used


def test_clearing_the_c_bit_and_invlpg_reads_the_frame_as_shared():
    guest = make_guest(C_BIT_PROGRAM, "sev-es")
    assert guest.run().code == SvmExit.HLT
    through_c0 = guest.results(4)[3]
    # With C=0 the guest reads what DRAM holds: the host's view of the frame
    # (its ciphertext), not the 0x2222 the guest wrote through C=1.
    dram = int.from_bytes(guest.host.memory.read(PAGE_B, 8), "little")
    assert through_c0 == dram and through_c0 != 0x2222


FLUSH_RULES = f"""
start:
    mov r11, {VIRT:#x}
    mov rax, [r11]                  ; cached
    mov rax, cr4
    xor rax, 0x40                   ; CR4.MCE: no translation depends on it
    mov cr4, rax
    mov rax, [r11]
    hlt                             ; exit 1
    mov ecx, 0xC0000080
    rdmsr
    xor eax, 0x800                  ; EFER.NXE: every translation's NX meaning
    wrmsr
    mov rax, [r11]
    hlt                             ; exit 2
"""


@pytest.mark.parametrize("mode", ["sev-es", "none"])
def test_only_control_bits_translations_depend_on_flush_them(mode):
    guest = make_guest(FLUSH_RULES, mode)
    fills = _count_fills(guest, VIRT)
    exit = guest.run()
    assert exit.code == SvmExit.HLT
    assert len(fills) == 1  # the CR4.MCE write kept the translation
    if exit.regs is not None:
        exit.regs.rip = guest.vcpu.vmcb["next_rip"]
    fills.clear()
    assert guest.run().code == SvmExit.HLT
    assert len(fills) == 1  # the EFER.NXE write flushed it: filled again
