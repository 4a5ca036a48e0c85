"""The ACPI tables of QEMU's ``pc`` machine, handed to firmware through fw_cfg's table loader.

QEMU (``hw/i386/acpi-build.c``) does not place ACPI tables in guest memory:
it offers two fw_cfg files, ``etc/acpi/tables`` (every table, addresses as
offsets) and ``etc/acpi/rsdp``, and a script, ``etc/table-loader``, that
tells the firmware to allocate them, patch the pointers between them and
compute their checksums. OVMF's ``QemuFwCfgAcpiPlatformDxe`` runs that
script and installs each table it finds through the pointers (building its
own RSDP/XSDT); SeaBIOS copies them. ``build_acpi`` makes the same three
files for this machine:

* FACS (64-byte aligned, first), DSDT, FADT, MADT, HPET, XSDT in
  ``etc/acpi/tables``; the RSDP (revision 2, XSDT only) in ``etc/acpi/rsdp``
  in the F-segment zone, as QEMU asks.
* FADT revision 3 as QEMU's PIIX: SCI on IRQ 9, SMI_CMD 0xB2 with
  ACPI_ENABLE 0xF1 / ACPI_DISABLE 0xF0, the PM1a event, control and timer
  blocks in the PIIX4 PM I/O space (``pm_base``), no GPE block (a GPE block
  with nothing behind it would read as all-ones status bits), C2/C3 not
  supported, the RTC century at CMOS 0x32, the reset register 0xCF9 <- 0x06,
  and WBINVD | PROC_C1 | SLP_BUTTON | RTC_S4 | RESET_REG_SUP |
  USE_PLATFORM_CLOCK.
* MADT: a local APIC per vCPU (UID = APIC ID = index), the IOAPIC (ID 0,
  GSI base 0), the interrupt source overrides QEMU has -- IRQ0 -> GSI 2
  (conforming) and IRQs 5, 9, 10, 11 level-triggered active high -- and a
  local APIC NMI on LINT1 for all processors; flags PCAT_COMPAT (8259s present).
* HPET: block ID = the low 32 bits of the capabilities register, base
  0xFED0_0000 in memory space.
* DSDT: ``\\_S5`` = {0, 0, 0, 0} (the PIIX4 SLP_TYP of S5 is 0, so
  ``acpi_pm`` powers off), ``\\_SB.PCI0`` (PNP0A03) with the PIIX3 ISA
  bridge and on it COM1 (PNP0501: I/O 0x3F8-0x3FF, IRQ 4) and the RTC
  (PNP0B00: I/O 0x70-0x71, IRQ 8), and ``\\_SB.HPET`` (PNP0103).

Checksums are left 0 in the blobs: the loader computes them after patching.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sevx86.arch import aml
from sevx86.arch.acpi import (
    ACPI_HEADER,
    ACPI_HEADER_SIZE,
    ACPI_RSDP_FILE,
    ACPI_TABLES_FILE,
    ALL_PROCESSORS,
    C2_NOT_SUPPORTED,
    C3_NOT_SUPPORTED,
    FACS,
    FACS_VERSION,
    FADT,
    FADT_REVISION,
    HPET_TABLE,
    LOADER_ADD_CHECKSUM,
    LOADER_ADD_POINTER,
    LOADER_ALLOCATE,
    LOADER_FILE_NAME_SIZE,
    MADT_FIXED,
    MADT_PCAT_COMPAT,
    MPS_INTI_ACTIVE_HIGH_LEVEL,
    MPS_INTI_CONFORMING,
    RSDP,
    RSDP_REVISION_2,
    RSDP_SIGNATURE,
    RSDP_V1_SIZE,
    TABLE_LOADER_FILE,
    XSDT_ENTRY_SIZE,
    AccessSize,
    AddressSpace,
    FadtFlag,
    LoaderCommand,
    LoaderZone,
    gas,
    madt_io_apic,
    madt_local_apic,
    madt_local_apic_nmi,
    madt_source_override,
)
from sevx86.arch.apic import XAPIC_BASE
from sevx86.arch.hpet import HPET_BASE, HPET_SIZE
from sevx86.arch.ioapic import IOAPIC_BASE
from sevx86.arch.uart import COM1, COM1_IRQ, UART_REGISTERS

OEM_ID = b"SEVX86"
OEM_TABLE_ID = b"SEVX86PC"
CREATOR_ID = b"SVX "
TABLES_ALIGN = 64  # QEMU: the FACS at the start of the blob must be 64-byte aligned
RSDP_ALIGN = 16  # 5.2.5.1: on a 16-byte boundary
PIIX4_SMI_CMD = 0xB2  # the APM control port (QEMU hw/isa/apm.c)
ACPI_ENABLE_VALUE = 0xF1
ACPI_DISABLE_VALUE = 0xF0
PM1_EVT_LEN = 4
PM1_CNT_LEN = 2
PM_TMR_LEN = 4
PM1A_CNT_OFFSET = 0x04
PM_TMR_OFFSET = 0x08
RESET_PORT = 0xCF9
RESET_VALUE = 0x06  # reset control register: SYS_RST | RST_CPU (a hard reset)
CMOS_CENTURY = 0x32
SCI_IRQ = 9
IRQ0_GSI = 2
PCI_LEVEL_IRQS = (5, 9, 10, 11)  # QEMU's ACPI_BUILD_PCI_IRQS
IOAPIC_ID = 0
LINT1 = 1
CMOS_PORT = 0x70
RTC_IRQ = 8
PIIX3_ISA_ADR = 0x0001_0000  # PCI device 1, function 0
DSDT_REVISION = 2  # 64-bit integers
MADT_REVISION = 1
HPET_REVISION = 1
XSDT_REVISION = 1
TABLE_REVISIONS = {b"FACP": FADT_REVISION, b"APIC": MADT_REVISION, b"HPET": HPET_REVISION}


@dataclass
class TableLoader:
    """The commands of ``etc/table-loader``, in order."""

    commands: list[bytes] = field(default_factory=list)

    @staticmethod
    def _name(file: str) -> bytes:
        return file.encode().ljust(LOADER_FILE_NAME_SIZE, b"\0")

    def allocate(self, file: str, align: int, zone: LoaderZone) -> None:
        entry = LOADER_ALLOCATE.new()
        LOADER_ALLOCATE.write(entry, "command", LoaderCommand.ALLOCATE)
        LOADER_ALLOCATE["file"].write_bytes(entry, self._name(file))
        LOADER_ALLOCATE.write(entry, "align", align)
        LOADER_ALLOCATE.write(entry, "zone", zone)
        self.commands.append(bytes(entry))

    def add_pointer(self, dest_file: str, offset: int, size: int, src_file: str) -> None:
        entry = LOADER_ADD_POINTER.new()
        LOADER_ADD_POINTER.write(entry, "command", LoaderCommand.ADD_POINTER)
        LOADER_ADD_POINTER["dest_file"].write_bytes(entry, self._name(dest_file))
        LOADER_ADD_POINTER["src_file"].write_bytes(entry, self._name(src_file))
        LOADER_ADD_POINTER.write(entry, "offset", offset)
        LOADER_ADD_POINTER.write(entry, "size", size)
        self.commands.append(bytes(entry))

    def add_checksum(self, file: str, offset: int, start: int, length: int) -> None:
        entry = LOADER_ADD_CHECKSUM.new()
        LOADER_ADD_CHECKSUM.write(entry, "command", LoaderCommand.ADD_CHECKSUM)
        LOADER_ADD_CHECKSUM["file"].write_bytes(entry, self._name(file))
        LOADER_ADD_CHECKSUM.write(entry, "offset", offset)
        LOADER_ADD_CHECKSUM.write(entry, "start", start)
        LOADER_ADD_CHECKSUM.write(entry, "length", length)
        self.commands.append(bytes(entry))

    def encode(self) -> bytes:
        return b"".join(self.commands)


@dataclass(frozen=True)
class AcpiConfig:
    """What the tables describe."""

    vcpus: int
    pm_base: int  # the PIIX4 PM I/O base (PMBA) the firmware programmed
    hpet_id: int  # the low half of the HPET capabilities register


@dataclass(frozen=True)
class AcpiBlobs:
    tables: bytes
    rsdp: bytes
    loader: bytes
    offsets: dict[bytes, int]  # table signature -> offset in ``tables``

    def files(self) -> dict[str, bytes]:
        return {
            ACPI_TABLES_FILE: self.tables,
            ACPI_RSDP_FILE: self.rsdp,
            TABLE_LOADER_FILE: self.loader,
        }


def header(signature: bytes, length: int, revision: int) -> bytearray:
    out = bytearray(length)
    ACPI_HEADER["signature"].write_bytes(out, signature)
    ACPI_HEADER.write(out, "length", length)
    ACPI_HEADER.write(out, "revision", revision)
    ACPI_HEADER["oem_id"].write_bytes(out, OEM_ID)
    ACPI_HEADER["oem_table_id"].write_bytes(out, OEM_TABLE_ID)
    ACPI_HEADER.write(out, "oem_revision", 1)
    ACPI_HEADER["creator_id"].write_bytes(out, CREATOR_ID)
    ACPI_HEADER.write(out, "creator_revision", 1)
    return out


def dsdt_aml() -> bytes:
    com1 = aml.device(
        "COM1",
        aml.name("_HID", aml.eisa_id("PNP0501")),
        aml.name("_UID", aml.integer(1)),
        aml.name(
            "_CRS",
            aml.resource_template(aml.io_port(COM1, UART_REGISTERS), aml.irq_no_flags(COM1_IRQ)),
        ),
    )
    rtc = aml.device(
        "RTC",
        aml.name("_HID", aml.eisa_id("PNP0B00")),
        aml.name(
            "_CRS", aml.resource_template(aml.io_port(CMOS_PORT, 2), aml.irq_no_flags(RTC_IRQ))
        ),
    )
    isa = aml.device("ISA", aml.name("_ADR", aml.integer(PIIX3_ISA_ADR)), com1, rtc)
    pci0 = aml.device(
        "PCI0",
        aml.name("_HID", aml.eisa_id("PNP0A03")),
        aml.name("_ADR", aml.integer(0)),
        aml.name("_UID", aml.integer(0)),
        isa,
    )
    hpet = aml.device(
        "HPET",
        aml.name("_HID", aml.eisa_id("PNP0103")),
        aml.name("_UID", aml.integer(0)),
        aml.name(
            "_CRS", aml.resource_template(aml.memory32_fixed(HPET_BASE, HPET_SIZE, writable=False))
        ),
    )
    s5 = aml.name("\\_S5", aml.package(*(aml.integer(0) for _ in range(4))))
    return aml.scope("\\_SB", pci0, hpet) + s5


def _facs() -> bytes:
    out = FACS.new()
    FACS["signature"].write_bytes(out, b"FACS")
    FACS.write(out, "length", FACS.size)
    FACS.write(out, "version", FACS_VERSION)
    return bytes(out)


def _fadt(pm_base: int) -> bytearray:
    t = header(b"FACP", FADT.size, FADT_REVISION)
    io = AddressSpace.SYSTEM_IO
    values = {
        "sci_int": SCI_IRQ,
        "smi_cmd": PIIX4_SMI_CMD,
        "acpi_enable": ACPI_ENABLE_VALUE,
        "acpi_disable": ACPI_DISABLE_VALUE,
        "pm1a_evt_blk": pm_base,
        "pm1a_cnt_blk": pm_base + PM1A_CNT_OFFSET,
        "pm_tmr_blk": pm_base + PM_TMR_OFFSET,
        "pm1_evt_len": PM1_EVT_LEN,
        "pm1_cnt_len": PM1_CNT_LEN,
        "pm_tmr_len": PM_TMR_LEN,
        "p_lvl2_lat": C2_NOT_SUPPORTED,
        "p_lvl3_lat": C3_NOT_SUPPORTED,
        "century": CMOS_CENTURY,
        "reset_value": RESET_VALUE,
        "flags": sum(
            1 << bit
            for bit in (
                FadtFlag.WBINVD,
                FadtFlag.PROC_C1,
                FadtFlag.SLP_BUTTON,
                FadtFlag.RTC_S4,
                FadtFlag.RESET_REG_SUP,
                FadtFlag.USE_PLATFORM_CLOCK,
            )
        ),
    }
    for key, value in values.items():
        FADT.write(t, key, value)
    FADT["reset_reg"].write_bytes(t, gas(io, 8, RESET_PORT, AccessSize.BYTE))
    FADT["x_pm1a_evt_blk"].write_bytes(t, gas(io, 8 * PM1_EVT_LEN, pm_base, AccessSize.WORD))
    FADT["x_pm1a_cnt_blk"].write_bytes(
        t, gas(io, 8 * PM1_CNT_LEN, pm_base + PM1A_CNT_OFFSET, AccessSize.WORD)
    )
    FADT["x_pm_tmr_blk"].write_bytes(
        t, gas(io, 8 * PM_TMR_LEN, pm_base + PM_TMR_OFFSET, AccessSize.DWORD)
    )
    return t


def _madt(vcpus: int) -> bytes:
    entries = b"".join(madt_local_apic(i, i) for i in range(vcpus))
    entries += madt_io_apic(IOAPIC_ID, IOAPIC_BASE, 0)
    entries += madt_source_override(0, IRQ0_GSI, MPS_INTI_CONFORMING)
    entries += b"".join(
        madt_source_override(irq, irq, MPS_INTI_ACTIVE_HIGH_LEVEL) for irq in PCI_LEVEL_IRQS
    )
    entries += madt_local_apic_nmi(ALL_PROCESSORS, LINT1)
    t = header(b"APIC", MADT_FIXED.size + len(entries), MADT_REVISION)
    MADT_FIXED.write(t, "local_apic_address", XAPIC_BASE)
    MADT_FIXED.write(t, "flags", MADT_PCAT_COMPAT)
    t[MADT_FIXED.size :] = entries
    return bytes(t)


def _hpet(hpet_id: int) -> bytes:
    t = header(b"HPET", HPET_TABLE.size, HPET_REVISION)
    HPET_TABLE.write(t, "event_timer_block_id", hpet_id)
    HPET_TABLE["base_address"].write_bytes(
        t, gas(AddressSpace.SYSTEM_MEMORY, 64, HPET_BASE, AccessSize.UNDEFINED)
    )
    return bytes(t)


def build_acpi(config: AcpiConfig) -> AcpiBlobs:
    loader = TableLoader()
    loader.allocate(ACPI_TABLES_FILE, TABLES_ALIGN, LoaderZone.HIGH)
    blob = bytearray()
    offsets: dict[bytes, int] = {}

    def place(signature: bytes, table: bytes | bytearray) -> int:
        at = len(blob)
        offsets[signature] = at
        blob.extend(table)
        return at

    place(b"FACS", _facs())
    dsdt = header(b"DSDT", ACPI_HEADER_SIZE, DSDT_REVISION) + dsdt_aml()
    ACPI_HEADER.write(dsdt, "length", len(dsdt))
    place(b"DSDT", dsdt)
    fadt_at = place(b"FACP", _fadt(config.pm_base))
    place(b"APIC", _madt(config.vcpus))
    place(b"HPET", _hpet(config.hpet_id))
    pointed = [b"FACP", b"APIC", b"HPET"]
    xsdt = header(b"XSDT", ACPI_HEADER_SIZE + XSDT_ENTRY_SIZE * len(pointed), XSDT_REVISION)
    xsdt_at = place(b"XSDT", xsdt)

    # Pointers hold offsets in the tables blob; the loader adds its address.
    def pointer(at: int, size: int, target: bytes) -> None:
        blob[at : at + size] = offsets[target].to_bytes(size, "little")
        loader.add_pointer(ACPI_TABLES_FILE, at, size, ACPI_TABLES_FILE)

    pointer(fadt_at + FADT["firmware_ctrl"].offset, 4, b"FACS")
    pointer(fadt_at + FADT["dsdt"].offset, 4, b"DSDT")
    pointer(fadt_at + FADT["x_dsdt"].offset, 8, b"DSDT")
    for i, signature in enumerate(pointed):
        pointer(xsdt_at + ACPI_HEADER_SIZE + XSDT_ENTRY_SIZE * i, XSDT_ENTRY_SIZE, signature)
    checksum_at = ACPI_HEADER["checksum"].offset
    for signature, at in offsets.items():
        if signature == b"FACS":
            continue  # the FACS has no checksum
        length = ACPI_HEADER.read(blob[at:], "length")
        loader.add_checksum(ACPI_TABLES_FILE, at + checksum_at, at, length)

    rsdp = RSDP.new()
    RSDP["signature"].write_bytes(rsdp, RSDP_SIGNATURE)
    RSDP["oem_id"].write_bytes(rsdp, OEM_ID)
    RSDP.write(rsdp, "revision", RSDP_REVISION_2)
    RSDP.write(rsdp, "length", RSDP.size)
    RSDP.write(rsdp, "xsdt_address", xsdt_at)
    loader.allocate(ACPI_RSDP_FILE, RSDP_ALIGN, LoaderZone.FSEG)
    loader.add_pointer(ACPI_RSDP_FILE, RSDP["xsdt_address"].offset, 8, ACPI_TABLES_FILE)
    loader.add_checksum(ACPI_RSDP_FILE, RSDP["checksum"].offset, 0, RSDP_V1_SIZE)
    loader.add_checksum(ACPI_RSDP_FILE, RSDP["extended_checksum"].offset, 0, RSDP.size)
    return AcpiBlobs(bytes(blob), bytes(rsdp), loader.encode(), offsets)


__all__ = ["AcpiBlobs", "AcpiConfig", "TableLoader", "build_acpi", "dsdt_aml"]
