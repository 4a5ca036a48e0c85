"""Our firmware brings up every AP (firmware/README.md, "APs").

The BSP publishes the trampoline in the SMP mailbox, gives the host the AP
jump table (SEV-ES), broadcasts INIT-SIPI-SIPI and waits; each AP comes from
its launch VMSA through ap_reset and the trampoline to 64-bit mode, registers
its own GHCB (SEV-ES), says "AP n up" on the serial console and parks (AP
reset hold under SEV-ES, HLT otherwise). The payload gets the vCPU count.
"""

from __future__ import annotations

import pytest

from sevx86.asm import fw_abi as abi
from sevx86.asm.guest_abi import GUEST_ASM_REASON_SET, VcReason
from sevx86.boot.firmware import FirmwareError, boot_machine
from sevx86.config import GuestConfig
from sevx86.hv import DeterministicScheduler, Hypervisor, MpState, RunReason

from .conftest import boot

# Exit status = the vCPU count in the boot info.
COUNT = """
%include "include/fw_abi.inc"
%include "include/platform.inc"
start:
    mov eax, [rdi + BI_VCPU_COUNT]
    mov edx, DEBUG_EXIT_PORT
    out dx, eax
"""

# Wake AP 1 with INIT-SIPI (xAPIC ICR) without writing the AP jump table.
WAKE_WITHOUT_ENTRY = """
%include "include/apic.inc"
%define INIT (APIC_DM_INIT << APIC_ICR_MODE_SHIFT) | APIC_ICR_LEVEL_ASSERT
%define SIPI (APIC_DM_STARTUP << APIC_ICR_MODE_SHIFT) | APIC_ICR_LEVEL_ASSERT
start:
    mov rdi, XAPIC_BASE
    mov dword [rdi + APIC_REG_ICR_HIGH], 1 << 24
    mov dword [rdi + APIC_REG_ICR_LOW], INIT
    mov dword [rdi + APIC_REG_ICR_LOW], SIPI
.spin:
    pause
    jmp .spin
"""


def ap_lines(console: str) -> list[str]:
    return sorted(line for line in console.splitlines() if line.startswith("sevx86-fw: AP "))


@pytest.mark.parametrize("vcpus", [2, 4])
def test_every_ap_reports_in_with_its_own_ghcb_and_the_payload_sees_the_count(vcpus):
    b = boot(COUNT, vcpus=vcpus)
    assert (b.result.reason, b.result.exit_status) == (RunReason.EXIT_STATUS, vcpus)
    info = b.boot_info()
    assert info["vcpu_count"] == vcpus and info["version"] == abi.BOOT_INFO_VERSION
    assert info["ap_jump_table"] == abi.AP_JUMP_TABLE_GPA
    assert b.hv.ap_jump_table == abi.AP_JUMP_TABLE_GPA
    # One line per AP, named by its APIC ID (= vCPU index here), each with
    # the GHCB of the slot it took.
    lines = ap_lines(b.result.console)
    assert [line.partition(",")[0] for line in lines] == [
        f"sevx86-fw: AP {n} up" for n in range(1, vcpus)
    ]
    slots = {abi.AP_GHCB_GPA + s * 0x1000 for s in range(vcpus - 1)}
    assert {int(line.rpartition(" ")[2], 16) for line in lines} == slots
    # The host saw each vCPU register its own page, and holds every AP.
    ghcbs = [b.hv.vcpu_state(i).ghcb.registered for i in range(vcpus)]
    assert ghcbs[0] == abi.GHCB_GPA and set(ghcbs[1:]) == slots
    for n in range(1, vcpus):
        assert b.hv.vcpu_state(n).events.mp_state is MpState.AP_RESET_HOLD
    registered = {e.vcpu: e.summary for e in b.events("ghcb-register")}
    assert sorted(registered) == list(range(vcpus))
    # ...and the trace says which vCPU printed which line.
    by_vcpu = {e.vcpu for e in b.events("console") if " AP " in e.summary}
    assert by_vcpu == set(range(1, vcpus))


def test_the_same_seed_gives_the_same_trace():
    def trace(seed: int) -> list[tuple[int | None, str, str]]:
        b = boot(
            COUNT,
            vcpus=2,
            setup=lambda hv: setattr(hv, "scheduler", DeterministicScheduler(seed, quantum=5000)),
        )
        assert b.result.exit_status == 2
        return [(e.vcpu, e.kind, e.summary) for e in b.tracer.events]

    first = trace(7)
    assert trace(7) == first
    assert any(vcpu == 1 for vcpu, _, _ in first)


@pytest.mark.parametrize("mode", ["none", "sev"])
def test_without_sev_es_aps_come_up_with_init_sipi_and_halt(mode):
    b = boot(COUNT, mode, vcpus=3)
    assert b.result.exit_status == 3
    assert ap_lines(b.result.console) == ["sevx86-fw: AP 1 up", "sevx86-fw: AP 2 up"]
    assert b.boot_info()["ap_jump_table"] == 0
    for n in (1, 2):
        assert b.hv.vcpu_state(n).events.mp_state is MpState.HALTED
    assert not b.events("ap-reset-hold")


def test_an_ap_that_never_reports_makes_the_bsp_give_up():
    # The host claims 3 vCPUs (CPUID 0x80000008 ECX = 2) and runs 2; its
    # clock runs fast so the wait ends soon.
    def setup(hv: Hypervisor) -> None:
        eax, ebx, _, edx = hv.cpuid.raw(0x8000_0008)
        hv.cpuid = hv.cpuid.with_entries({(0x8000_0008, None): (eax, ebx, 2, edx)})
        hv.msrs.clock.step = abi.AP_TIMEOUT_TSC // 64

    b = boot(COUNT, vcpus=2, setup=setup)
    assert b.result.reason is RunReason.TERMINATED, b.result
    t = b.result.termination
    assert t is not None and (t.reason_set, t.reason_code) == (
        abi.FW_REASON_SET,
        abi.FwReason.AP_TIMEOUT,
    )
    assert "sevx86-fw: 1 of 2 APs reported in before the timeout" in b.result.console


def test_more_vcpus_than_the_firmware_supports_are_refused():
    with pytest.raises(FirmwareError, match=f"at most {abi.MAX_VCPUS}$"):
        boot_machine(b"", GuestConfig(vcpus=abi.MAX_VCPUS + 1))

    # A host claiming more through CPUID: the firmware refuses too.
    def setup(hv: Hypervisor) -> None:
        eax, ebx, _, edx = hv.cpuid.raw(0x8000_0008)
        hv.cpuid = hv.cpuid.with_entries({(0x8000_0008, None): (eax, ebx, abi.MAX_VCPUS, edx)})

    b = boot(COUNT, vcpus=2, setup=setup)
    t = b.result.termination
    assert t is not None and t.reason_code == abi.FwReason.VCPU_COUNT


def test_an_ap_woken_without_a_jump_table_entry_fails_and_names_itself():
    b = boot(WAKE_WITHOUT_ENTRY, vcpus=2)
    assert b.result.reason is RunReason.TERMINATED, b.result
    assert b.result.vcpu == 1
    t = b.result.termination
    assert t is not None and (t.reason_set, t.reason_code) == (
        GUEST_ASM_REASON_SET,
        VcReason.AP_NO_JUMP_TABLE,
    )
