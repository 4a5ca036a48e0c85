"""ACPI tables loaded as firmware runs QEMU's ``etc/table-loader``, checked against ACPI 6.x.

The loader here is written from the format's description (QEMU
``hw/acpi/bios-linker-loader.c``: 128-byte commands, ALLOCATE = 1 with a
56-byte file name, alignment and zone; ADD_POINTER = 2 with destination and
source names, offset and size; ADD_CHECKSUM = 3 with file, result offset,
start and length), not from sevx86's builder. The expectations are the ACPI
specification's: checksums summing to 0, the RSDP's two checksums, the
header's length, the FADT fields and their offsets (table 5.9), the MADT's
structure types and lengths (table 5.21), the HPET table's (HPET spec 3.2.4).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sevx86.hv.devices.acpi_tables import AcpiConfig, build_acpi

TABLES, RSDP, LOADER = "etc/acpi/tables", "etc/acpi/rsdp", "etc/table-loader"
HIGH_BASE, FSEG_BASE = 0x0700_0000, 0x000F_0000


def u(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at : at + size], "little")


def cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode()


def load(files: dict[str, bytes]) -> tuple[dict[str, int], dict[str, bytearray]]:
    """Run the loader script: returns where each file went and the patched bytes."""
    script = files[LOADER]
    assert len(script) % 128 == 0
    placed: dict[str, int] = {}
    mem: dict[str, bytearray] = {}
    next_addr = {1: HIGH_BASE, 2: FSEG_BASE}
    for i in range(0, len(script), 128):
        cmd = script[i : i + 128]
        kind = u(cmd, 0, 4)
        if kind == 1:
            name, align, zone = cstr(cmd[4:60]), u(cmd, 60, 4), cmd[64]
            addr = -(-next_addr[zone] // align) * align
            placed[name], mem[name] = addr, bytearray(files[name])
            next_addr[zone] = addr + len(files[name])
        elif kind == 2:
            dest, src, off, size = cstr(cmd[4:60]), cstr(cmd[60:116]), u(cmd, 116, 4), cmd[120]
            value = u(mem[dest], off, size) + placed[src]
            mem[dest][off : off + size] = value.to_bytes(size, "little")
        elif kind == 3:
            name, off, start, length = cstr(cmd[4:60]), u(cmd, 60, 4), u(cmd, 64, 4), u(cmd, 68, 4)
            mem[name][off] = 0
            mem[name][off] = -sum(mem[name][start : start + length]) & 0xFF
        else:
            pytest.fail(f"unknown loader command {kind}")
    return placed, mem


class Guest:
    """Physical memory after loading: read a table by address."""

    def __init__(self, placed: dict[str, int], mem: dict[str, bytearray]):
        self.regions = [(placed[n], bytes(mem[n])) for n in placed]

    def read(self, addr: int, size: int) -> bytes:
        for base, data in self.regions:
            if base <= addr and addr + size <= base + len(data):
                return data[addr - base : addr - base + size]
        raise AssertionError(f"{addr:#x}+{size} is in no loaded file")

    def table(self, addr: int) -> bytes:
        length = u(self.read(addr, 8), 4, 4)
        data = self.read(addr, length)
        assert sum(data) & 0xFF == 0, f"{data[:4]!r} checksum"
        return data


@pytest.fixture(scope="module")
def guest() -> Guest:
    blobs = build_acpi(AcpiConfig(vcpus=2, pm_base=0xB000, hpet_id=0x8086_A201))
    return Guest(*load(blobs.files()))


def rsdp(guest: Guest) -> bytes:
    return guest.read(FSEG_BASE, 36)


def xsdt_tables(guest: Guest) -> dict[bytes, bytes]:
    xsdt = guest.table(u(rsdp(guest), 24, 8))
    assert xsdt[:4] == b"XSDT"
    entries = [u(xsdt, at, 8) for at in range(36, len(xsdt), 8)]
    return {guest.table(a)[:4]: guest.table(a) for a in entries}


def test_rsdp_has_both_checksums_and_points_at_the_xsdt(guest):
    r = rsdp(guest)
    assert r[:8] == b"RSD PTR " and r[15] == 2 and u(r, 20, 4) == 36
    assert sum(r[:20]) & 0xFF == 0 and sum(r) & 0xFF == 0
    assert u(r, 16, 4) == 0  # no RSDT: the XSDT only
    assert FSEG_BASE % 16 == 0


def test_xsdt_lists_fadt_madt_hpet_each_with_a_valid_checksum(guest):
    assert sorted(xsdt_tables(guest)) == [b"APIC", b"FACP", b"HPET"]


def test_fadt_describes_the_piix4_pm_block_sci_and_reset(guest):
    fadt = xsdt_tables(guest)[b"FACP"]
    assert len(fadt) == 244 and fadt[8] == 3
    assert u(fadt, 46, 2) == 9  # SCI_INT
    assert (u(fadt, 48, 4), fadt[52], fadt[53]) == (0xB2, 0xF1, 0xF0)  # SMI_CMD, enable, disable
    assert (u(fadt, 56, 4), u(fadt, 64, 4), u(fadt, 76, 4)) == (0xB000, 0xB004, 0xB008)
    assert (fadt[88], fadt[89], fadt[91]) == (4, 2, 4)  # PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN
    assert u(fadt, 80, 4) == 0 and fadt[92] == 0  # no GPE0 block
    assert fadt[108] == 0x32  # RTC century
    assert u(fadt, 112, 4) & (1 << 10)  # RESET_REG_SUP
    assert fadt[116:120] == bytes([1, 8, 0, 1]) and u(fadt, 120, 8) == 0xCF9 and fadt[128] == 6
    assert fadt[208] == 1 and u(fadt, 212, 8) == 0xB008  # X_PM_TMR_BLK, system I/O
    facs = guest.read(u(fadt, 36, 4), 64)
    assert facs[:4] == b"FACS" and u(facs, 4, 4) == 64
    assert u(fadt, 36, 4) % 64 == 0  # FACS 64-byte aligned (5.2.10)
    assert u(fadt, 140, 8) == u(fadt, 40, 4)  # X_DSDT and DSDT agree
    dsdt = guest.table(u(fadt, 40, 4))
    assert dsdt[:4] == b"DSDT" and b"_S5_" in dsdt


def test_madt_has_a_local_apic_per_vcpu_the_ioapic_and_qemus_overrides(guest):
    madt = xsdt_tables(guest)[b"APIC"]
    assert u(madt, 36, 4) == 0xFEE0_0000 and u(madt, 40, 4) & 1  # PCAT_COMPAT
    entries, at = [], 44
    while at < len(madt):
        kind, length = madt[at], madt[at + 1]
        entries.append((kind, madt[at : at + length]))
        at += length
    assert at == len(madt)
    lapics = [e for k, e in entries if k == 0]
    assert [(e[1], e[2], e[3], u(e, 4, 4)) for e in lapics] == [(8, 0, 0, 1), (8, 1, 1, 1)]
    (ioapic,) = [e for k, e in entries if k == 1]
    assert ioapic[1] == 12 and u(ioapic, 4, 4) == 0xFEC0_0000 and u(ioapic, 8, 4) == 0
    isos = [(e[3], u(e, 4, 4), u(e, 8, 2)) for k, e in entries if k == 2]
    assert isos == [(0, 2, 0), (5, 5, 0xD), (9, 9, 0xD), (10, 10, 0xD), (11, 11, 0xD)]
    (nmi,) = [e for k, e in entries if k == 4]
    assert nmi[1] == 6 and nmi[2] == 0xFF and nmi[5] == 1  # all processors, LINT1


def test_hpet_table_names_the_block_and_its_address(guest):
    hpet = xsdt_tables(guest)[b"HPET"]
    assert len(hpet) == 56
    assert u(hpet, 36, 4) == 0x8086_A201
    assert hpet[40] == 0 and u(hpet, 44, 8) == 0xFED0_0000  # system memory


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (Debian acpica-tools) not installed")
def test_iasl_disassembles_the_dsdt(guest, tmp_path):
    fadt = xsdt_tables(guest)[b"FACP"]
    (tmp_path / "dsdt.aml").write_bytes(guest.table(u(fadt, 40, 4)))
    subprocess.run(["iasl", "-d", "dsdt.aml"], cwd=tmp_path, check=True, capture_output=True)
    asl = (tmp_path / "dsdt.dsl").read_text()
    for text in (
        'EisaId ("PNP0A03")',
        'EisaId ("PNP0501")',
        "0x03F8",
        "IRQNoFlags ()\n                            {4}",
        'EisaId ("PNP0B00")',
        'EisaId ("PNP0103")',
        "Name (\\_S5, Package (0x04)",
    ):
        assert text in asl, text
