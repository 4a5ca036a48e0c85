"""Segment descriptors, gate descriptors and the TSS, as the CPU reads them.

AMD APM vol 2 (24593) chapter 4 "Segmented Virtual Memory" (legacy segment
descriptors, system descriptor types, 64-bit system descriptors) and chapter 8
"Exceptions and Interrupts" (interrupt and trap gates, the IST), plus chapter
12 "Task Management" for the TSS fields used on a privilege change.

The VMCB/VMSA keep a segment's hidden attributes in a packed 12-bit form
(APM vol 2, appendix B, "VMCB Layout, State Save Area"): descriptor bits
47:40 then 55:52. ``Descriptor.attrib`` is that form, so a descriptor read
from a table can be stored in a VMSA segment field as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

DESCRIPTOR_SIZE = 8
GATE64_SIZE = 16
GATE32_SIZE = 8
IVT_ENTRY_SIZE = 4


class SystemType(IntEnum):
    """System-segment and gate types (S = 0), APM vol 2 table 4-5 / 4-6."""

    LDT = 0x2
    TSS16_AVAILABLE = 0x1
    TSS_AVAILABLE = 0x9  # 32-bit TSS, or the 64-bit TSS in long mode
    TSS_BUSY = 0xB
    CALL_GATE = 0xC
    TASK_GATE = 0x5
    INTERRUPT_GATE16 = 0x6
    TRAP_GATE16 = 0x7
    INTERRUPT_GATE = 0xE  # 32-bit, or the 64-bit gate in long mode
    TRAP_GATE = 0xF


# Attribute bits in the packed VMCB form.
ATTR_TYPE_MASK = 0x00F
ATTR_S = 0x010  # code/data (1) or system (0)
ATTR_DPL_SHIFT = 5
ATTR_P = 0x080
ATTR_AVL = 0x100
ATTR_L = 0x200  # 64-bit code segment
ATTR_DB = 0x400  # default operand size 32 (code) / big stack (data)
ATTR_G = 0x800  # limit in 4 KiB units

TYPE_CODE = 0x8  # in the type field of a code/data descriptor
TYPE_CONFORMING = 0x4  # code
TYPE_READABLE = 0x2  # code
TYPE_WRITABLE = 0x2  # data
TYPE_ACCESSED = 0x1


@dataclass(frozen=True)
class Descriptor:
    """A code/data or system segment descriptor, decoded."""

    base: int
    limit: int  # in bytes - 1, G already applied
    attrib: int  # packed VMCB form

    @property
    def type(self) -> int:
        return self.attrib & ATTR_TYPE_MASK

    @property
    def system(self) -> bool:
        return not self.attrib & ATTR_S

    @property
    def code(self) -> bool:
        return not self.system and bool(self.type & TYPE_CODE)

    @property
    def dpl(self) -> int:
        return (self.attrib >> ATTR_DPL_SHIFT) & 3

    @property
    def present(self) -> bool:
        return bool(self.attrib & ATTR_P)

    @property
    def long(self) -> bool:
        return bool(self.attrib & ATTR_L)

    @property
    def big(self) -> bool:
        return bool(self.attrib & ATTR_DB)

    @property
    def conforming(self) -> bool:
        return self.code and bool(self.type & TYPE_CONFORMING)

    @property
    def writable_data(self) -> bool:
        return not self.system and not self.code and bool(self.type & TYPE_WRITABLE)

    @classmethod
    def decode(cls, raw: bytes, high: bytes | None = None) -> Descriptor:
        """Decode 8 bytes (plus the upper 8 of a 64-bit system descriptor)."""
        lo = int.from_bytes(raw[:8], "little")
        limit = (lo & 0xFFFF) | ((lo >> 32) & 0xF0000)
        base = ((lo >> 16) & 0xFFFFFF) | ((lo >> 32) & 0xFF000000)
        attrib = ((lo >> 40) & 0xFF) | ((lo >> 44) & 0xF00)
        if attrib & ATTR_G:
            limit = (limit << 12) | 0xFFF
        if high is not None:
            base |= (int.from_bytes(high[:4], "little")) << 32
        return cls(base, limit, attrib)

    def encode(self) -> bytes:
        """The 8-byte legacy form (for tests that build GDTs)."""
        limit = self.limit >> 12 if self.attrib & ATTR_G else self.limit
        value = (limit & 0xFFFF) | ((self.base & 0xFFFFFF) << 16)
        value |= (self.attrib & 0xFF) << 40
        value |= ((limit >> 16) & 0xF) << 48
        value |= ((self.attrib >> 8) & 0xF) << 52
        value |= ((self.base >> 24) & 0xFF) << 56
        return value.to_bytes(8, "little")


def code_segment(*, dpl: int = 0, long: bool = False, big: bool = True) -> Descriptor:
    """A flat execute/read code segment (present, accessed)."""
    attrib = ATTR_P | ATTR_S | TYPE_CODE | TYPE_READABLE | TYPE_ACCESSED | (dpl << ATTR_DPL_SHIFT)
    attrib |= ATTR_G | (ATTR_L if long else 0) | (ATTR_DB if big and not long else 0)
    return Descriptor(0, 0xFFFF_FFFF, attrib)


def data_segment(*, dpl: int = 0) -> Descriptor:
    """A flat read/write data segment (present, accessed, 4 GiB, big)."""
    attrib = ATTR_P | ATTR_S | TYPE_WRITABLE | TYPE_ACCESSED | (dpl << ATTR_DPL_SHIFT)
    return Descriptor(0, 0xFFFF_FFFF, attrib | ATTR_G | ATTR_DB)


@dataclass(frozen=True)
class Gate:
    """An interrupt or trap gate from the IDT (or a real-mode IVT entry)."""

    selector: int
    offset: int
    type: int
    dpl: int
    present: bool
    ist: int = 0

    @property
    def interrupt(self) -> bool:
        """Interrupt gates clear RFLAGS.IF; trap gates leave it."""
        return self.type in (SystemType.INTERRUPT_GATE, SystemType.INTERRUPT_GATE16)

    @classmethod
    def decode32(cls, raw: bytes) -> Gate:
        lo = int.from_bytes(raw[:8], "little")
        offset = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000)
        attr = (lo >> 40) & 0xFF
        return cls((lo >> 16) & 0xFFFF, offset, attr & 0xF, (attr >> 5) & 3, bool(attr & 0x80))

    @classmethod
    def decode64(cls, raw: bytes) -> Gate:
        lo = int.from_bytes(raw[:8], "little")
        hi = int.from_bytes(raw[8:16], "little")
        offset = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | ((hi & 0xFFFF_FFFF) << 32)
        attr = (lo >> 40) & 0xFF
        ist = (lo >> 32) & 0x7
        return cls((lo >> 16) & 0xFFFF, offset, attr & 0xF, (attr >> 5) & 3, bool(attr & 0x80), ist)

    @classmethod
    def decode_ivt(cls, raw: bytes) -> Gate:
        """A real-mode IVT entry: offset then segment, 16 bits each."""
        offset = int.from_bytes(raw[0:2], "little")
        segment = int.from_bytes(raw[2:4], "little")
        return cls(segment, offset, SystemType.INTERRUPT_GATE16, 0, True)


def encode_gate64(
    selector: int, offset: int, *, dpl: int = 0, ist: int = 0, trap: bool = False
) -> bytes:
    """A 64-bit IDT gate (for tests and host-side set-up)."""
    gate_type = SystemType.TRAP_GATE if trap else SystemType.INTERRUPT_GATE
    attr = 0x80 | (dpl << 5) | gate_type
    lo = (offset & 0xFFFF) | (selector << 16) | (ist << 32) | (attr << 40)
    lo |= ((offset >> 16) & 0xFFFF) << 48
    hi = (offset >> 32) & 0xFFFF_FFFF
    return lo.to_bytes(8, "little") + hi.to_bytes(8, "little")


def encode_gate32(selector: int, offset: int, *, dpl: int = 0, trap: bool = False) -> bytes:
    gate_type = SystemType.TRAP_GATE if trap else SystemType.INTERRUPT_GATE
    attr = 0x80 | (dpl << 5) | gate_type
    lo = (offset & 0xFFFF) | (selector << 16) | (attr << 40) | (((offset >> 16) & 0xFFFF) << 48)
    return lo.to_bytes(8, "little")


# TSS fields used for stack switches (APM vol 2, 12.2.5 "64-Bit Task State
# Segment" and 12.2.2 legacy 32-bit TSS).
TSS64_RSP0 = 0x04  # RSP0, RSP1, RSP2: 8 bytes each
TSS64_IST1 = 0x24  # IST1..IST7: 8 bytes each
TSS32_ESP0 = 0x04  # ESPn at 4 + 8n, SSn at 8 + 8n
TSS64_SIZE = 0x68  # the 64-bit TSS without an I/O permission bitmap (limit 0x67)


def tss_descriptor(base: int, limit: int = TSS64_SIZE - 1, *, long_mode: bool = True) -> bytes:
    """An available TSS descriptor: 16 bytes in long mode (base bits 63:32 in the upper 8)."""
    low = Descriptor(base & 0xFFFF_FFFF, limit, ATTR_P | SystemType.TSS_AVAILABLE).encode()
    return low + (base >> 32).to_bytes(8, "little") if long_mode else low


def tss64_rsp_offset(cpl: int) -> int:
    return TSS64_RSP0 + 8 * cpl


def tss64_ist_offset(ist: int) -> int:
    return TSS64_IST1 + 8 * (ist - 1)


def tss32_stack_offsets(cpl: int) -> tuple[int, int]:
    """(ESPn offset, SSn offset) in a 32-bit TSS."""
    return TSS32_ESP0 + 8 * cpl, TSS32_ESP0 + 4 + 8 * cpl
