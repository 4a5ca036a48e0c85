"""sevx86's firmware from the reset vector to the payload, in every mode.

The order of the SEV-ES early boot is the point of the firmware (the seed
talk's slide 12): no page can be shared before long-mode paging, so CPUID
goes through #VC and the GHCB MSR protocol first; the C-bit is known before
the page tables are built; the GHCB is registered once it is mapped C=0;
only then does a VMGEXIT go through the GHCB page.
"""

from __future__ import annotations

import pytest

from sevx86.asm import fw_abi as abi
from sevx86.hv import Hypervisor, RunReason

from .conftest import boot


def _first(events, kind, where=lambda e: True) -> int:
    for i, e in enumerate(events):
        if e.kind == kind and where(e):
            return i
    raise AssertionError(f"no {kind} event")


def test_sev_es_timeline_in_order():
    b = boot()
    assert (b.result.reason, b.result.exit_status) == (RunReason.EXIT_STATUS, 7)
    ev = b.tracer.events
    vc = _first(ev, "vc", lambda e: e.data["name"] == "CPUID")
    msr = _first(ev, "msr-protocol", lambda e: "CPUID 0x8000001f EBX" in e.summary)
    # Paging comes on twice: the C-bit check (reset.S cbit_verify), then the
    # firmware's own tables.
    check = _first(ev, "paging")
    paging = _first(ev, "paging", lambda e: e is not ev[check])
    register = _first(ev, "ghcb-register")
    vmgexit = _first(ev, "vmgexit")
    assert vc < msr < check < paging < register < vmgexit
    assert not ev[check].data["c_bit"]  # the check's code mapping carries no C-bit
    # The first #VC comes from the 32-bit stage in the flash, paging off.
    assert ev[vc].data["rip"] >= abi.FIRMWARE_BASE
    assert "cbitpos 51" in ev[msr].summary
    assert ev[paging].data["c_bit"] and ev[paging].data["long_mode"]
    assert ev[register].data["gpa"] == abi.GHCB_GPA
    # No GHCB-page request before registration; MSR protocol only before paging.
    assert not [e for e in ev[:register] if e.kind == "vmgexit"]
    assert all(e.kind != "vc" or e.data["name"] == "CPUID" for e in ev[:paging])


def test_no_sev_boot_has_no_vc_no_msr_protocol_no_c_bit_no_ghcb():
    b = boot(mode="none")
    assert (b.result.reason, b.result.exit_status) == (RunReason.EXIT_STATUS, 7)
    assert b.events("vc", "msr-protocol", "ghcb-register", "vmgexit") == []
    [paging] = b.events("paging")
    assert paging.data["long_mode"] and not paging.data["c_bit"]


def test_plain_sev_boot_has_the_c_bit_but_no_vc_and_no_ghcb():
    b = boot(mode="sev")
    assert (b.result.reason, b.result.exit_status) == (RunReason.EXIT_STATUS, 7)
    assert b.events("vc", "msr-protocol", "ghcb-register", "vmgexit") == []
    assert "CPUID" in [e.data["name"] for e in b.events("exit")]  # intercepted directly
    [check, paging] = b.events("paging")  # the C-bit check, then the real tables
    assert paging.data["c_bit"] and not check.data["c_bit"]


