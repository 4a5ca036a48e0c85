"""The devices of the QEMU-like pc machine, driven through their ports and MMIO as a guest would."""

from __future__ import annotations

import datetime as dt

import pytest

from sevx86.arch.e820 import E820_ENTRY, E820Type
from sevx86.arch.fw_cfg import (
    FW_CFG_DMA_ACCESS,
    FW_CFG_FILE,
    FW_CFG_FILES_COUNT,
    FW_CFG_IO_DATA,
    FW_CFG_IO_DMA,
    FW_CFG_IO_SELECTOR,
    FwCfgDmaControl,
    FwCfgId,
    FwCfgKey,
)
from sevx86.arch.pci import PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA, config_address
from sevx86.hv.clock import VirtualClock
from sevx86.hv.devices import IoBus, MmioBus
from sevx86.hv.devices.acpi_pm import PM_TIMER_HZ, PM_TMR, AcpiPmBlock
from sevx86.hv.devices.cmos import CMOS_DATA_PORT, CMOS_INDEX_PORT, CmosRtc
from sevx86.hv.devices.fw_cfg import FW_CFG_IO_BASE, FW_CFG_IO_LENGTH, FwCfg
from sevx86.hv.devices.i440fx import (
    I440FX_DEVICE_ID,
    PIIX4_PMBA,
    PIIX4_PMREGMISC,
    Piix4Pm,
    i440fx_host_bridge,
)
from sevx86.hv.devices.lapic import APIC_BASE, APIC_SIZE, LocalApic, describe_ipi
from sevx86.hv.devices.pci import PCI_IO_BASE, PCI_IO_LENGTH, PciHost
from sevx86.hv.machines import system_states


class FakeDram:
    """Guest memory as a DMA device sees it: 1 MiB of plain bytes."""

    def __init__(self, size: int = 1 << 20):
        self.bytes = bytearray(size)

    def contains(self, gpa: int, size: int = 1) -> bool:
        return 0 <= gpa and gpa + size <= len(self.bytes)

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.bytes[gpa : gpa + size])

    def write(self, gpa: int, data: bytes) -> None:
        self.bytes[gpa : gpa + len(data)] = data


# ----------------------------------------------------------------------------- fw_cfg
def fw_cfg_bus(**kw) -> tuple[IoBus, FwCfg, FakeDram]:
    dram = FakeDram()
    dev = FwCfg(dram, **kw)
    bus = IoBus()
    bus.register(FW_CFG_IO_BASE, FW_CFG_IO_LENGTH, dev)
    return bus, dev, dram


def read_item(bus: IoBus, key: int, n: int) -> bytes:
    bus.write(FW_CFG_IO_SELECTOR, 2, key)
    return bus.read_string(FW_CFG_IO_DATA, 1, n)  # OVMF's IoReadFifo8: REP INSB


def test_fw_cfg_signature_id_and_zero_past_the_end():
    bus, dev, _ = fw_cfg_bus()
    assert read_item(bus, FwCfgKey.SIGNATURE, 6) == b"QEMU\0\0"
    ident = int.from_bytes(read_item(bus, FwCfgKey.ID, 4), "little")
    assert ident == FwCfgId.TRADITIONAL | FwCfgId.DMA
    # The DMA register reads "QEMU CFG", big-endian: the bytes in order.
    assert bus.read(FW_CFG_IO_DMA, 4).to_bytes(4, "little") == b"QEMU"
    assert bus.read(FW_CFG_IO_DMA + 4, 4).to_bytes(4, "little") == b" CFG"
    # Unknown items read as zeros; data-port writes are ignored.
    assert read_item(bus, 0x1234, 2) == b"\0\0"
    bus.write(FW_CFG_IO_DATA, 1, 0x55)


def test_fw_cfg_without_dma_says_so():
    bus, dev, _ = fw_cfg_bus(dma=False)
    assert int.from_bytes(read_item(bus, FwCfgKey.ID, 4), "little") == FwCfgId.TRADITIONAL


def test_fw_cfg_file_directory_is_sorted_by_name_with_keys_in_that_order():
    bus, dev, _ = fw_cfg_bus()
    dev.add_file("etc/system-states", b"\x80\0\0\1\2\x80")
    dev.add_file("etc/e820", b"x" * 20)
    bus.write(FW_CFG_IO_SELECTOR, 2, FwCfgKey.FILE_DIR)
    count = int.from_bytes(bus.read_string(FW_CFG_IO_DATA, 1, 4), "big")
    entries = [bus.read_string(FW_CFG_IO_DATA, 1, FW_CFG_FILE.size) for _ in range(count)]
    names = [FW_CFG_FILE["name"].read_bytes(e).rstrip(b"\0").decode() for e in entries]
    assert names == ["etc/e820", "etc/system-states"]
    keys = [FW_CFG_FILE.read(e, "select") for e in entries]
    assert keys == [FwCfgKey.FILE_FIRST, FwCfgKey.FILE_FIRST + 1]
    assert [FW_CFG_FILE.read(e, "size") for e in entries] == [20, 6]
    assert read_item(bus, keys[1], 6) == b"\x80\0\0\1\2\x80"
    assert FW_CFG_FILES_COUNT.size == 4


