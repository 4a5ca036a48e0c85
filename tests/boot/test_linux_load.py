"""Direct kernel boot: bzImage parsing and the fw_cfg items, against the Linux boot protocol.

The images are built here from Linux ``Documentation/arch/x86/boot.rst``
(field offsets written out by hand, not taken from ``sevx86.arch.bootparam``);
the expected layout is QEMU's ``x86_load_linux`` for a 2.02+ LOADED_HIGH kernel.
"""

from __future__ import annotations

import struct

import pytest

from sevx86.arch.fw_cfg import FW_CFG_IO_DATA, FwCfgKey
from sevx86.boot.linux import BzImage, LinuxBootError, add_to_fw_cfg, load_linux
from sevx86.cli.main import main
from sevx86.hv.devices.fw_cfg import FwCfg
from tests.linux import build_initramfs, default_init, find_busybox, find_vmlinuz, needs_linux

MiB = 1 << 20


def bzimage(
    *,
    setup_sects: int = 3,
    version: int = 0x020F,
    relocatable: int = 1,
    loadflags: int = 0x01,
    xloadflags: int = 0x0B,  # KERNEL_64 | CAN_BE_LOADED_ABOVE_4G | EFI_HANDOVER_64
    initrd_addr_max: int = 0x7FFF_FFFF,
    cmdline_size: int = 2047,
    kernel_bytes: int = 5000,
    magic: bytes = b"HdrS",
) -> bytes:
    setup = bytearray(((setup_sects or 4) + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)  # boot_flag
    setup[0x202:0x206] = magic
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    setup[0x234] = relocatable
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    kernel = bytes((i * 7) & 0xFF for i in range(kernel_bytes))
    return bytes(setup) + kernel


def test_a_bzimage_splits_into_setup_sects_plus_one_sectors_and_the_kernel():
    image = BzImage.parse(bzimage(setup_sects=3))
    assert image.protocol == "2.15" and image.setup_size == 4 * 512
    load = load_linux(image, cmdline="console=ttyS0", ram_below_4g=512 * MiB)
    assert len(load.setup) == 2048 and load.kernel == bzimage(setup_sects=3)[2048:]
    # setup_sects = 0 means 4 (boot.rst, "setup_sects").
    assert BzImage.parse(bzimage(setup_sects=0)).setup_size == 5 * 512


def test_the_header_is_patched_as_qemu_does_for_a_recent_kernel():
    load = load_linux(
        BzImage.parse(bzimage()), cmdline="console=ttyS0 vga=0x317", ram_below_4g=512 * MiB
    )
    h = load.setup
    assert (load.setup_addr, load.cmdline_addr, load.kernel_addr) == (0x10000, 0x20000, 0x100000)
    assert struct.unpack_from("<I", h, 0x228)[0] == 0x20000  # cmd_line_ptr
    assert h[0x210] == 0xB0  # type_of_loader: QEMU
    assert h[0x211] == 0x81  # LOADED_HIGH | CAN_USE_HEAP
    assert struct.unpack_from("<H", h, 0x224)[0] == 0x20000 - 0x10000 - 0x200  # heap_end_ptr
    assert struct.unpack_from("<H", h, 0x1FA)[0] == 0x317  # vid_mode from vga=
    assert load.cmdline == b"console=ttyS0 vga=0x317\0"


def test_the_initrd_goes_page_aligned_below_the_ram_top_minus_the_acpi_area():
    initrd = bytes(300_000)
    ram = 512 * MiB
    load = load_linux(BzImage.parse(bzimage()), initrd=initrd, ram_below_4g=ram)
    # CAN_BE_LOADED_ABOVE_4G: the limit is RAM below 4 GiB - 0x28000 (ACPI data) - 1.
    top = ram - 0x28000 - 1
    assert load.initrd_max == top
    assert load.initrd_addr == (top - len(initrd)) & ~0xFFF
    assert struct.unpack_from("<II", load.setup, 0x218) == (load.initrd_addr, len(initrd))
    # Without that flag, initrd_addr_max of the header bounds it.
    low = load_linux(
        BzImage.parse(bzimage(xloadflags=0x1, initrd_addr_max=0x0FFF_FFFF)),
        initrd=initrd,
        ram_below_4g=ram,
    )
    assert low.initrd_max == 0x0FFF_FFFF


def test_the_items_reach_the_guest_through_the_fw_cfg_ports():
    initrd = b"initrd!" * 100
    load = load_linux(
        BzImage.parse(bzimage()), initrd=initrd, cmdline="quiet", ram_below_4g=MiB * 64
    )
    fw = FwCfg()
    add_to_fw_cfg(load, fw)

    def item(key: int) -> bytes:
        fw.select(key)
        size = {FwCfgKey.SETUP_DATA: 2048, FwCfgKey.CMDLINE_DATA: 6, FwCfgKey.INITRD_DATA: 700}
        n = size.get(key, 4)
        return bytes(fw.io_read(FW_CFG_IO_DATA, 1) for _ in range(n))

    def u32(key: int) -> int:
        return int.from_bytes(item(key), "little")

    assert u32(FwCfgKey.KERNEL_SIZE) == 5000 and u32(FwCfgKey.SETUP_SIZE) == 2048
    assert u32(FwCfgKey.KERNEL_ADDR) == 0x100000 and u32(FwCfgKey.SETUP_ADDR) == 0x10000
    assert u32(FwCfgKey.CMDLINE_SIZE) == 6 and item(FwCfgKey.CMDLINE_DATA) == b"quiet\0"
    assert u32(FwCfgKey.INITRD_SIZE) == 700 and item(FwCfgKey.INITRD_DATA) == initrd
    assert item(FwCfgKey.SETUP_DATA)[0x202:0x206] == b"HdrS"


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"MZ" + bytes(9000), "not a Linux bzImage"),
        (bzimage(magic=b"HdrX"), "not a Linux bzImage"),
        (bzimage(version=0x0204), "boot protocol 2.04"),
        (bzimage(relocatable=0), "not relocatable"),
        (bzimage()[:1500], "invalid kernel header"),
    ],
)
def test_images_a_uefi_guest_cannot_boot_are_refused(image, message):
    with pytest.raises(LinuxBootError, match=message):
        BzImage.parse(image)