@pytest.mark.parametrize(
    ("mode", "sev_status", "ghcb"),
    [("sev-es", 3, abi.GHCB_GPA), ("sev", 1, 0), ("none", 0, 0)],
)
def test_boot_info_tells_the_payload_what_the_firmware_found(mode, sev_status, ghcb):
    b = boot(mode=mode, memory=32 << 20)
    info = b.boot_info()
    assert (info["magic"], info["version"]) == (abi.BOOT_INFO_MAGIC, abi.BOOT_INFO_VERSION)
    assert info["sev_status"] == sev_status
    assert info["cbit_pos"] == (51 if sev_status else 0)
    assert info["cbit_mask"] == (1 << 51 if sev_status else 0)
    assert info["phys_bits"] == (47 if sev_status else 48)
    assert (info["ghcb_gpa"], info["ghcb_va"]) == (ghcb, ghcb)
    assert info["ghcb_version"] == (2 if ghcb else 0)
    assert (info["console_port"], info["debugcon_port"], info["exit_port"]) == (
        0x3F8,
        0x402,
        0xF4,
    )
    assert info["memory_size"] == 32 << 20
    assert (info["payload_gpa"], info["stack_top"]) == (abi.PAYLOAD_GPA, abi.STACK_TOP)
    assert abi.RUNTIME_GPA <= info["vc_handler"] < abi.RUNTIME_GPA + abi.RUNTIME_MAX
    payload_pages = (info["payload_size"] + 0xFFF) & ~0xFFF
    assert b.memory_map() == [
        (0x1000, abi.FIRMWARE_RAM_END - 0x1000, abi.MemType.FIRMWARE),
        (abi.FIRMWARE_RAM_END, abi.PAYLOAD_GPA - abi.FIRMWARE_RAM_END, abi.MemType.USABLE),
        (abi.PAYLOAD_GPA, payload_pages, abi.MemType.PAYLOAD),
        (
            abi.PAYLOAD_GPA + payload_pages,
            (32 << 20) - abi.PAYLOAD_GPA - payload_pages,
            abi.MemType.USABLE,
        ),
    ]


def test_payload_entry_abi_and_return_value_is_the_exit_status():
    """RDI = boot info, RSP = stack top - 8 (a return address), IF = 0, other
    GPRs zero; `ret` with RAX ends the run with that status."""
    b = boot(
        """
%include "include/fw_abi.inc"
start:
    or rax, rbx
    or rax, rcx
    or rax, rdx
    or rax, rsi
    or rax, rbp
    or rax, r8
    or rax, r15
    jnz .bad
    mov eax, 1
    cmp rdi, FW_BOOT_INFO_GPA
    jne .bad
    lea rax, [rsp + 8]
    mov rcx, FW_STACK_TOP
    cmp rax, rcx
    jne .bad2
    pushfq
    pop rax
    test eax, 1 << 9            ; IF
    jnz .bad3
    mov eax, 42
    ret
.bad3:
    inc eax
.bad2:
    inc eax
.bad:
    ret
"""
    )
    assert (b.result.reason, b.result.exit_status) == (RunReason.EXIT_STATUS, 42)


def test_another_c_bit_position_is_discovered():
    b = boot(cbitpos=47, reduced_phys_bits=5)
    assert b.result.exit_status == 7
    assert b.boot_info()["cbit_mask"] == 1 << 47
    assert any("cbitpos 47" in e.summary for e in b.events("msr-protocol"))


def test_application_processors_run_only_after_the_firmwares_init_sipi():
    # As under KVM, APs wait for INIT-SIPI: the first VMRUN of each comes
    # after the BSP's SIPI (tests/firmware/test_smp.py has the rest).
    b = boot(vcpus=3)
    assert (b.result.reason, b.result.exit_status) == (RunReason.EXIT_STATUS, 7)
    first = {}
    for i, e in enumerate(b.tracer.events):
        if e.kind == "vmrun":
            first.setdefault(e.vcpu, i)
    sipi = min(i for i, e in enumerate(b.tracer.events) if e.kind == "ipi" and "SIPI" in e.summary)
    assert first[0] < sipi < first[1] and sipi < first[2]


def test_application_processors_started_at_once_wait_for_the_bsp():
    # ap_start="run": the APs run from the first round and wait in ap_reset
    # until the BSP publishes the trampoline; they still come up and park.
    class StartAll(Hypervisor):
        def __init__(self, host):
            super().__init__(host, ap_start="run")

    b = boot(vcpus=3, hv_class=StartAll)
    assert (b.result.reason, b.result.exit_status) == (RunReason.EXIT_STATUS, 7)
    lines = b.result.outputs["serial"].decode().splitlines()
    assert sorted(line.partition(",")[0] for line in lines) == [
        "sevx86-fw: AP 1 up",
        "sevx86-fw: AP 2 up",
    ]
    assert {e.vcpu for e in b.events("ap-reset-hold")} == {1, 2}
