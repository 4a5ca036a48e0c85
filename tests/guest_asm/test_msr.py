"""RDMSR / WRMSR through the 64-bit handler, and a refused MSR becoming #GP."""

from __future__ import annotations

from sevx86.arch.vectors import Vector
from sevx86.testing import ScriptedHost

from .conftest import assert_halted, assert_only_changed, nae_program

GP = {Vector.GP: "gp_handler", Vector.VC: "vc_handler"}
TSC_AUX = 0xC000_0103
MISC_ENABLE = 0x1A0


def test_rdmsr_returns_the_hosts_value_zero_extended(sev_guest):
    host = ScriptedHost(msrs={MISC_ENABLE: 0x0123_4567_89AB_CDEF})
    regs = {"rcx": 0xFFFF_FFFF_0000_0000 | MISC_ENABLE}
    run = sev_guest(nae_program("    rdmsr", regs), host=host)
    assert_halted(run)
    assert run.reg("rax") == 0x89AB_CDEF
    assert run.reg("rdx") == 0x0123_4567
    assert_only_changed(run, regs, {"rax", "rdx"})
    (exit_,) = run.exits
    assert exit_.info1 == 0 and exit_.inputs["rcx"] & 0xFFFF_FFFF == MISC_ENABLE
    assert "rax" not in exit_.inputs  # a read sends only the MSR number


def test_wrmsr_reaches_the_host(sev_guest):
    host = ScriptedHost(msrs={TSC_AUX: 0})
    regs = {"rcx": TSC_AUX, "rax": 0xAAAA_AAAA_1122_3344, "rdx": 0xBBBB_BBBB_5566_7788}
    run = sev_guest(nae_program("    wrmsr", regs), host=host)
    assert_halted(run)
    assert host.msrs[TSC_AUX] == 0x5566_7788_1122_3344
    assert run.exits[0].info1 == 1
    assert_only_changed(run, regs)


def test_refused_rdmsr_raises_gp_in_the_guest(sev_guest, gp_handler_source):
    # The host answers SW_EXITINFO1 = 1 with a #GP in SW_EXITINFO2 (as KVM
    # does for an unknown MSR); the handler must deliver it to the guest's
    # #GP handler, with RIP on the RDMSR and error code 0.
    regs = {"rcx": 0xC001_DEAD}
    body = "rdmsr_here:\n    rdmsr"
    run = sev_guest(
        nae_program(body, regs, data=gp_handler_source), host=ScriptedHost(), handlers=GP
    )
    assert_halted(run)
    assert run.u64("gp_count") == 1
    assert run.u64("gp_seen_error") == 0
    assert run.u64("gp_seen_rip") == run.addr("rdmsr_here")
    assert run.exits[0].answer[0] == 1
    # The #GP handler skipped the RDMSR; no register was changed on the way.
    assert_only_changed(run, regs)
    assert run.u64("vc_active") == 0


def test_refused_wrmsr_raises_gp_with_the_hosts_error_code(sev_guest, gp_handler_source):
    from sevx86.arch.ghcb import GHCB
    from sevx86.arch.vmcb import EventType, encode_event

    def gp_with_code(record, page):
        if page is not None:
            GHCB["sw_exit_info_2"].write(page, encode_event(Vector.GP, EventType.EXCEPTION, 0x18))

    host = ScriptedHost(msrs={}, tamper=gp_with_code)
    regs = {"rcx": 0x10}
    run = sev_guest(nae_program("    wrmsr", regs, data=gp_handler_source), host=host, handlers=GP)
    assert_halted(run)
    assert run.u64("gp_seen_error") == 0x18
    assert_only_changed(run, regs)


def test_ghcb_msr_itself_is_not_a_vc(sev_guest):
    # RDMSR of the GHCB MSR is virtualized by the CPU: no #VC, no exit.
    regs = {"rcx": 0xC001_0130}
    run = sev_guest(nae_program("    rdmsr", regs))
    assert_halted(run)
    assert run.exits == []
    assert run.vc_count == 0