def dma(bus: IoBus, dram: FakeDram, at: int, control: int, length: int, buffer: int) -> int:
    desc = FW_CFG_DMA_ACCESS.new()
    FW_CFG_DMA_ACCESS.write(desc, "control", control)
    FW_CFG_DMA_ACCESS.write(desc, "length", length)
    FW_CFG_DMA_ACCESS.write(desc, "address", buffer)
    dram.write(at, bytes(desc))
    # OVMF: IoWrite32(0x514, SwapBytes32(high)); IoWrite32(0x518, SwapBytes32(low)).
    swap = lambda v: int.from_bytes(v.to_bytes(4, "big"), "little")  # noqa: E731
    bus.write(FW_CFG_IO_DMA, 4, swap(at >> 32))
    bus.write(FW_CFG_IO_DMA + 4, 4, swap(at & 0xFFFF_FFFF))
    return FW_CFG_DMA_ACCESS.read(dram.read(at, 16), "control")


def test_fw_cfg_dma_select_read_skip_and_zero_fill():
    bus, dev, dram = fw_cfg_bus()
    dev.add_file("opt/x", b"0123456789")
    key = dev.file_key("opt/x")
    sel = FwCfgDmaControl.SELECT | key << 16
    assert dma(bus, dram, 0x1000, sel | FwCfgDmaControl.READ, 4, 0x2000) == 0
    assert dram.read(0x2000, 4) == b"0123"
    assert dma(bus, dram, 0x1000, FwCfgDmaControl.SKIP, 2, 0) == 0
    # The read continues at the offset, then fills zeros past the end.
    dram.write(0x3000, b"\xff" * 8)
    assert dma(bus, dram, 0x1000, FwCfgDmaControl.READ, 8, 0x3000) == 0
    assert dram.read(0x3000, 8) == b"6789\0\0\0\0"


def test_fw_cfg_dma_writes_only_writable_items_without_resizing():
    bus, dev, dram = fw_cfg_bus()
    dev.add_file("etc/ro", b"abcd")
    dev.add_file("etc/rw", b"abcd", writable=True)
    dram.write(0x2000, b"WXYZ!")
    ro = FwCfgDmaControl.SELECT | dev.file_key("etc/ro") << 16 | FwCfgDmaControl.WRITE
    rw = FwCfgDmaControl.SELECT | dev.file_key("etc/rw") << 16 | FwCfgDmaControl.WRITE
    assert dma(bus, dram, 0x1000, ro, 4, 0x2000) == FwCfgDmaControl.ERROR
    assert dma(bus, dram, 0x1000, rw, 5, 0x2000) == FwCfgDmaControl.ERROR  # would grow it
    assert dev.files["etc/rw"].data == b"abcd"
    assert dma(bus, dram, 0x1000, rw, 4, 0x2000) == 0
    assert dev.files["etc/rw"].data == b"WXYZ"


def test_fw_cfg_dma_to_memory_outside_ram_reports_an_error():
    bus, dev, dram = fw_cfg_bus()
    sel = FwCfgDmaControl.SELECT | FwCfgKey.SIGNATURE << 16 | FwCfgDmaControl.READ
    assert dma(bus, dram, 0x1000, sel, 4, 0x7FFF_0000) == FwCfgDmaControl.ERROR


def test_system_states_bytes_follow_qemu():
    assert system_states(s3=False, s4=False) == bytes([0x80, 0, 0, 0x01, 0x02, 0x80])
    assert system_states(s3=True, s4=True) == bytes([0x80, 0, 0, 0x81, 0x82, 0x80])


def test_e820_entry_layout():
    entry = E820_ENTRY.new()
    E820_ENTRY.write(entry, "type", E820Type.RESERVED)
    assert E820_ENTRY.size == 20 and entry[16] == 2


# ----------------------------------------------------------------------------- CMOS / RTC
def cmos(clock: VirtualClock) -> tuple[IoBus, CmosRtc]:
    dev = CmosRtc(clock, start=dt.datetime(2024, 2, 29, 23, 59, 58, tzinfo=dt.UTC))
    bus = IoBus()
    bus.register(CMOS_INDEX_PORT, 2, dev)
    return bus, dev


