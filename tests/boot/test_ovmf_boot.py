"""Debian's OVMF booting as an SEV-ES guest: reset vector, SEC, PEI, and on to the UEFI shell.

One boot (module fixture) runs until the shell's banner appears on the
serial console -- about 45 s here -- and every milestone test reads the
trace it left and the hypervisor's state. Nothing asserts on timing.
"""

from __future__ import annotations

import pytest

from sevx86.arch.cfi import FlashCmd
from sevx86.arch.exits import SwExit
from sevx86.arch.fw_cfg import FwCfgKey
from sevx86.boot.firmware_run import MILESTONES, FirmwareBoot
from sevx86.boot.varstore import live_variables, parse_varstore
from sevx86.hv import RunReason
from sevx86.trace.events import TraceEvent, Tracer
from tests.ovmf import OVMF_CODE, OVMF_VARS, ExitBudget, needs_ovmf

pytestmark = [
    pytest.mark.ovmf,
    pytest.mark.slow,
    needs_ovmf,
]
KEEP = {
    "msr-protocol",
    "vmgexit",
    "ghcb-answer",
    "ghcb-error",
    "milestone",
    "vc",
    "inject",
    "pflash",
}


class Boot:
    def __init__(self) -> None:
        self.events: list[TraceEvent] = []
        budget = ExitBudget()  # a limit in exits: no wall clock (tests/ovmf.py)
        tracer = Tracer([self._keep, budget], keep=False)
        self.boot = FirmwareBoot(OVMF_CODE, varstore=OVMF_VARS, tracer=tracer, until="shell")
        budget.hv = self.boot.hv
        self.result = self.boot.run()

    def _keep(self, event: TraceEvent) -> None:
        if event.kind in KEEP and not (event.kind == "vc" and len(self.events) > 20_000):
            self.events.append(event)

    def seq(self, name: str) -> int:
        m = self.result.milestone(name)
        assert m.seq is not None, f"milestone {name} not reached: {self.result.report()}"
        return m.seq

    def between(self, first: str | None, last: str, *kinds: str) -> list[TraceEvent]:
        lo = self.seq(first) if first else 0
        hi = self.seq(last)
        return [e for e in self.events if lo <= e.seq <= hi and e.kind in kinds]


@pytest.fixture(scope="module")
def ovmf() -> Boot:
    return Boot()


def test_a_reset_vector_discovers_the_c_bit_with_its_early_vc_handler(ovmf):
    cbit = ovmf.result.milestone("cbit")
    assert cbit.detail == {"cbitpos": 51, "reduced_phys_bits": 1}
    early = ovmf.between(None, "cbit", "vc", "msr-protocol")
    # CPUID in 32-bit code -> #VC -> the reset vector's handler -> MSR protocol.
    assert early[0].kind == "vc" and early[0].data["name"] == "CPUID"
    assert early[0].data["rip"] >= 0xFFFF_0000  # the reset vector, at the top of the flash
    requests = ovmf.between(None, "ghcb", "msr-protocol")
    cpuid = [e for e in requests if "CPUID" in e.summary]
    assert len(cpuid) == 8  # EAX..EDX of 0x8000_0000 and of 0x8000_001F
    # Its page tables, seen from the trusted side when the GHCB was first used:
    # C-bit in the top-level entry and in RAM mappings, none on the GHCB page.
    facts = ovmf.result.milestone("ghcb").detail
    assert facts["pml4e_c_bit"] and facts["stack_private"] and facts["ghcb_shared"]


def test_b_64bit_sec_negotiates_the_ghcb_protocol_and_uses_its_ghcb_page(ovmf):
    assert ovmf.seq("cbit") < ovmf.seq("long-mode") < ovmf.seq("sec") < ovmf.seq("ghcb")
    info = [
        e for e in ovmf.between("sec", "ghcb", "msr-protocol") if "SEV information" in e.summary
    ]
    assert len(info) == 1 and "protocol 1..2" in info[0].summary
    ghcb = ovmf.result.milestone("ghcb").detail["ghcb_gpa"]
    assert ghcb and ghcb % 0x1000 == 0 and ghcb < ovmf.boot.config.memory
    # From then on every VMGEXIT of the boot went through that page (one vCPU).
    assert ovmf.boot.hv.host.vcpus[0].vmcb["ghcb_gpa"] & 0xFFF == 0
    assert ovmf.result.counters["msr-protocol:SEV_INFO_REQ"] == 1


