"""Write guest_asm/include/*.inc from the spec structures in sevx86.arch.

The #VC handlers in guest_asm/ need GHCB offsets, valid-bitmap bits, SVM and
GHCB exit codes, MSR numbers and MSR-protocol codes. Those are defined once,
in ``sevx86.arch``; this module renders them as NASM ``%define``s so the
assembly never retypes a number. The generated files are checked in (an
installed package has no generator step); ``tests/guest_asm/test_includes.py``
regenerates them in memory and fails if the checked-in copies differ.

Run ``python -m sevx86.asm.gen_includes`` after changing sevx86.arch or
sevx86.asm.guest_abi (``--check`` only compares).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from enum import Enum
from pathlib import Path

from sevx86.arch import apic, cpuid, cr, descriptors, exits, ghcb, msr, paging, vectors, vmcb
from sevx86.arch.layout import Layout
from sevx86.asm import fw_abi, guest_abi
from sevx86.boot import ovmf
from sevx86.hv.devices import debugcon, mmio_test, serial

Define = tuple[str, int | str, str]  # name, value, comment

# Spec spellings (GHCB 56421) for the three software fields.
_GHCB_NAMES = {
    "sw_exit_code": "SW_EXITCODE",
    "sw_exit_info_1": "SW_EXITINFO1",
    "sw_exit_info_2": "SW_EXITINFO2",
    "sw_scratch": "SW_SCRATCH",
    "ghcb_usage": "USAGE",
}


def _hex(value: int) -> str:
    if value < 0:
        raise ValueError(f"negative constant {value}")
    return f"0x{value:X}" if value > 9 else str(value)


def _members(enum: type[Enum], prefix: str, comment: str = "") -> list[Define]:
    return [(f"{prefix}{m.name}", int(m.value), comment) for m in enum]  # type: ignore[arg-type]


def _bit_index(mask: int) -> int:
    if mask <= 0 or mask & (mask - 1):
        raise ValueError(f"{mask:#x} is not a single bit")
    return mask.bit_length() - 1


def _flags(enum: type[Enum], prefix: str) -> list[Define]:
    """Each flag as a mask, and single-bit flags also as ``..._BIT`` indices."""
    out: list[Define] = []
    for m in enum:
        value = int(m.value)  # type: ignore[arg-type]
        out.append((f"{prefix}{m.name}", value, ""))
        if value and not value & (value - 1):
            out.append((f"{prefix}{m.name}_BIT", _bit_index(value), ""))
    return out


def _ghcb() -> list[Define]:
    d: list[Define] = [
        ("GHCB_SIZE", ghcb.GHCB_SIZE, "the GHCB is one 4 KiB shared page"),
        ("GHCB_SAVE_AREA_SIZE", ghcb.GHCB_SAVE_AREA_SIZE, "covered by the valid bitmap"),
    ]
    for f in ghcb.GHCB:
        name = _GHCB_NAMES.get(f.name, f.name.upper())
        d.append((f"GHCB_{name}", f.offset, f.doc))
        d.append((f"GHCB_{name}_SIZE", f.size, ""))
    d.append(("GHCB_SHARED_BUFFER_SIZE", ghcb.SHARED_BUFFER_SIZE, ""))
    d.append(("; valid bitmap: bit n covers save-area quadword n (offset / 8)", "", ""))
    for f in ghcb.GHCB:
        if f.offset < ghcb.GHCB_SAVE_AREA_SIZE:
            name = _GHCB_NAMES.get(f.name, f.name.upper())
            d.append((f"GHCB_VALID_{name}", ghcb.valid_bit(f.name), "bit index"))
    d += [
        ("GHCB_PROTOCOL_MIN", ghcb.GHCB_PROTOCOL_MIN, ""),
        ("GHCB_PROTOCOL_MAX", ghcb.GHCB_PROTOCOL_MAX, ""),
        ("GHCB_USAGE_STANDARD", ghcb.GHCB_USAGE_STANDARD, ""),
        ("; SW_EXITINFO1[31:0] after VMGEXIT (GHCB v2 answers)", "", ""),
        *_members(ghcb.ExitInfoResult, "GHCB_RESULT_"),
        ("GHCB_RESULT_MASK", ghcb.EXIT_INFO_RESULT_MASK, ""),
        *_members(ghcb.GhcbError, "GHCB_ERR_", "SW_EXITINFO2 when the result is ERROR"),
        ("; GHCB MSR protocol: GHCBInfo 11:0, GHCBData 63:12", "", ""),
        *_members(ghcb.GhcbMsr, "GHCB_MSR_"),
        ("GHCB_MSR_INFO_MASK", ghcb.GHCB_MSR_INFO_MASK, ""),
        ("GHCB_MSR_DATA_SHIFT", ghcb.GHCB_MSR_DATA_SHIFT, ""),
        ("GHCB_MSR_CPUID_FN_SHIFT", ghcb.CPUID_FN_SHIFT, "function in 63:32"),
        ("GHCB_MSR_CPUID_REG_SHIFT", ghcb.CPUID_REG_SHIFT, "register select in 31:30"),
        *_members(ghcb.CpuidReg, "GHCB_CPUID_REG_"),
        ("GHCB_MSR_SEV_INFO_MAX_SHIFT", ghcb.SEV_INFO_MAX_SHIFT, "max protocol 63:48"),
        ("GHCB_MSR_SEV_INFO_MIN_SHIFT", ghcb.SEV_INFO_MIN_SHIFT, "min protocol 47:32"),
        ("GHCB_MSR_SEV_INFO_CBIT_SHIFT", ghcb.SEV_INFO_CBIT_SHIFT, "C-bit position 31:24"),
        ("GHCB_MSR_TERM_SET_SHIFT", ghcb.TERM_SET_SHIFT, "reason set 15:12"),
        ("GHCB_MSR_TERM_CODE_SHIFT", ghcb.TERM_CODE_SHIFT, "reason code 23:16"),
        ("; termination reasons (set 0 is the spec's)", "", ""),
        *_members(ghcb.TermReasonSet, "GHCB_TERM_SET_"),
        *_members(ghcb.GeneralTermReason, "GHCB_TERM_"),
        (
            "GHCB_SW_TERM_CODE_SHIFT",
            _bit_index(ghcb.sw_terminate_info1(0, 1)),
            "SwExit TERMINATE: SW_EXITINFO1 set 3:0, code 11:4",
        ),
    ]
    return d


def _svm() -> list[Define]:
    d: list[Define] = [("; SVM exit codes = #VC error codes (APM vol 2, table C-1)", "", "")]
    d += _members(exits.SvmExit, "SVM_EXIT_")
    d.append(("; software exit codes for SW_EXITCODE (GHCB spec)", "", ""))
    d += _members(exits.SwExit, "SW_EXIT_")
    d += [
        ("MSR_EXITINFO1_RDMSR", exits.MSR_EXITINFO1_RDMSR, ""),
        ("MSR_EXITINFO1_WRMSR", exits.MSR_EXITINFO1_WRMSR, ""),
        ("; IOIO EXITINFO1 (APM vol 2, 15.10.2)", "", ""),
        *_flags(vmcb.Ioio, "IOIO_"),
        ("IOIO_SEG_SHIFT", vmcb.IOIO_SEG_SHIFT, "bits 12:10"),
        ("IOIO_PORT_SHIFT", vmcb.IOIO_PORT_SHIFT, "bits 31:16"),
        *_members(vmcb.SegReg, "SEG_"),
        ("; EVENTINJ (APM vol 2, 15.20), also SW_EXITINFO2 of an EXCEPTION answer", "", ""),
        ("EVENTINJ_VECTOR_MASK", vmcb.EVENTINJ_VECTOR_MASK, ""),
        ("EVENTINJ_TYPE_SHIFT", vmcb.EVENTINJ_TYPE_SHIFT, ""),
        ("EVENTINJ_TYPE_MASK", vmcb.EVENTINJ_TYPE_MASK, ""),
        ("EVENTINJ_EV", vmcb.EVENTINJ_EV, "an error code is in 63:32"),
        ("EVENTINJ_EV_BIT", _bit_index(vmcb.EVENTINJ_EV), ""),
        ("EVENTINJ_V", vmcb.EVENTINJ_V, "valid"),
        ("EVENTINJ_V_BIT", _bit_index(vmcb.EVENTINJ_V), ""),
        ("EVENTINJ_ERRORCODE_SHIFT", vmcb.EVENTINJ_ERRORCODE_SHIFT, ""),
        *_members(vmcb.EventType, "EVENTINJ_TYPE_"),
    ]
    return d


def _msr() -> list[Define]:
    d: list[Define] = _members(msr.Msr, "MSR_")
    d.append(("MSR_GHCB", int(msr.Msr.SEV_ES_GHCB), "short name of SEV_ES_GHCB"))
    d += _flags(msr.Efer, "EFER_")
    d += _flags(msr.SevStatus, "SEV_STATUS_")
    return d


def _x86() -> list[Define]:
    d: list[Define] = _members(vectors.Vector, "VEC_")
    mask = sum(1 << v for v in vectors.ERROR_CODE_VECTORS)
    d.append(("VEC_ERROR_CODE_MASK", mask, "bit v set: vector v pushes an error code"))
    d.append(("VEC_FIRST_USER", vectors.FIRST_USER_VECTOR, "vectors below are exceptions"))
    d.append(("VEC_COUNT", vectors.NUM_VECTORS, "gates in a full IDT"))
    d += _flags(cr.Cr0, "CR0_")
    d += _flags(cr.Cr4, "CR4_")
    d += _flags(cr.Rflags, "RFLAGS_")
    d += _flags(paging.Pte, "PTE_")
    d += _flags(paging.PfErr, "PF_ERR_")
    d += [
        ("PTE_ENTRY_SIZE", paging.ENTRY_SIZE, ""),
        ("PTE_INDEX_MASK", paging.INDEX_MASK, ""),
        ("PTE_ADDR_MASK", paging.PHYS_ADDR_MASK, "bits 51:12 (strip the C-bit too)"),
        ("PAGE_SIZE_4K", paging.PAGE_SIZE_4K, ""),
        ("PAGE_SIZE_2M", paging.PAGE_SIZE_2M, ""),
        ("PAGE_SIZE_1G", paging.PAGE_SIZE_1G, ""),
        *[
            (f"PT_LEVEL{i}_SHIFT", s, "PML4, PDPT, PD, PT")
            for i, s in enumerate(paging.LEVEL_SHIFTS)
        ],
    ]
    return d


def _cpuid() -> list[Define]:
    d: list[Define] = _members(cpuid.Leaf, "CPUID_LEAF_")
    for enum, prefix in (
        (cpuid.Leaf1Ecx, "CPUID_1_ECX_"),
        (cpuid.Leaf1Edx, "CPUID_1_EDX_"),
        (cpuid.Ext1Edx, "CPUID_80000001_EDX_"),
        (cpuid.MemEncryptEax, "CPUID_8000001F_EAX_"),
    ):
        d += _flags(enum, prefix)
    d += [
        ("CPUID_1_EBX_APIC_ID_SHIFT", cpuid.LEAF1_EBX_APIC_ID_SHIFT, "initial APIC ID, 31:24"),
        ("CPUID_80000008_ECX_NC_MASK", cpuid.ADDR_SIZES_ECX_NC_MASK, "cores - 1"),
        ("CPUID_8000001F_EBX_CBIT_MASK", cpuid.CBIT_POS_MASK, "C-bit position, bits 5:0"),
        ("CPUID_8000001F_EBX_PHYS_REDUCTION_SHIFT", cpuid.PHYS_REDUCTION_SHIFT, ""),
        ("CPUID_8000001F_EBX_PHYS_REDUCTION_MASK", cpuid.PHYS_REDUCTION_MASK, "after the shift"),
    ]
    return d


def _vc_abi() -> list[Define]:
    return [
        ("VC_REASON_SET", guest_abi.GUEST_ASM_REASON_SET, "reason set of the guest_asm handlers"),
        *_members(guest_abi.VcReason, "VC_REASON_"),
        ("DR7_RESET", guest_abi.DR7_RESET, ""),
        ("DR7_WRITABLE", guest_abi.DR7_WRITABLE, ""),
        ("; per-vCPU #VC state (%define VC_PERCPU): a block after each vCPU's TSS", "", ""),
        *_members(guest_abi.VcPercpu, "VC_PERCPU_"),
        ("VC_PERCPU_SIZE", guest_abi.VC_PERCPU_SIZE, ""),
        ("VC_PERCPU_TSS_OFFSET", guest_abi.VC_PERCPU_TSS_OFFSET, "the block follows the TSS"),
    ]


def _apic() -> list[Define]:
    return [
        ("X2APIC_ID", apic.X2APIC_ID, "MSR"),
        ("X2APIC_EOI", apic.X2APIC_EOI, "MSR"),
        ("X2APIC_ICR", apic.X2APIC_ICR, "MSR: destination in 63:32"),
        ("X2APIC_SELF_IPI", apic.X2APIC_SELF_IPI, "MSR"),
        ("XAPIC_BASE", apic.XAPIC_BASE, "default xAPIC page"),
        *_members(apic.ApicReg, "APIC_REG_"),
        *_members(apic.DeliveryMode, "APIC_DM_"),
        *_members(apic.Shorthand, "APIC_SH_"),
        ("APIC_ICR_MODE_SHIFT", apic.ICR_MODE_SHIFT, "bits 10:8"),
        ("APIC_ICR_LEVEL_ASSERT", apic.ICR_LEVEL_ASSERT, ""),
        ("APIC_ICR_TRIGGER_LEVEL", apic.ICR_TRIGGER_LEVEL, ""),
        ("APIC_ICR_SHORTHAND_SHIFT", apic.ICR_SHORTHAND_SHIFT, "bits 19:18"),
        ("X2APIC_ICR_DEST_SHIFT", apic.X2APIC_DEST_SHIFT, ""),
        ("; AP jump table sub-functions (SW_EXITINFO1 of SW_EXIT_AP_JUMP_TABLE)", "", ""),
        ("AP_JUMP_TABLE_SET", exits.AP_JUMP_TABLE_SET, ""),
        ("AP_JUMP_TABLE_GET", exits.AP_JUMP_TABLE_GET, ""),
    ]


def _fields(layout: Layout, prefix: str, size_name: str) -> list[Define]:
    d: list[Define] = [(f"{prefix}{f.name.upper()}", f.offset, f.doc) for f in layout]
    d.append((size_name, layout.size, f"bytes in the {layout.name}"))
    return d


def _guid_qwords(name: str, guid: object) -> list[Define]:
    """A GUID in its stored (Microsoft) byte order as two little-endian qwords."""
    raw = guid.bytes_le  # type: ignore[attr-defined]
    return [
        (f"{name}_LO", int.from_bytes(raw[:8], "little"), "dq _LO, _HI = the GUID's bytes"),
        (f"{name}_HI", int.from_bytes(raw[8:], "little"), ""),
    ]


def _segment16(*, code: bool, base: int) -> descriptors.Descriptor:
    """A 16-bit segment with real-mode limits (64 KiB, byte granular): the
    last protected-mode segments before CR0.PE is cleared (APM vol 2, "Leaving Long Mode")."""
    d = descriptors
    kind = d.TYPE_CODE | d.TYPE_READABLE if code else d.TYPE_WRITABLE
    return d.Descriptor(base, 0xFFFF, d.ATTR_P | d.ATTR_S | d.TYPE_ACCESSED | kind)


def _fw_abi() -> list[Define]:
    f = fw_abi
    gate_attr = descriptors.encode_gate64(0, 0)[5]
    d: list[Define] = [
        ("; guest-physical layout (identity-mapped)", "", ""),
        *[
            (f"FW_{name}", getattr(f, name), "")
            for name in (
                "BOOT_INFO_GPA",
                "PML4_GPA",
                "PDPT_GPA",
                "PT0_GPA",
                "PD_GPA",
                "PAGE_TABLES_GPA",
                "PAGE_TABLES_SIZE",
                "GHCB_GPA",
                "RUNTIME_GPA",
                "RUNTIME_MAX",
                "IST_STACK_TOP",
                "STACK_TOP",
                "FIRMWARE_RAM_END",
                "CBIT_CHECK_GPA",
                "CBIT_CHECK_PML4",
                "CBIT_CHECK_NONCE",
                "CBIT_CHECK_SHARED",
                "CBIT_CHECK_SIZE",
                "CBIT_CHECK_VA",
                "SECRET_GPA",
                "SECRET_SIZE",
                "PAYLOAD_GPA",
                "PAYLOAD_MAX",
                "RAM_MIN",
                "RAM_MAX",
                "DEVICE_WINDOW",
                "FLASH_TOP",
                "FIRMWARE_SIZE",
                "FIRMWARE_BASE",
                "PAYLOAD_HEADER_GPA",
                "SEL_CODE64",
                "SEL_DATA",
                "SEL_CODE32",
                "SEL_TSS",
                "SEL_CODE16",
                "SEL_DATA16",
                "IST_DF",
                "CBIT_POS_MIN",
                "CBIT_POS_MAX",
                "CONSOLE_PORT",
                "EXIT_PORT",
            )
        ],
        ("FW_DEBUGCON_PORT", f.DEBUGCON, ""),
        ("; several vCPUs: slots, the SMP mailbox, AP memory", "", ""),
        *[
            (f"FW_{name}", getattr(f, name), "")
            for name in (
                "MAX_VCPUS",
                "SMP_GPA",
                "AP_JUMP_TABLE_GPA",
                "PERCPU_GPA",
                "PERCPU_STRIDE",
                "AP_GHCB_GPA",
                "AP_STACKS_GPA",
                "AP_STACK_SIZE",
                "AP_POLL_SPINS",
                "AP_TIMEOUT_TSC",
            )
        ],
        ("FW_AP_START_MAGIC", f.AP_START_MAGIC, '"SXAP"'),
        *_fields(f.SMP, "SMP_", "SMP_SIZE"),
        ("; flat segments and gates (APM vol 2, 4.7-4.8)", "", ""),
        (
            "FW_GDT_CODE64",
            int.from_bytes(descriptors.code_segment(long=True).encode(), "little"),
            "",
        ),
        ("FW_GDT_CODE32", int.from_bytes(descriptors.code_segment().encode(), "little"), ""),
        ("FW_GDT_DATA", int.from_bytes(descriptors.data_segment().encode(), "little"), ""),
        (
            "FW_GDT_CODE16",
            int.from_bytes(_segment16(code=True, base=f.RUNTIME_GPA).encode(), "little"),
            "16-bit, base FW_RUNTIME_GPA, 64 KiB",
        ),
        (
            "FW_GDT_DATA16",
            int.from_bytes(_segment16(code=False, base=0).encode(), "little"),
            "16-bit, base 0, 64 KiB",
        ),
        (
            "FW_TSS_DESC_ATTR",
            descriptors.ATTR_P | descriptors.SystemType.TSS_AVAILABLE,
            "P | available 64-bit TSS",
        ),
        ("FW_GATE_ATTR", gate_attr, "P | DPL 0 | interrupt gate"),
        ("TSS64_SIZE", descriptors.TSS64_SIZE, ""),
        ("TSS64_RSP0", descriptors.TSS64_RSP0, ""),
        ("TSS64_IST1", descriptors.TSS64_IST1, ""),
        ("; payload header (one flash page at FW_PAYLOAD_HEADER_GPA)", "", ""),
        ("FW_PAYLOAD_MAGIC", f.PAYLOAD_MAGIC, '"SXPH"'),
        ("FW_PAYLOAD_HEADER_VERSION", f.PAYLOAD_HEADER_VERSION, ""),
        *_fields(f.PAYLOAD_HEADER, "PH_", "PAYLOAD_HEADER_SIZE"),
        ("; boot info (RDI at payload entry)", "", ""),
        ("BOOT_INFO_MAGIC", f.BOOT_INFO_MAGIC, '"SXBI"'),
        ("BOOT_INFO_VERSION", f.BOOT_INFO_VERSION, ""),
        *_fields(f.BOOT_INFO, "BI_", "BOOT_INFO_SIZE"),
        *_fields(f.MMAP_ENTRY, "MMAP_", "MMAP_ENTRY_SIZE"),
        ("MMAP_MAX", f.MMAP_MAX, ""),
        *_members(f.MemType, "MEM_"),
        ("; termination reasons of the firmware", "", ""),
        ("FW_REASON_SET", f.FW_REASON_SET, ""),
        *_members(f.FwReason, "FW_REASON_"),
        ("; OVMF footer GUID table (QEMU pc_system_parse_ovmf_flash)", "", ""),
        ("OVMF_FOOTER_END_OFFSET", ovmf.FOOTER_END_OFFSET, "table ends this far below 4 GiB"),
        ("OVMF_ENTRY_TRAILER_SIZE", ovmf.ENTRY_TRAILER_SIZE, "u16 length + GUID"),
        ("OVMF_SEV_ES_RESET_BLOCK_SIZE", ovmf.SEV_ES_RESET_BLOCK.size, "the AP reset address"),
        *_guid_qwords("OVMF_TABLE_FOOTER_GUID", ovmf.OVMF_TABLE_FOOTER_GUID),
        *_guid_qwords("OVMF_SEV_ES_RESET_BLOCK_GUID", ovmf.SEV_ES_RESET_BLOCK_GUID),
    ]
    return d


def _platform() -> list[Define]:
    return [
        ("; 16550 UART (PC16550D data sheet)", "", ""),
        ("UART_COM1", serial.COM1, ""),
        ("UART_THR", serial.RBR_THR, ""),
        ("UART_RBR", serial.RBR_THR, ""),
        ("UART_LCR", serial.LCR, ""),
        ("UART_LSR", serial.LSR, ""),
        ("UART_SCR", serial.SCR, "scratch register"),
        ("UART_LSR_DR", serial.LSR_DR, ""),
        ("UART_LSR_THRE", serial.LSR_THRE, "transmitter holding register (FIFO) empty"),
        ("UART_IER", serial.IER, ""),
        ("UART_FCR", serial.IIR_FCR, "FIFO control (write)"),
        ("UART_DLL", serial.RBR_THR, "divisor latch, low (LCR.DLAB = 1)"),
        ("UART_DLM", serial.IER, "divisor latch, high (LCR.DLAB = 1)"),
        ("UART_LCR_DLAB", serial.LCR_DLAB, ""),
        ("UART_LCR_WLEN8", serial.LCR_WLEN8, "8N1"),
        ("UART_FCR_ENABLE", serial.FCR_ENABLE, ""),
        ("UART_FCR_CLEAR_RX", serial.FCR_CLEAR_RX, ""),
        ("UART_FCR_CLEAR_TX", serial.FCR_CLEAR_TX, ""),
        ("UART_TX_FIFO_SIZE", serial.TX_FIFO_SIZE, "bytes a driver may write after THRE"),
        ("; QEMU isa-debugcon, the debug-exit port", "", ""),
        ("DEBUGCON_PORT", debugcon.DEBUGCON_PORT, ""),
        ("DEBUGCON_READBACK", debugcon.DEBUGCON_READBACK, "a read returns this"),
        ("DEBUG_EXIT_PORT", fw_abi.EXIT_PORT, "a write of N ends the run with status N"),
        ("; the MMIO test device (sevx86/hv/devices/mmio_test.py)", "", ""),
        ("MMIO_TEST_BASE", mmio_test.MMIO_TEST_BASE, ""),
        ("MMIO_TEST_SIZE", mmio_test.MMIO_TEST_SIZE, ""),
        ("MMIO_TEST_ID", mmio_test.MMIO_TEST_ID, '"SEVX"'),
        ("MMIO_TEST_REG_ID", mmio_test.REG_ID, ""),
        ("MMIO_TEST_REG_VERSION", mmio_test.REG_VERSION, ""),
        ("MMIO_TEST_REG_SCRATCH", mmio_test.REG_SCRATCH, ""),
        ("MMIO_TEST_REG_WRITES", mmio_test.REG_WRITES, ""),
        ("MMIO_TEST_REG_LAST_WRITE", mmio_test.REG_LAST_WRITE, ""),
        ("MMIO_TEST_REG_LAST_VALUE", mmio_test.REG_LAST_VALUE, ""),
    ]


FILES: dict[str, tuple[str, str, object]] = {
    # file name: (guard, source modules, builder)
    "ghcb.inc": ("SEVX86_GHCB_INC", "sevx86.arch.ghcb", _ghcb),
    "svm.inc": ("SEVX86_SVM_INC", "sevx86.arch.exits, sevx86.arch.vmcb", _svm),
    "msr.inc": ("SEVX86_MSR_INC", "sevx86.arch.msr", _msr),
    "x86.inc": (
        "SEVX86_X86_INC",
        "sevx86.arch.vectors, sevx86.arch.cr, sevx86.arch.paging",
        _x86,
    ),
    "cpuid.inc": ("SEVX86_CPUID_INC", "sevx86.arch.cpuid", _cpuid),
    "vc_abi.inc": ("SEVX86_VC_ABI_INC", "sevx86.asm.guest_abi", _vc_abi),
    "fw_abi.inc": (
        "SEVX86_FW_ABI_INC",
        "sevx86.asm.fw_abi, sevx86.arch.descriptors, sevx86.boot.ovmf",
        _fw_abi,
    ),
    "platform.inc": ("SEVX86_PLATFORM_INC", "sevx86.hv.devices", _platform),
    "apic.inc": ("SEVX86_APIC_INC", "sevx86.arch.apic, sevx86.arch.exits", _apic),
}


def _render(guard: str, source: str, defines: Iterable[Define]) -> str:
    lines = [
        f"; GENERATED from {source} by `python -m sevx86.asm.gen_includes`: do not edit.",
        "; Change the Python definition and regenerate; tests/guest_asm/test_includes.py",
        "; fails while this file and its source disagree.",
        f"%ifndef {guard}",
        f"%define {guard}",
    ]
    for name, value, comment in defines:
        if name.startswith(";"):
            lines.append("")
            lines.append(name)
            continue
        text = f"%define {name} {_hex(value) if isinstance(value, int) else value}"
        if comment:
            text = f"{text:<48} ; {comment}"
        lines.append(text)
    lines.append("%endif")
    return "\n".join(lines) + "\n"


def render_includes() -> dict[str, str]:
    """File name -> text of every generated include."""
    out = {}
    for name, (guard, source, build) in FILES.items():
        out[name] = _render(guard, source, build())  # type: ignore[operator]
    return out


def include_dir() -> Path:
    """guest_asm/include of this source tree (or of the installed package)."""
    from sevx86.asm.preprocess import guest_asm_dir

    base = guest_asm_dir()
    if base is None:
        raise FileNotFoundError("no guest_asm folder found next to sevx86")
    return base / "include"


def stale_files(folder: Path | None = None) -> list[str]:
    """Names of the includes whose checked-in text differs from a fresh render."""
    folder = folder or include_dir()
    stale = []
    for name, text in render_includes().items():
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sevx86.asm.gen_includes", description=__doc__)
    parser.add_argument("--out", type=Path, help="folder to write (default: guest_asm/include)")
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    folder = args.out or include_dir()
    if args.check:
        stale = stale_files(folder)
        for name in stale:
            print(f"stale: {folder / name}", file=sys.stderr)
        return 1 if stale else 0
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in render_includes().items():
        (folder / name).write_text(text, encoding="utf-8")
        print(folder / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