def test_an_initrd_too_large_and_a_command_line_too_long_are_refused():
    image = BzImage.parse(bzimage(cmdline_size=16))
    with pytest.raises(LinuxBootError, match="initrd is too large"):
        load_linux(image, initrd=bytes(MiB), ram_below_4g=MiB)
    with pytest.raises(LinuxBootError, match="at most 15"):
        load_linux(image, cmdline="x" * 16, ram_below_4g=64 * MiB)


def test_cli_bad_kernel_input_is_a_one_line_usage_error(tmp_path, capsys):
    firmware = tmp_path / "fw.fd"
    firmware.write_bytes(bytes(0x1000))
    not_linux = tmp_path / "not-linux"
    not_linux.write_bytes(bytes(9000))
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage())
    # --memory has a floor (OVMF needs 128M), so the limit that a 17 MiB initrd
    # exceeds is the kernel's own initrd_addr_max (protocol 2.03+; before
    # 2.12 nothing lifts it), which QEMU's x86_load_linux honours too.
    capped = tmp_path / "bzImage-16M"
    capped.write_bytes(bzimage(version=0x020B, initrd_addr_max=16 * MiB - 1))
    big = tmp_path / "initrd"
    big.write_bytes(bytes(17 * MiB))
    cases = [
        (["--kernel", str(tmp_path / "missing")], "cannot read kernel"),
        (["--kernel", str(not_linux)], "not a Linux bzImage"),
        (["--kernel", str(kernel), "--initrd", str(tmp_path / "nope")], "cannot read initrd"),
        (["--kernel", str(capped), "--initrd", str(big), "--memory", "128M"], "too large"),
        (["--initrd", str(big)], "need --kernel"),
        (["--append", "quiet"], "need --kernel"),
    ]
    for extra, message in cases:
        assert main(["boot", str(firmware), *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_debian_vmlinuz_parses_as_a_64_bit_efi_handover_kernel():
    vmlinuz = find_vmlinuz()
    if vmlinuz is None:
        pytest.skip("no Debian kernel: see tests/linux.py")
    image = BzImage.parse(vmlinuz.read_bytes())
    assert image.version >= 0x020F  # 6.1 kernels speak 2.15
    assert image.xloadflags & 0x1 and image.xloadflags & 0x8  # KERNEL_64, EFI_HANDOVER_64
    assert image.relocatable


@needs_linux
def test_debian_kernel_and_busybox_initramfs_make_a_complete_fw_cfg_set():
    vmlinuz = find_vmlinuz().read_bytes()
    initrd = build_initramfs(default_init(), find_busybox())
    image = BzImage.parse(vmlinuz)
    load = load_linux(image, initrd=initrd, cmdline="console=ttyS0", ram_below_4g=512 * MiB)
    assert load.setup[:0x1F1] == vmlinuz[:0x1F1]  # only the header is patched
    assert load.kernel == vmlinuz[len(load.setup) :]  # the rest of the file, unchanged
    assert len(load.setup) == (vmlinuz[0x1F1] + 1) * 512
    assert load.initrd_addr % 4096 == 0 and load.initrd_addr + len(initrd) <= load.initrd_max