def test_c_sec_vmgexits_through_the_ghcb_are_served(ovmf):
    assert ovmf.seq("ghcb") <= ovmf.seq("ghcb-io") < ovmf.seq("pei-core")
    assert ovmf.seq("ghcb-mmio") < ovmf.seq("pei-core")
    sec = ovmf.between("ghcb", "pei-core", "vmgexit", "ghcb-answer", "ghcb-error", "inject")
    assert not [e for e in sec if e.kind in ("ghcb-error", "inject")]
    exits = [e for e in sec if e.kind == "vmgexit"]
    answers = [e for e in sec if e.kind == "ghcb-answer"]
    assert len(exits) == len(answers) and all("-> ok" in a.summary for a in answers)
    names = {e.data["name"] for e in exits}
    assert {"IOIO", "MMIO_READ", "MMIO_WRITE", "CPUID", "MSR"} <= names
    # An IN from 0xCFE (only reachable with DX) answered with the i440FX device ID:
    # the #VC handler decoded the instruction, the host bridge answered.
    did = [a for a in answers if a.summary.startswith("IOIO") and "rax=0x1237" in a.summary]
    assert did
    # The local APIC's registers were read and written as MMIO (the handler decoded the MOVs).
    mmio = [e for e in exits if e.data["name"].startswith("MMIO")]
    assert all(0xFEE0_0000 <= e.data["info1"] < 0xFEE0_1000 for e in mmio)


def test_d_pei_core_is_reached_and_platform_pei_runs(ovmf):
    pei = ovmf.result.milestone("pei-core")
    entry = ovmf.boot.entries["pei-core"]
    assert pei.detail["rip"] == entry.address and entry.file.ui_name == "PeiCore"
    assert ovmf.seq("pei-core") < ovmf.seq("platform-pei")
    # PlatformPei sized memory from fw_cfg's etc/e820 (and found QEMU there).
    fw = ovmf.boot.pc.fw_cfg
    assert fw.reads["etc/e820"] >= 1 and fw.reads[FwCfgKey.SIGNATURE.name] >= 1
    # It enabled the ACPI PM timer through the PIIX4 function and used it.
    assert ovmf.boot.pc.acpi_pm.base is not None and ovmf.boot.pc.acpi_pm.timer_reads > 0


def test_beyond_pei_dxe_and_bds_reach_the_uefi_shell(ovmf):
    assert ovmf.result.run.reason is RunReason.STOPPED
    assert ovmf.seq("platform-pei") < ovmf.seq("bds") < ovmf.seq("shell")
    assert "UEFI Interactive Shell" in ovmf.result.run.console
    assert ovmf.result.reached == list(MILESTONES)


def test_exit_counts_are_reported(ovmf):
    counts = ovmf.result.exit_kinds()
    assert counts["VMGEXIT"] == sum(
        v for k, v in counts.items() if k.startswith(("vmgexit:", "msr-protocol:"))
    )
    assert counts["msr-protocol:CPUID_REQ"] == 8
    report = ovmf.result.report()
    assert "pei-core" in report and "VMGEXIT" in report


# -- the varstore is a CFI flash (sevx86.hv.devices.pflash) ---------------------------


def _varstore(boot: FirmwareBoot) -> bytes:
    flash = boot.pc.pflash1
    assert flash is not None
    return boot.hv.host.memory.read(flash.base, flash.size)


def test_the_variables_ovmf_sets_land_in_the_pflash_varstore(ovmf):
    flash = ovmf.boot.pc.pflash1
    assert flash is not None and flash.base == ovmf.boot.launched.varstore_base
    assert parse_varstore(OVMF_VARS.read_bytes()).variables == ()  # Debian ships it empty
    live = {v.name: v for v in live_variables(parse_varstore(_varstore(ovmf.boot)))}
    assert {"MTC", "BootOrder", "Boot0000", "Lang", "PlatformLang", "ConOut"} <= live.keys()
    assert live["MTC"].data == (1).to_bytes(4, "little")  # the first boot of this store
    assert live["PlatformLang"].data == b"en\0"
    # Every byte came as OVMF's QemuFlashWrite sends it: a one-byte GHCB
    # MMIO_WRITE of the program command, one of the byte, and read-array at
    # the end of each call, which puts the range back to plain memory.
    writes = [
        e
        for e in ovmf.events
        if e.kind == "vmgexit"
        and e.data["name"] == "MMIO_WRITE"
        and flash.base <= e.data["info1"] < flash.base + flash.size
    ]
    assert all(e.data["info2"] == 1 for e in writes)
    assert flash.programmed > 1000 and flash.commands[FlashCmd.PROGRAM_ALT] == flash.programmed
    assert len(writes) == 2 * flash.programmed + flash.commands[FlashCmd.READ_ARRAY]
    assert flash.romd and not ovmf.boot.hv.host.memory.is_trapping(flash.base)
    # The variable driver starts in DXE: the first command after PEI, before BDS.
    first = next(e for e in ovmf.events if e.kind == "pflash")
    assert ovmf.seq("platform-pei") < first.seq < ovmf.seq("bds")


