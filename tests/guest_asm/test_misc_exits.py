"""RDTSC, RDTSCP, RDPMC, WBINVD, INVD, VMMCALL, MONITOR, MWAIT and DR7."""

from __future__ import annotations

import pytest

from sevx86.arch.vectors import Vector
from sevx86.asm.guest_abi import DR7_RESET
from sevx86.testing import ScriptedHost

from .conftest import assert_halted, assert_only_changed, nae_program

TSC = 0x0000_1234_8765_4321


def test_rdtsc_returns_the_hosts_tsc(sev_guest):
    run = sev_guest(nae_program("    rdtsc"), host=ScriptedHost(tsc=TSC))
    assert_halted(run)
    assert (run.reg("rdx"), run.reg("rax")) == (0x1234, 0x8765_4321)
    assert_only_changed(run, None, {"rax", "rdx"})
    assert run.exits[0].name == "RDTSC"


def test_rdtscp_adds_tsc_aux_in_ecx(sev_guest):
    run = sev_guest(nae_program("    rdtscp"), host=ScriptedHost(tsc=TSC, tsc_aux=7))
    assert_halted(run)
    assert (run.reg("rdx"), run.reg("rax"), run.reg("rcx")) == (0x1234, 0x8765_4321, 7)
    assert_only_changed(run, None, {"rax", "rdx", "rcx"})
    assert run.exits[0].name == "RDTSCP"


def test_rdpmc_sends_the_counter_number(sev_guest):
    regs = {"rcx": 2}
    host = ScriptedHost(pmc={2: 0x0000_00AB_0000_00CD})
    run = sev_guest(nae_program("    rdpmc", regs), host=host)
    assert_halted(run)
    assert (run.reg("rdx"), run.reg("rax")) == (0xAB, 0xCD)
    assert run.exits[0].inputs["rcx"] == 2
    assert_only_changed(run, regs, {"rax", "rdx"})


@pytest.mark.parametrize("insn, name", [("wbinvd", "WBINVD"), ("invd", "INVD")])
def test_cache_flushes_are_forwarded_without_state(sev_guest, insn, name):
    host = ScriptedHost()
    run = sev_guest(nae_program(f"    {insn}"), host=host)
    assert_halted(run)
    assert [e.name for e in run.exits] == [name]
    assert set(run.exits[0].inputs) == {"sw_exit_code", "sw_exit_info_1", "sw_exit_info_2"}
    assert host.events == [(name, run.exits[0].inputs)]
    assert_only_changed(run, None)


def test_vmmcall_passes_rax_cpl_and_the_kvm_argument_registers(sev_guest):
    seen = {}

    def hypercall(regs):
        seen.update(regs)
        return 0xFFFF_FFFF_FFFF_FFF2  # -14, as a hypercall error would come back

    regs = {"rax": 12, "rbx": 0x100, "rcx": 0x200, "rdx": 0x300, "rsi": 0x400}
    run = sev_guest(nae_program("    vmmcall", regs), host=ScriptedHost(vmmcall=hypercall))
    assert_halted(run)
    assert run.reg("rax") == 0xFFFF_FFFF_FFFF_FFF2
    assert {k: seen[k] for k in ("rax", "rbx", "rcx", "rdx", "rsi", "cpl")} == {
        "rax": 12,
        "rbx": 0x100,
        "rcx": 0x200,
        "rdx": 0x300,
        "rsi": 0x400,
        "cpl": 0,
    }
    assert_only_changed(run, regs, {"rax"})


def test_monitor_and_mwait_forward_their_operands(sev_guest):
    host = ScriptedHost()
    body = """
    mov rax, monitored
    xor ecx, ecx
    xor edx, edx
    monitor
    mov eax, 0x20
    mwait
"""
    run = sev_guest(nae_program(body, data="monitored: dq 0"), host=host)
    assert_halted(run)
    (monitor, mwait) = host.events
    assert monitor[0] == "MONITOR" and monitor[1]["rax"] == run.addr("monitored")
    assert mwait[0] == "MWAIT" and mwait[1]["rax"] == 0x20 and mwait[1]["rcx"] == 0


def test_dr7_write_then_read_returns_the_value(sev_guest):
    host = ScriptedHost()
    regs = {"r9": 0x0000_0000_0000_0401, "r10": 0}
    body = "    mov dr7, r9\n    mov r10, dr7\n    mov rax, dr7"
    run = sev_guest(nae_program(body, regs), host=host)
    assert_halted(run)
    assert host.dr7 == 0x401  # the host learns the value through GHCB RAX
    assert run.reg("r10") == 0x401 and run.reg("rax") == 0x401
    assert [e.name for e in run.exits] == ["DR7_WRITE"]  # reads stay in the guest
    assert_only_changed(run, regs, {"r10", "rax"})


def test_dr7_read_before_any_write_is_the_reset_value(sev_guest):
    run = sev_guest(nae_program("    mov r15, dr7"))
    assert_halted(run)
    assert run.reg("r15") == DR7_RESET
    assert run.exits == []
    assert_only_changed(run, None, {"r15"})


def test_dr7_write_masks_reserved_bits_like_hardware(sev_guest):
    host = ScriptedHost()
    regs = {"rbx": 0xFFFF_FFFF}
    run = sev_guest(nae_program("    mov dr7, rbx\n    mov rcx, dr7", regs), host=host)
    assert_halted(run)
    assert host.dr7 == run.reg("rcx") == 0xFFFF_27FF


def test_dr7_write_of_upper_bits_is_a_gp(sev_guest, gp_handler_source):
    # MOV DR7 with bits 63:32 set raises #GP(0) (APM vol 2, debug registers);
    # the handler raises it itself, without asking the host.
    gp = gp_handler_source.replace("add qword [rsp + 16], 2", "add qword [rsp + 16], 3")
    regs = {"rdx": 0x1_0000_0400}
    run = sev_guest(
        nae_program("dr7_write:\n    mov dr7, rdx", regs, data=gp),
        handlers={Vector.GP: "gp_handler", Vector.VC: "vc_handler"},
    )
    assert_halted(run)
    assert (run.u64("gp_count"), run.u64("gp_seen_error")) == (1, 0)
    assert run.u64("gp_seen_rip") == run.addr("dr7_write")
    assert run.exits == []
    assert_only_changed(run, regs)
