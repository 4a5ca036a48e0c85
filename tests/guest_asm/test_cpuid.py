"""CPUID through the 64-bit handler: leaves, sub-leaves, XCR0 for leaf 0xD."""

from __future__ import annotations

import pytest

from sevx86.arch.ghcb import GHCB, clear_valid
from sevx86.asm.guest_abi import VcReason
from sevx86.testing import ScriptedHost

from .conftest import assert_halted, assert_only_changed, assert_terminated, nae_program

TABLE = {
    0x0000_0000: (0x10, 0x6874_7541, 0x444D_4163, 0x6974_6E65),  # "AuthenticAMD"
    (0x0000_0007, 0): (1, 0x0000_0209, 0x0000_0004, 0),
    (0x0000_0007, 1): (0, 0xAAAA_1111, 0, 0xBBBB_2222),
    0x4000_0000: (0x4000_0001, 0x1234_5678, 0x9ABC_DEF0, 0x0FED_CBA9),
    0x8000_001F: (0x0001_000F, 0x0000_0173, 0x1FF, 1),
}
CPUID_OUT = ("rax", "rbx", "rcx", "rdx")


@pytest.mark.parametrize(
    "leaf, subleaf",
    [(0, 0), (7, 0), (7, 1), (0x4000_0000, 0), (0x8000_001F, 0), (0x8000_0099, 5)],
)
def test_cpuid_answers_come_from_the_host_table(sev_guest, leaf, subleaf):
    # Upper halves of RAX/RCX set on purpose: CPUID uses EAX/ECX only and
    # writes zero-extended 32-bit results.
    regs = {"rax": 0xFFFF_FFFF_0000_0000 | leaf, "rcx": 0xDEAD_0000_0000_0000 | subleaf}
    host = ScriptedHost(cpuid=TABLE)
    run = sev_guest(nae_program("    cpuid", regs), host=host)
    assert_halted(run)
    expected = TABLE.get((leaf, subleaf), TABLE.get(leaf, (0, 0, 0, 0)))
    after = run.vmsa()
    assert tuple(after[r] for r in CPUID_OUT) == expected
    assert_only_changed(run, regs, CPUID_OUT)
    (exit_,) = run.exits
    assert exit_.name == "CPUID"
    assert exit_.inputs["rax"] & 0xFFFF_FFFF == leaf
    assert exit_.inputs["rcx"] & 0xFFFF_FFFF == subleaf
    assert exit_.inputs["xcr0"] == 1  # CR4.OSXSAVE clear: the reset value
    assert exit_.version == 2 and exit_.usage == 0


def _xsave_leaf(leaf: int, subleaf: int, xcr0: int) -> tuple[int, int, int, int]:
    """Leaf 0xD sub-leaf 0 as a CPU reports it: EBX = size for the enabled XCR0."""
    if leaf == 0xD and subleaf == 0:
        size = 0x240 + (0x100 if xcr0 & 4 else 0)  # legacy + header, AVX state
        return (0x7, size, 0x340, 0)
    return (0, 0, 0, 0)


@pytest.mark.parametrize("xcr0, size", [(0x3, 0x240), (0x7, 0x340)])
def test_leaf_0xd_carries_the_guests_xcr0(sev_guest, xcr0, size):
    setup = f"""
    mov rax, cr4
    bts rax, 18                 ; CR4.OSXSAVE: XGETBV/XSETBV allowed
    mov cr4, rax
    xor ecx, ecx
    mov eax, {xcr0:#x}
    xor edx, edx
    xsetbv
"""
    regs = {"rax": 0xD, "rcx": 0}
    run = sev_guest(
        nae_program("    cpuid", regs, setup=setup), host=ScriptedHost(cpuid=_xsave_leaf)
    )
    assert_halted(run)
    assert run.exits[0].inputs["xcr0"] == xcr0
    assert run.reg("rbx") == size
    assert_only_changed(run, regs, CPUID_OUT)


def test_several_cpuids_in_a_row_reuse_the_ghcb(sev_guest):
    body = """
    mov eax, 0x40000000
    cpuid
    mov r8, rbx
    xor eax, eax
    cpuid
    mov r9, rbx
    mov eax, 0x40000000
    cpuid
"""
    run = sev_guest(nae_program(body), host=ScriptedHost(cpuid=TABLE))
    assert_halted(run)
    assert run.reg("r8") == run.reg("rbx") == 0x1234_5678
    assert run.reg("r9") == 0x6874_7541
    assert [e.name for e in run.exits] == ["CPUID"] * 3
    assert run.u64("vc_count") == 3


def test_missing_output_valid_bit_terminates(sev_guest):
    def drop_rbx(record, page):
        if page is not None:
            bitmap = GHCB["valid_bitmap"].read(page)
            GHCB["valid_bitmap"].write(page, clear_valid(bitmap, "rbx"))

    run = sev_guest(nae_program("    cpuid"), host=ScriptedHost(cpuid=TABLE, tamper=drop_rbx))
    assert_terminated(run, VcReason.MISSING_OUTPUT)


def test_hypervisor_error_answer_terminates(sev_guest):
    def error(record, page):
        if page is not None:
            GHCB["sw_exit_info_1"].write(page, 2)
            GHCB["sw_exit_info_2"].write(page, 5)

    run = sev_guest(nae_program("    cpuid"), host=ScriptedHost(tamper=error))
    assert_terminated(run, VcReason.HV_ERROR)