def cmos_read(bus: IoBus, index: int) -> int:
    bus.write(CMOS_INDEX_PORT, 1, index | 0x80)  # NMI-disable bit is not part of the index
    return bus.read(CMOS_DATA_PORT, 1)


def test_cmos_memory_bytes_as_qemu_pc_cmos_init():
    bus, dev = cmos(VirtualClock())
    dev.set_pc_memory(512 << 20, 1 << 30, cpus=2)
    below = (cmos_read(bus, 0x35) << 8) | cmos_read(bus, 0x34)
    assert (below << 16) + (16 << 20) == 512 << 20  # what OVMF computes
    above = cmos_read(bus, 0x5B) | cmos_read(bus, 0x5C) << 8 | cmos_read(bus, 0x5D) << 16
    assert above << 16 == 1 << 30
    assert cmos_read(bus, 0x5F) == 1
    assert (cmos_read(bus, 0x16) << 8 | cmos_read(bus, 0x15)) == 640
    assert bus.read(CMOS_INDEX_PORT, 1) == 0xFF


def test_rtc_reads_bcd_time_from_the_virtual_clock():
    clock = VirtualClock()
    bus, dev = cmos(clock)
    assert [cmos_read(bus, r) for r in (0x04, 0x02, 0x00)] == [0x23, 0x59, 0x58]
    assert [cmos_read(bus, r) for r in (0x07, 0x08, 0x09, 0x32)] == [0x29, 0x02, 0x24, 0x20]
    assert not cmos_read(bus, 0x0A) & 0x80  # never "update in progress"
    assert cmos_read(bus, 0x0D) & 0x80  # valid RAM and time
    clock.advance(3_000_000_000)
    assert [cmos_read(bus, r) for r in (0x08, 0x07, 0x04, 0x00)] == [0x03, 0x01, 0x00, 0x01]


def test_rtc_set_time_with_the_set_bit():
    clock = VirtualClock()
    bus, dev = cmos(clock)
    bus.write(CMOS_INDEX_PORT, 1, 0x0B)
    b = bus.read(CMOS_DATA_PORT, 1)
    bus.write(CMOS_DATA_PORT, 1, b | 0x80)  # SET: freeze
    for reg, value in ((0x09, 0x30), (0x08, 0x12), (0x07, 0x31), (0x04, 0x10)):
        bus.write(CMOS_INDEX_PORT, 1, reg)
        bus.write(CMOS_DATA_PORT, 1, value)
    bus.write(CMOS_INDEX_PORT, 1, 0x0B)
    bus.write(CMOS_DATA_PORT, 1, b)  # SET cleared: the new time runs
    assert dev.now().year == 2030 and dev.now().month == 12 and dev.now().hour == 10


# ----------------------------------------------------------------------------- PCI + PM
def pc_pci(clock: VirtualClock) -> tuple[IoBus, PciHost, AcpiPmBlock]:
    bus = IoBus()
    pm_block = AcpiPmBlock(clock)
    host = PciHost()
    host.add(0, 0, i440fx_host_bridge())
    host.add(1, 3, Piix4Pm(bus, pm_block))
    bus.register(PCI_IO_BASE, PCI_IO_LENGTH, host)
    return bus, host, pm_block


def cfg_read(bus: IoBus, dev: int, fn: int, reg: int, size: int) -> int:
    bus.write(PCI_CONFIG_ADDRESS, 4, config_address(0, dev, fn, reg))
    return bus.read(PCI_CONFIG_DATA + (reg & 3), size)


def cfg_write(bus: IoBus, dev: int, fn: int, reg: int, size: int, value: int) -> None:
    bus.write(PCI_CONFIG_ADDRESS, 4, config_address(0, dev, fn, reg))
    bus.write(PCI_CONFIG_DATA + (reg & 3), size, value)


def test_pci_host_bridge_ids_and_absent_functions():
    bus, host, _ = pc_pci(VirtualClock())
    assert cfg_read(bus, 0, 0, 0, 2) == 0x8086
    assert cfg_read(bus, 0, 0, 2, 2) == I440FX_DEVICE_ID  # OVMF_HOSTBRIDGE_DID
    assert cfg_read(bus, 0, 0, 0x0A, 2) == 0x0600  # host bridge class
    assert cfg_read(bus, 5, 0, 0, 4) == 0xFFFF_FFFF  # nothing there
    cfg_write(bus, 5, 0, 0x40, 4, 0x1234)  # ignored
    # The vendor ID is read-only.
    cfg_write(bus, 0, 0, 0, 2, 0xBEEF)
    assert cfg_read(bus, 0, 0, 0, 2) == 0x8086
    # CONFIG_ADDRESS reads back.
    bus.write(PCI_CONFIG_ADDRESS, 4, 0x8000_0810)
    assert bus.read(PCI_CONFIG_ADDRESS, 4) == 0x8000_0810


