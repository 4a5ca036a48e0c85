"""Direct kernel boot: a bzImage, an initrd and a command line handed to firmware by fw_cfg.

What ``qemu -kernel bzImage -initrd FILE -append "..."`` does before the guest
runs (QEMU ``hw/i386/x86.c`` ``x86_load_linux``; the keys are QEMU's
``FW_CFG_*`` items, ``sevx86.arch.fw_cfg.FwCfgKey``):

* the first 8 KiB of the file is the setup header (Linux
  ``Documentation/arch/x86/boot.rst``, ``sevx86.arch.bootparam``); a kernel
  with a recent protocol (2.02+, LOADED_HIGH) gets the setup at 0x10000,
  the command line at 0x20000 and the protected-mode code at 0x100000;
* the highest initrd address is 4 GiB - 1 for a 2.12+ kernel that can be
  loaded above 4 GiB, else ``initrd_addr_max`` (2.03+) or 0x37FFFFFF, and
  never above the RAM below 4 GiB minus the ACPI data area;
  the initrd goes page-aligned right below it;
* the header is patched: ``cmd_line_ptr`` (or the old 0xA33F magic),
  ``vid_mode`` from ``vga=``, ``type_of_loader`` 0xB0 (QEMU), CAN_USE_HEAP
  and ``heap_end_ptr``, ``ramdisk_image``/``ramdisk_size``;
* the setup is ``(setup_sects + 1) * 512`` bytes (``setup_sects`` 0 means
  4), the rest of the file is the kernel; both go to fw_cfg with their
  load addresses, as do the initrd and the NUL-terminated command line.

A UEFI guest's OVMF (``QemuKernelLoaderFsDxe``) reads the SETUP, KERNEL,
INITRD and CMDLINE items and starts the kernel's EFI stub, or its own
``LoadLinuxLib``, which accepts boot protocol 2.05+ with a relocatable
kernel only; so does this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sevx86.arch.bits import U32_MASK as _U32
from sevx86.arch.bootparam import (
    BOOT_FLAG_MAGIC,
    DEFAULT_SETUP_SECTS,
    HEADER_MAGIC,
    OLD_CMDLINE_MAGIC,
    QEMU_HEADER_BYTES,
    SECTOR,
    SETUP_HEADER,
    SETUP_HEADER_END,
    LoadFlags,
    XLoadFlags,
    protocol_name,
)
from sevx86.arch.fw_cfg import FwCfgKey

# QEMU's pc machine keeps this much below the top of low RAM for the ACPI
# tables and other firmware data (hw/i386/pc.c: acpi_data_size 0x20000 + 0x8000).
ACPI_DATA_SIZE = 0x20000 + 0x8000
# OVMF's LoadLinuxLib (OvmfPkg/Library/LoadLinuxLib) needs protocol 2.05 and a
# relocatable kernel.
MIN_PROTOCOL = 0x0205
TYPE_OF_LOADER_QEMU = 0xB0  # "B": QEMU's loader ID, revision 0
_VGA_NAMES = {"normal": 0xFFFF, "ext": 0xFFFE, "ask": 0xFFFD}


class LinuxBootError(ValueError):
    """A kernel, initrd or command line that cannot be booted (one line, for the user)."""


@dataclass(frozen=True)
class BzImage:
    """A Linux bzImage: its setup header and how the file splits into setup and kernel."""

    data: bytes
    version: int
    setup_sects: int  # as in the header (0 meaning 4 is resolved in setup_size)
    loadflags: int
    xloadflags: int
    relocatable: bool
    initrd_addr_max: int
    cmdline_size: int

    @classmethod
    def parse(cls, data: bytes) -> BzImage:
        h = data[:QEMU_HEADER_BYTES]
        if len(h) < SETUP_HEADER_END or SETUP_HEADER.read(h, "header") != HEADER_MAGIC:
            raise LinuxBootError('not a Linux bzImage (no "HdrS" setup header at 0x202)')
        if SETUP_HEADER.read(h, "boot_flag") != BOOT_FLAG_MAGIC:
            raise LinuxBootError("not a Linux bzImage (boot_flag is not 0xAA55)")
        version = SETUP_HEADER.read(h, "version")
        relocatable = bool(SETUP_HEADER.read(h, "relocatable_kernel"))
        if version < MIN_PROTOCOL or not relocatable:
            why = "" if version < MIN_PROTOCOL else " but not relocatable"
            raise LinuxBootError(
                f"boot protocol {protocol_name(version)}{why}: a UEFI guest needs "
                f"{protocol_name(MIN_PROTOCOL)}+ and a relocatable kernel"
            )
        image = cls(
            data=bytes(data),
            version=version,
            setup_sects=SETUP_HEADER.read(h, "setup_sects"),
            loadflags=SETUP_HEADER.read(h, "loadflags"),
            xloadflags=SETUP_HEADER.read(h, "xloadflags") if version >= 0x020C else 0,
            relocatable=relocatable,
            initrd_addr_max=SETUP_HEADER.read(h, "initrd_addr_max") if version >= 0x0203 else 0,
            cmdline_size=SETUP_HEADER.read(h, "cmdline_size") if version >= 0x0206 else 255,
        )
        if image.setup_size > len(data):
            raise LinuxBootError(
                f"invalid kernel header: {image.setup_size} setup bytes in a {len(data)}-byte file"
            )
        return image

    @property
    def setup_size(self) -> int:
        return ((self.setup_sects or DEFAULT_SETUP_SECTS) + 1) * SECTOR

    @property
    def protocol(self) -> str:
        return protocol_name(self.version)


@dataclass(frozen=True)
class LinuxLoad:
    """The fw_cfg items of a direct kernel boot, and where QEMU would load each part."""

    setup: bytes  # with the patched header
    kernel: bytes
    initrd: bytes | None
    cmdline: bytes  # NUL-terminated
    setup_addr: int
    kernel_addr: int
    cmdline_addr: int
    initrd_addr: int  # 0 without an initrd
    initrd_max: int

    def items(self) -> list[tuple[int, bytes]]:
        """(key, data) in the order QEMU adds them; 32-bit values little-endian."""

        def i32(value: int) -> bytes:
            return (value & _U32).to_bytes(4, "little")

        out = [
            (FwCfgKey.CMDLINE_ADDR, i32(self.cmdline_addr)),
            (FwCfgKey.CMDLINE_SIZE, i32(len(self.cmdline))),
            (FwCfgKey.CMDLINE_DATA, self.cmdline),
        ]
        if self.initrd is not None:
            out += [
                (FwCfgKey.INITRD_ADDR, i32(self.initrd_addr)),
                (FwCfgKey.INITRD_SIZE, i32(len(self.initrd))),
                (FwCfgKey.INITRD_DATA, self.initrd),
            ]
        out += [
            (FwCfgKey.KERNEL_ADDR, i32(self.kernel_addr)),
            (FwCfgKey.KERNEL_SIZE, i32(len(self.kernel))),
            (FwCfgKey.KERNEL_DATA, self.kernel),
            (FwCfgKey.SETUP_ADDR, i32(self.setup_addr)),
            (FwCfgKey.SETUP_SIZE, i32(len(self.setup))),
            (FwCfgKey.SETUP_DATA, self.setup),
        ]
        return [(int(key), data) for key, data in out]


class FwCfgItems(Protocol):
    """The part of the fw_cfg device a direct boot fills (``sevx86.hv.devices.fw_cfg.FwCfg``)."""

    def add_bytes(self, key: int, data: bytes, *, writable: bool = False) -> None: ...


def load_linux(
    image: BzImage,
    *,
    initrd: bytes | None = None,
    cmdline: str = "",
    ram_below_4g: int,
    acpi_data_size: int = ACPI_DATA_SIZE,
) -> LinuxLoad:
    """What QEMU's ``x86_load_linux`` puts in fw_cfg for ``image``."""
    version = image.version
    if version < 0x0200 or not image.loadflags & LoadFlags.LOADED_HIGH:
        real_addr, prot_addr = 0x90000, 0x10000  # "low" kernel
    else:
        real_addr, prot_addr = (0x90000, 0x100000) if version < 0x0202 else (0x10000, 0x100000)
    cmdline_size = (len(cmdline.encode()) + 16) & ~15
    cmdline_addr = 0x9A000 - cmdline_size if real_addr == 0x90000 else 0x20000
    raw = cmdline.encode()
    if b"\0" in raw:
        raise LinuxBootError("the kernel command line contains a NUL byte")
    if len(raw) >= image.cmdline_size:
        raise LinuxBootError(
            f"the kernel command line is {len(raw)} bytes; this kernel takes at most "
            f"{image.cmdline_size - 1}"
        )

    if version >= 0x020C and image.xloadflags & XLoadFlags.CAN_BE_LOADED_ABOVE_4G:
        initrd_max = _U32
    elif version >= 0x0203:
        initrd_max = image.initrd_addr_max
    else:
        initrd_max = 0x37FF_FFFF
    if initrd_max >= ram_below_4g - acpi_data_size:
        initrd_max = ram_below_4g - acpi_data_size - 1

    header = bytearray(image.data[:QEMU_HEADER_BYTES])
    if version >= 0x0202:
        SETUP_HEADER.write(header, "cmd_line_ptr", cmdline_addr)
    else:
        SETUP_HEADER.write(header, "cmd_line_magic", OLD_CMDLINE_MAGIC)
        SETUP_HEADER.write(header, "cmd_line_offset", cmdline_addr - real_addr)
    vga = _vga_mode(cmdline)
    if vga is not None:
        SETUP_HEADER.write(header, "vid_mode", vga)
    if version >= 0x0200:
        SETUP_HEADER.write(header, "type_of_loader", TYPE_OF_LOADER_QEMU)
    if version >= 0x0201:
        flags = SETUP_HEADER.read(header, "loadflags") | LoadFlags.CAN_USE_HEAP
        SETUP_HEADER.write(header, "loadflags", flags)
        SETUP_HEADER.write(header, "heap_end_ptr", cmdline_addr - real_addr - 0x200)

    initrd_addr = 0
    if initrd is not None:
        if len(initrd) >= initrd_max:
            raise LinuxBootError(
                f"the initrd is too large for the guest RAM: {len(initrd)} bytes, "
                f"the highest initrd address is {initrd_max:#x}"
            )
        initrd_addr = (initrd_max - len(initrd)) & ~0xFFF
        SETUP_HEADER.write(header, "ramdisk_image", initrd_addr)
        SETUP_HEADER.write(header, "ramdisk_size", len(initrd))

    setup = bytearray(image.data[: image.setup_size])
    n = min(len(header), len(setup))
    setup[:n] = header[:n]
    return LinuxLoad(
        setup=bytes(setup),
        kernel=image.data[image.setup_size :],
        initrd=initrd,
        cmdline=raw + b"\0",
        setup_addr=real_addr,
        kernel_addr=prot_addr,
        cmdline_addr=cmdline_addr,
        initrd_addr=initrd_addr,
        initrd_max=initrd_max,
    )


