"""The CFI flash device's state machine, against a fake host memory (no guest).

Expected values are QEMU's pflash_cfi01 with the pc machine's parameters
(4 KiB sectors, one-byte bank, no device width, identifier codes 0) and the
probe OVMF's QemuFlashDetected runs.
"""

from __future__ import annotations

import pytest

from sevx86.arch.cfi import CfiCommandSet, CfiQuery, FlashCmd, FlashStatus
from sevx86.hv.devices.bus import MmioBus
from sevx86.hv.devices.pflash import PC_SECTOR_SIZE, PFlashCfi01

BASE = 0xFFE0_0000
SIZE = 0x20000  # Debian's OVMF_VARS.fd: 128 KiB, 32 sectors
READY = int(FlashStatus.READY)


class FakeHostMemory:
    """The host's view of the flash RAM, recording the memory-map calls."""

    def __init__(self, base: int, size: int):
        self.base = base
        self.data = bytearray(bytes(range(256)) * (size // 256))
        self.trapping = False
        self.readonly = False
        self.map_changes: list[tuple[str, bool]] = []

    def read(self, gpa: int, size: int) -> bytes:
        off = gpa - self.base
        return bytes(self.data[off : off + size])

    def write(self, gpa: int, data: bytes) -> None:
        off = gpa - self.base
        self.data[off : off + len(data)] = data

    def set_trapping(self, gpa: int, size: int, on: bool = True) -> bool:
        assert (gpa, size) == (self.base, len(self.data))
        changed = self.trapping != on
        self.trapping = on
        if changed:
            self.map_changes.append(("trapping", on))
        return changed

    def set_readonly(self, gpa: int, size: int, on: bool = True) -> bool:
        assert (gpa, size) == (self.base, len(self.data))
        changed = self.readonly != on
        self.readonly = on
        return changed


@pytest.fixture
def flash() -> tuple[MmioBus, PFlashCfi01, FakeHostMemory]:
    memory = FakeHostMemory(BASE, SIZE)
    device = PFlashCfi01(memory, BASE, SIZE)
    bus = MmioBus()
    bus.register(BASE, SIZE, device)
    return bus, device, memory


def test_starts_in_read_array_mode_as_read_only_memory(flash):
    bus, device, memory = flash
    assert memory.readonly and not memory.trapping and device.romd
    assert bus.read(BASE + 0x123, 1) == 0x23
    assert bus.read(BASE + 0x100, 4) == 0x0302_0100
    assert bus.read(BASE + 0x100, 8) == 0x0706_0504_0302_0100  # two 4-byte halves


def test_byte_program_traps_until_read_array_and_lands_in_memory(flash):
    bus, device, memory = flash
    bus.write(BASE + 0x10, 1, FlashCmd.PROGRAM_ALT)
    assert memory.trapping and not device.romd  # command mode: reads must reach us
    bus.write(BASE + 0x10, 1, 0xA5)
    assert memory.data[0x10] == 0xA5
    assert bus.read(BASE + 0x10, 1) == READY  # status until read array
    bus.write(BASE + 0x11, 1, FlashCmd.PROGRAM)
    bus.write(BASE + 0x11, 1, 0x5A)
    bus.write(BASE + 0x11, 1, FlashCmd.READ_ARRAY)
    assert not memory.trapping and device.romd
    assert bus.read(BASE + 0x10, 2) == 0x5AA5
    assert memory.map_changes == [("trapping", True), ("trapping", False)]
    assert device.programmed == 2 and device.commands[FlashCmd.PROGRAM_ALT] == 1


def test_program_stores_the_value_as_written_like_qemu(flash):
    bus, _device, memory = flash
    memory.data[0x20] = 0x0F
    bus.write(BASE + 0x20, 1, FlashCmd.PROGRAM)
    bus.write(BASE + 0x20, 1, 0xF0)  # a real NOR cell could not set these bits
    assert memory.data[0x20] == 0xF0


def test_word_program_stores_the_access_width(flash):
    bus, _device, memory = flash
    bus.write(BASE + 0x40, 1, FlashCmd.PROGRAM)
    bus.write(BASE + 0x40, 4, 0x1122_3344)
    assert bytes(memory.data[0x40:0x44]) == bytes.fromhex("44332211")


def test_block_erase_fills_the_4k_sector_and_stays_in_status_mode(flash):
    bus, device, memory = flash
    bus.write(BASE + 0x1234, 1, FlashCmd.BLOCK_ERASE)
    # QEMU erases at the setup write already.
    assert bytes(memory.data[0x1000:0x2000]) == b"\xff" * PC_SECTOR_SIZE
    assert memory.data[0xFFF] == 0xFF and memory.data[0x2000] == 0x00  # neighbours kept
    bus.write(BASE + 0x1234, 1, FlashCmd.CONFIRM)
    assert memory.trapping and bus.read(BASE + 0x1000, 1) == READY
    assert device.erased == 1
    bus.write(BASE, 1, FlashCmd.READ_ARRAY)
    assert bus.read(BASE + 0x1000, 4) == 0xFFFF_FFFF


def test_erase_aborted_with_read_array_or_a_wrong_confirm(flash):
    bus, device, memory = flash
    bus.write(BASE, 1, FlashCmd.BLOCK_ERASE)
    bus.write(BASE, 1, FlashCmd.READ_ARRAY)
    assert device.romd and not memory.trapping
    bus.write(BASE + 0x2000, 1, FlashCmd.BLOCK_ERASE)
    bus.write(BASE + 0x2000, 1, 0x42)  # sequence error: back to read array
    assert device.romd and device.cmd == 0 and device.wcycle == 0


def test_status_register_read_clear_and_width(flash):
    bus, device, _memory = flash
    bus.write(BASE, 1, FlashCmd.READ_STATUS)
    assert bus.read(BASE + 0x777, 1) == READY
    assert bus.read(BASE, 2) == READY  # no device width: upper byte 0
    assert bus.read(BASE, 4) == READY | READY << 16
    bus.write(BASE, 1, FlashCmd.CLEAR_STATUS)  # status 0, read-array mode
    assert device.romd and device.status == 0
    bus.write(BASE, 1, FlashCmd.READ_STATUS)
    assert bus.read(BASE, 1) == 0


def test_ovmf_probe_finds_a_writable_flash(flash):
    """QemuFlashDetected (edk2 since 2023; SEV-ES builds before that skip it)."""
    bus, _device, memory = flash
    ptr = BASE + 3  # the first byte not 0x50, 0x70 or 0x00
    original = bus.read(ptr, 1)
    bus.write(ptr, 1, FlashCmd.CLEAR_STATUS)
    assert bus.read(ptr, 1) == original  # not RAM: the byte did not change
    bus.write(ptr, 1, FlashCmd.READ_STATUS)
    assert bus.read(ptr, 1) == 0  # CLEARED_ARRAY_STATUS: "FD behaves as FLASH"
    bus.write(ptr, 1, FlashCmd.PROGRAM_ALT)
    bus.write(ptr, 1, original)
    bus.write(ptr, 1, FlashCmd.READ_STATUS)
    assert not bus.read(ptr, 1) & FlashStatus.PROGRAM_ERROR  # "..., writable"
    bus.write(ptr, 1, FlashCmd.READ_ARRAY)
    assert bus.read(ptr, 1) == original and not memory.trapping


def test_write_protected_flash_reports_program_and_erase_errors():
    memory = FakeHostMemory(BASE, SIZE)
    device = PFlashCfi01(memory, BASE, SIZE, write_protected=True)
    before = bytes(memory.data)
    device.mmio_write(0, 1, FlashCmd.PROGRAM)
    device.mmio_write(0, 1, 0x00)
    assert device.mmio_read(0, 1) == READY | FlashStatus.PROGRAM_ERROR
    device.mmio_write(0, 1, FlashCmd.BLOCK_ERASE)
    device.mmio_write(0, 1, FlashCmd.CONFIRM)
    assert device.mmio_read(0, 1) & FlashStatus.ERASE_ERROR
    assert bytes(memory.data) == before


def test_read_identifier_codes_are_the_pc_machines_zeros(flash):
    bus, _device, _memory = flash
    bus.write(BASE, 1, FlashCmd.READ_ID)
    assert [bus.read(BASE + i, 1) for i in range(3)] == [0, 0, 0]
    memory = FakeHostMemory(BASE, SIZE)
    device = PFlashCfi01(memory, BASE, SIZE, ids=(0x89, 0x18, 0x00, 0x18))
    device.mmio_write(0, 1, FlashCmd.READ_ID)
    assert device.mmio_read(0, 2) == 0x8918 and device.mmio_read(1, 2) == 0x0018
    assert device.mmio_read(0x102, 2) == 0


def test_cfi_query_describes_the_part(flash):
    bus, device, _memory = flash
    bus.write(BASE + 0x55, 1, FlashCmd.CFI_QUERY)
    q = bytes(bus.read(BASE + i, 1) for i in range(0x40))
    assert q[CfiQuery.QRY : CfiQuery.QRY + 3] == b"QRY"
    cmdset = int.from_bytes(q[CfiQuery.PRIMARY_COMMAND_SET :][:2], "little")
    assert cmdset == CfiCommandSet.INTEL_EXTENDED
    assert 1 << q[CfiQuery.DEVICE_SIZE] == SIZE
    assert q[CfiQuery.ERASE_REGIONS] == 1
    region = q[CfiQuery.ERASE_REGION_1 :][:4]
    blocks = int.from_bytes(region[:2], "little") + 1
    block_size = int.from_bytes(region[2:], "little") * 256
    assert (blocks, block_size) == (SIZE // PC_SECTOR_SIZE, PC_SECTOR_SIZE)
    pri = int.from_bytes(q[CfiQuery.PRIMARY_TABLE :][:2], "little")
    assert q[pri : pri + 5] == b"PRI10"
    assert bus.read(BASE + 0x100 + CfiQuery.QRY, 1) == ord("Q")  # low address byte only
    bus.write(BASE, 1, 0x42)  # ignored in query mode
    assert device.cmd == FlashCmd.CFI_QUERY
    bus.write(BASE, 1, FlashCmd.READ_ARRAY)
    assert device.romd


def test_qemus_device_size_for_a_size_that_is_no_power_of_two():
    # OVMF_VARS_4M.fd is 0x84000 bytes: QEMU stores ctz(size) = 14.
    memory = FakeHostMemory(BASE, 0x84000)
    device = PFlashCfi01(memory, BASE, 0x84000)
    assert device.cfi[CfiQuery.DEVICE_SIZE] == 14


def test_lock_commands_only_report_ready(flash):
    bus, device, _memory = flash
    for second in (FlashCmd.CONFIRM, FlashCmd.LOCK):
        bus.write(BASE, 1, FlashCmd.LOCK_SETUP)
        bus.write(BASE, 1, second)
        assert bus.read(BASE, 1) == READY and device.wcycle == 0
    bus.write(BASE, 1, FlashCmd.READ_ARRAY)


def test_unknown_and_unmodelled_commands_go_back_to_read_array(flash):
    bus, device, memory = flash
    for cmd in (0x42, FlashCmd.WRITE_TO_BUFFER):
        bus.write(BASE, 1, cmd)
        assert device.romd and not memory.trapping and device.cmd == 0
    bus.write(BASE, 1, FlashCmd.AMD_RESET)
    assert device.romd


def test_reset_returns_to_read_array_with_status_ready(flash):
    bus, device, memory = flash
    bus.write(BASE, 1, FlashCmd.CLEAR_STATUS)
    bus.write(BASE, 1, FlashCmd.READ_STATUS)
    device.reset()
    assert device.romd and not memory.trapping and device.status == READY


def test_geometry_is_checked():
    with pytest.raises(ValueError):
        PFlashCfi01(FakeHostMemory(BASE, SIZE), BASE, SIZE + 0x800)


def test_read_array_in_read_array_mode_does_not_remap(flash):
    bus, _device, memory = flash
    bus.write(BASE, 1, FlashCmd.READ_ARRAY)
    bus.write(BASE, 1, FlashCmd.CLEAR_STATUS)
    assert memory.map_changes == []  # no TLB flush for a mode the device is already in
