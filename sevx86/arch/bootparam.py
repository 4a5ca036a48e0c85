"""The Linux x86 boot protocol: the real-mode kernel header of a bzImage.

Source: Linux ``Documentation/arch/x86/boot.rst`` ("The Real-Mode Kernel
Header", "Details of Header Fields") and ``arch/x86/include/uapi/asm/bootparam.h``.
Offsets are those within the zero page (``struct boot_params``), which is
also where they sit in the bzImage file: the setup header starts at 0x1F1 of
the first sector. All fields are little-endian.
"""

from __future__ import annotations

from enum import IntFlag

from sevx86.arch.layout import Field, Layout

SECTOR = 512
BOOT_FLAG_MAGIC = 0xAA55  # boot_flag: the boot sector signature
HEADER_MAGIC = 0x5372_6448  # header: "HdrS"
DEFAULT_SETUP_SECTS = 4  # setup_sects = 0 means 4 (boot.rst, "setup_sects")
OLD_CMDLINE_MAGIC = 0xA33F  # protocol < 2.02: cmd_line_magic at 0x20
# The setup header QEMU reads and patches: the first 8 KiB of the file.
QEMU_HEADER_BYTES = 8192

SETUP_HEADER = Layout(
    "boot_params",
    4096,
    [
        Field("cmd_line_magic", 0x020, 2, "protocol < 2.02 command line: 0xA33F"),
        Field("cmd_line_offset", 0x022, 2, "protocol < 2.02: offset from the setup base"),
        Field("setup_sects", 0x1F1, 1, "size of the setup in 512-byte sectors (0: 4)"),
        Field("root_flags", 0x1F2, 2),
        Field("syssize", 0x1F4, 4, "size of the 32-bit code in 16-byte paragraphs"),
        Field("ram_size", 0x1F8, 2),
        Field("vid_mode", 0x1FA, 2, "video mode control"),
        Field("root_dev", 0x1FC, 2),
        Field("boot_flag", 0x1FE, 2, "0xAA55"),
        Field("jump", 0x200, 2),
        Field("header", 0x202, 4, '"HdrS"'),
        Field("version", 0x206, 2, "boot protocol version, e.g. 0x020F"),
        Field("realmode_swtch", 0x208, 4),
        Field("start_sys_seg", 0x20C, 2),
        Field("kernel_version", 0x20E, 2, "pointer to the version string, - 0x200"),
        Field("type_of_loader", 0x210, 1, "boot loader identifier (QEMU: 0xB0)"),
        Field("loadflags", 0x211, 1),
        Field("setup_move_size", 0x212, 2),
        Field("code32_start", 0x214, 4),
        Field("ramdisk_image", 0x218, 4, "initrd load address"),
        Field("ramdisk_size", 0x21C, 4),
        Field("bootsect_kludge", 0x220, 4),
        Field("heap_end_ptr", 0x224, 2, "end of the setup heap, from the setup base - 0x200"),
        Field("ext_loader_ver", 0x226, 1),
        Field("ext_loader_type", 0x227, 1),
        Field("cmd_line_ptr", 0x228, 4, "32-bit address of the command line (2.02+)"),
        Field("initrd_addr_max", 0x22C, 4, "highest address of the initrd (2.03+)"),
        Field("kernel_alignment", 0x230, 4),
        Field("relocatable_kernel", 0x234, 1, "2.05+"),
        Field("min_alignment", 0x235, 1),
        Field("xloadflags", 0x236, 2, "2.12+"),
        Field("cmdline_size", 0x238, 4, "maximum command line length (2.06+)"),
        Field("hardware_subarch", 0x23C, 4),
        Field("hardware_subarch_data", 0x240, 8),
        Field("payload_offset", 0x248, 4),
        Field("payload_length", 0x24C, 4),
        Field("setup_data", 0x250, 8),
        Field("pref_address", 0x258, 8),
        Field("init_size", 0x260, 4),
        Field("handover_offset", 0x264, 4, "EFI handover entry (2.11+)"),
        Field("kernel_info_offset", 0x268, 4, "2.15+"),
    ],
)
# The header's end: a file must hold at least this much for the fields above.
SETUP_HEADER_END = 0x26C


class LoadFlags(IntFlag):
    """``loadflags`` (0x211)."""

    LOADED_HIGH = 1 << 0  # protected-mode code loaded at 0x100000
    KASLR_FLAG = 1 << 1
    QUIET_FLAG = 1 << 5
    KEEP_SEGMENTS = 1 << 6
    CAN_USE_HEAP = 1 << 7  # heap_end_ptr is valid


class XLoadFlags(IntFlag):
    """``xloadflags`` (0x236, protocol 2.12+)."""

    KERNEL_64 = 1 << 0  # has the 64-bit entry at 0x200
    CAN_BE_LOADED_ABOVE_4G = 1 << 1
    EFI_HANDOVER_32 = 1 << 2
    EFI_HANDOVER_64 = 1 << 3
    EFI_KEXEC = 1 << 4
    FIVE_LEVEL = 1 << 5


def protocol_name(version: int) -> str:
    """0x020F -> "2.15"."""
    return f"{version >> 8}.{version & 0xFF:02d}"


__all__ = [
    "BOOT_FLAG_MAGIC",
    "DEFAULT_SETUP_SECTS",
    "HEADER_MAGIC",
    "OLD_CMDLINE_MAGIC",
    "QEMU_HEADER_BYTES",
    "SECTOR",
    "SETUP_HEADER",
    "SETUP_HEADER_END",
    "LoadFlags",
    "XLoadFlags",
    "protocol_name",
]