def _vga_mode(cmdline: str) -> int | None:
    """``vga=`` as QEMU reads it: normal/ext/ask or a number (any base)."""
    at = cmdline.find("vga=")
    if at < 0:
        return None
    value = cmdline[at + 4 :].split(" ", 1)[0]
    for name, mode in _VGA_NAMES.items():
        if value.startswith(name):
            return mode
    try:
        return int(value, 0) & 0xFFFF
    except ValueError:
        raise LinuxBootError(f"invalid 'vga=' kernel parameter {value!r}") from None


def from_files(
    kernel: str | Path, initrd: str | Path | None, cmdline: str, *, ram_below_4g: int
) -> LinuxLoad:
    """``-kernel``/``-initrd``/``-append`` as given on a command line."""

    def read(path: str | Path, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise LinuxBootError(f"cannot read {what} {path}: {exc.strerror or exc}") from None

    try:
        image = BzImage.parse(read(kernel, "kernel"))
    except LinuxBootError as exc:
        raise LinuxBootError(f"{kernel}: {exc}") from None
    data = read(initrd, "initrd") if initrd is not None else None
    return load_linux(image, initrd=data, cmdline=cmdline, ram_below_4g=ram_below_4g)


def add_to_fw_cfg(load: LinuxLoad, fw_cfg: FwCfgItems) -> None:
    """Put a direct boot's items into the fw_cfg device (before the guest runs)."""
    for key, data in load.items():
        fw_cfg.add_bytes(key, data)


__all__ = [
    "ACPI_DATA_SIZE",
    "MIN_PROTOCOL",
    "BzImage",
    "FwCfgItems",
    "LinuxBootError",
    "LinuxLoad",
    "add_to_fw_cfg",
    "from_files",
    "load_linux",
]