def test_a_second_boot_reads_the_variables_back_from_the_flash(ovmf):
    """MonotonicCounterRuntimeDxe reads MTC and stores it plus one: 2 on the second boot."""
    budget = ExitBudget()
    boot = FirmwareBoot(
        OVMF_CODE, varstore=_varstore(ovmf.boot), tracer=Tracer([budget], keep=False)
    )
    budget.hv = boot.hv
    flash = boot.pc.pflash1
    assert flash is not None

    def mtc() -> int | None:
        found = [v for v in live_variables(parse_varstore(_varstore(boot))) if v.name == "MTC"]
        return int.from_bytes(found[0].data, "little") if found else None

    assert mtc() == 1
    read_arrays = [0]

    def after_write(req, proceed) -> None:  # type: ignore[no-untyped-def]
        proceed()
        done = flash.commands[FlashCmd.READ_ARRAY]
        if done != read_arrays[0] and flash.romd:  # a QemuFlashWrite call finished
            read_arrays[0] = done
            if mtc() == 2:
                boot.hv.stop("MTC stored as 2")

    boot.hv.on_vmgexit(SwExit.MMIO_WRITE, after_write)
    result = boot.run()
    assert result.run.reason is RunReason.STOPPED, result.report()
    assert result.run.detail == "MTC stored as 2"


# -- ACPI tables through etc/table-loader (sevx86.hv.devices.acpi_tables) -----------

EFI_SYSTEM_TABLE_SIGNATURE = b"IBI SYST"
EFI_SYSTEM_TABLE_HEADER_SIZE = 0x78  # x64 EFI_SYSTEM_TABLE (UEFI 2.x, 4.3)
# EFI_ACPI_20_TABLE_GUID 8868E871-E4F1-11D3-BC22-0080C73C8881, in memory order.
EFI_ACPI_20_TABLE_GUID = bytes.fromhex("71e86888f1e4d311bc220080c73c8881")


def _u(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at : at + size], "little")


def test_ovmf_runs_the_table_loader_and_installs_our_acpi_tables(ovmf):
    reads = ovmf.boot.pc.fw_cfg.reads
    assert reads["etc/table-loader"] >= 1 and reads["etc/acpi/tables"] >= 1
    assert reads["etc/acpi/rsdp"] >= 1
    memory = ovmf.boot.machine.memory
    ram = next(r for r in memory.regions if r.base == 0)
    data = memory.read_private(0, ram.size)
    # The EFI system table's configuration table has an ACPI 2.0 entry ...
    rsdp_addrs = []
    at = data.find(EFI_SYSTEM_TABLE_SIGNATURE)
    while at >= 0:
        if _u(data, at + 12, 4) == EFI_SYSTEM_TABLE_HEADER_SIZE:
            count, table = _u(data, at + 104, 8), _u(data, at + 112, 8)
            for i in range(count if table + 24 * count <= len(data) else 0):
                entry = data[table + 24 * i : table + 24 * i + 24]
                if entry[:16] == EFI_ACPI_20_TABLE_GUID:
                    rsdp_addrs.append(_u(entry, 16, 8))
        at = data.find(EFI_SYSTEM_TABLE_SIGNATURE, at + 1)
    assert rsdp_addrs, "no ACPI 2.0 entry in the EFI configuration table"
    # ... whose RSDP (OVMF's own, ACPI 6.x 5.2.5.3) leads to the tables we built.
    rsdp = data[rsdp_addrs[0] : rsdp_addrs[0] + 36]
    assert rsdp[:8] == b"RSD PTR " and sum(rsdp[:20]) & 0xFF == 0 and sum(rsdp) & 0xFF == 0
    xsdt_at = _u(rsdp, 24, 8)
    xsdt = data[xsdt_at : xsdt_at + _u(data, xsdt_at + 4, 4)]
    assert xsdt[:4] == b"XSDT" and sum(xsdt) & 0xFF == 0
    tables = {}
    for at in range(36, len(xsdt), 8):
        addr = _u(xsdt, at, 8)
        table = data[addr : addr + _u(data, addr + 4, 4)]
        assert sum(table) & 0xFF == 0, table[:4]
        tables[table[:4]] = table
    assert {b"FACP", b"APIC", b"HPET"} <= tables.keys()
    assert tables[b"APIC"][10:16] == b"SEVX86" and tables[b"HPET"][10:16] == b"SEVX86"
    fadt = tables[b"FACP"]
    assert _u(fadt, 76, 4) == ovmf.boot.pc.acpi_pm.base + 8  # the PM timer OVMF programmed
    dsdt_at = _u(fadt, 140, 8) or _u(fadt, 40, 4)
    assert data[dsdt_at : dsdt_at + 4] == b"DSDT"