def test_piix4_pmba_maps_the_acpi_pm_timer_where_the_guest_asks():
    clock = VirtualClock()
    bus, host, pm_block = pc_pci(clock)
    # What OVMF's AcpiTimerLib constructor does on i440FX.
    assert cfg_read(bus, 1, 3, PIIX4_PMREGMISC, 1) & 1 == 0
    pmba = cfg_read(bus, 1, 3, PIIX4_PMBA, 4)
    assert pmba & 1  # I/O space indicator
    cfg_write(bus, 1, 3, PIIX4_PMBA, 4, (pmba & ~0xFFC0) | 0xB000)
    assert bus.read(0xB008, 4) == 0xFFFF_FFFF  # not decoded yet
    cfg_write(bus, 1, 3, PIIX4_PMREGMISC, 1, 1)
    assert cfg_read(bus, 1, 3, PIIX4_PMBA, 4) == 0xB001
    t0 = bus.read(0xB000 + PM_TMR, 4)
    clock.advance(1_000_000)  # 1 ms
    t1 = bus.read(0xB000 + PM_TMR, 4)
    assert t1 - t0 == pytest.approx(PM_TIMER_HZ / 1000, abs=1)
    # Moving the base moves the block.
    cfg_write(bus, 1, 3, PIIX4_PMBA, 4, 0x0601)
    assert bus.read(0xB008, 4) == 0xFFFF_FFFF and bus.read(0x608, 4) == t1


def test_pm_timer_is_24_bits_and_s5_is_reported():
    clock = VirtualClock()
    slept: list[int] = []
    block = AcpiPmBlock(clock, on_sleep=slept.append)
    block.base = 0x600
    clock.advance(10 * 1_000_000_000)  # 35.8M ticks wraps 24 bits
    assert block.io_read(0x608, 4) < 1 << 24
    block.io_write(0x604, 2, (0 << 10) | 0x2000)  # SLP_TYP 0 (S5 on PIIX4), SLP_EN
    assert slept == [0] and not block.io_read(0x604, 2) & 0x2000


# ----------------------------------------------------------------------------- local APIC
def apic(clock: VirtualClock) -> tuple[MmioBus, LocalApic]:
    dev = LocalApic(clock)
    bus = MmioBus()
    bus.register(APIC_BASE, APIC_SIZE, dev)
    return bus, dev


def test_lapic_reset_values():
    bus, _ = apic(VirtualClock())
    assert bus.read(APIC_BASE + 0x030, 4) & 0xFF == 0x14
    assert (bus.read(APIC_BASE + 0x030, 4) >> 16) & 0xFF == 5  # six LVT entries
    assert bus.read(APIC_BASE + 0x0F0, 4) == 0xFF
    assert bus.read(APIC_BASE + 0x320, 4) == 0x0001_0000  # masked


def test_lapic_timer_counts_down_at_the_divided_bus_clock():
    clock = VirtualClock()
    bus, _ = apic(clock)
    bus.write(APIC_BASE + 0x3E0, 4, 0b1011)  # divide by 1
    bus.write(APIC_BASE + 0x380, 4, 10_000)
    clock.advance(2_500)
    assert bus.read(APIC_BASE + 0x390, 4) == 7_500
    bus.write(APIC_BASE + 0x3E0, 4, 0b0011)  # divide by 16
    bus.write(APIC_BASE + 0x380, 4, 100)
    clock.advance(16 * 40)
    assert bus.read(APIC_BASE + 0x390, 4) == 60
    clock.advance(16 * 1000)
    assert bus.read(APIC_BASE + 0x390, 4) == 0  # one-shot stops at 0
    bus.write(APIC_BASE + 0x320, 4, 0x0002_0030)  # periodic
    assert bus.read(APIC_BASE + 0x390, 4) != 0


def test_lapic_icr_writes_are_sent_as_ipis():
    sent = []
    dev = LocalApic(VirtualClock(), 3, send_ipi=lambda source, icr: sent.append((source, icr)))
    bus = MmioBus()
    bus.register(APIC_BASE, APIC_SIZE, dev)
    bus.write(APIC_BASE + 0x310, 4, 1 << 24)
    bus.write(APIC_BASE + 0x300, 4, 0x000C_4500)  # INIT to all others
    [(source, icr)] = sent
    assert source == 3 and describe_ipi(icr) == "INIT IPI vector 0x0 to all others"
    assert not bus.read(APIC_BASE + 0x300, 4) & (1 << 12)  # delivered
