"""Fast access to the vCPU's registers through Unicorn's context blob.

Why: one ``reg_read`` costs about 1.5 us, and Unicorn 2.1's ``reg_write`` of
CS/SS/DS/ES in a 64-bit handle changes only the selector (no base, limit,
attributes or CPL). ``context_update`` copies QEMU's whole ``CPUX86State``
into a preallocated buffer in about 0.4 us, and ``context_restore`` copies it
back; in between, every register -- including the hidden segment state, the
CPL in ``hflags`` and the pending ``error_code`` of an exception -- is a plain
field at a fixed offset (measured on unicorn 2.1.4, docs/unicorn-notes.md).

The offsets are verified when a ``CpuContext`` is created: distinctive values
are written through Unicorn's public API and must appear at the expected
offsets. A Unicorn build with another layout is refused with a clear error
instead of silently corrupting guests.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from unicorn import Uc
from unicorn import x86_const as ux

from sevx86.arch.descriptors import ATTR_DB, ATTR_L
from sevx86.arch.layout import U32_MASK, U64_MASK

# uc_context header before CPUX86State.
_HDR = 40

# QEMU CPUX86State offsets inside the blob (unicorn 2.1.x, x86_64 target).
GPR = _HDR  # regs[16], architectural order rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15
EIP = _HDR + 128
EFLAGS = _HDR + 136  # without the lazily computed arithmetic flags
HFLAGS = _HDR + 176
SEGS = _HDR + 184  # SegmentCache[6]: ES CS SS DS FS GS, 24 bytes each
LDT = SEGS + 6 * 24
TR = LDT + 24
GDT = TR + 24
IDT = GDT + 24
CR = _HDR + 424  # cr[5]
EFER = _HDR + 592
MXCSR = _HDR + 816
XMM = _HDR + 824  # ZMMReg[], 64 bytes each
XMM_STRIDE = 64
SYSENTER_CS = _HDR + 4800
XCR0 = _HDR + 4904  # env->xcr0, set by the guest's XSETBV (no Unicorn register for it)
SYSENTER_ESP = _HDR + 4808
SYSENTER_EIP = _HDR + 4816
STAR = _HDR + 4824
VM_HSAVE = _HDR + 4832
LSTAR = _HDR + 4840
CSTAR = _HDR + 4848
FMASK = _HDR + 4856
KERNEL_GS_BASE = _HDR + 4864
TSC_AUX = _HDR + 4896
PAT = _HDR + 5280
ERROR_CODE = _HDR + 5384
EXCEPTION_IS_INT = ERROR_CODE + 4
DR = _HDR + 5400  # dr[8]
# QEMU's "exception in flight", used for its own #DF escalation. Unicorn never
# delivers, so it is never cleared: the engine resets it after each delivery,
# or the next unrelated #GP would arrive as #DF.
OLD_EXCEPTION = _HDR + 5496

SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS = range(6)
SEGMENT_ORDER = ("es", "cs", "ss", "ds", "fs", "gs")

# hflags bits (QEMU target/i386/cpu.h) that the segment loads maintain.
HF_CPL_MASK = 0x3
HF_INHIBIT_IRQ = 1 << 3  # interrupt shadow after STI / MOV SS
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
HF_PE = 1 << 7
HF_LMA = 1 << 14
HF_CS64 = 1 << 15

_SEG = struct.Struct("<IIQII")  # selector, pad, base, limit, flags
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")


def attrib_to_flags(attrib: int) -> int:
    """VMCB packed attributes -> QEMU's descriptor-high-word ``flags``."""
    return ((attrib & 0xFF) << 8) | ((attrib & 0xF00) << 12)


def flags_to_attrib(flags: int) -> int:
    return ((flags >> 8) & 0xFF) | ((flags >> 12) & 0xF00)


@dataclass(frozen=True)
class SegmentState:
    """A segment register with its hidden part (VMCB attribute form)."""

    selector: int
    base: int
    limit: int
    attrib: int

    @property
    def dpl(self) -> int:
        return (self.attrib >> 5) & 3


class ContextLayoutError(RuntimeError):
    """This Unicorn build's CPU state layout is not the one sevx86 knows."""


class CpuContext:
    """A reusable snapshot buffer bound to one Unicorn instance."""

    def __init__(self, uc: Uc):
        self.uc = uc
        self._ctx = uc.context_save()
        self.size = self._ctx.size
        self._addr = self._ctx.context.value
        self.buf = (ctypes.c_char * self.size).from_address(self._addr)
        self.view = memoryview(self.buf).cast("B")
        verify_layout(uc, self)

    # -- moving state between Unicorn and the buffer ----------------------------
    # ``valid`` says the buffer equals the live CPU. Whoever lets Unicorn run
    # or changes its state by another route (reg_write, msr_write) must call
    # invalidate(); within one event the engine then copies the state once.
    valid = False

    def load(self) -> CpuContext:
        """Make the buffer hold the live CPU state."""
        if not self.valid:
            self.uc.context_update(self._ctx)
            self.valid = True
        return self

    def invalidate(self) -> None:
        self.valid = False

    def store(self) -> None:
        """Copy the buffer back into the live CPU (the two are then equal)."""
        self.uc.context_restore(self._ctx)
        self.valid = True

    def copy_bytes(self) -> bytes:
        return bytes(self.view)

    def restore_bytes(self, data: bytes) -> None:
        self.view[:] = data
        self.store()

    # -- field access (on the buffer) -------------------------------------------
    def u64(self, off: int) -> int:
        return _Q.unpack_from(self.view, off)[0]

    def set_u64(self, off: int, value: int) -> None:
        _Q.pack_into(self.view, off, value & U64_MASK)

    def u32(self, off: int) -> int:
        return _I.unpack_from(self.view, off)[0]

    def set_u32(self, off: int, value: int) -> None:
        _I.pack_into(self.view, off, value & U32_MASK)

    def gpr(self, index: int) -> int:
        return self.u64(GPR + 8 * index)

    def gprs(self) -> tuple[int, ...]:
        return struct.unpack_from("<16Q", self.view, GPR)

    def set_gpr(self, index: int, value: int) -> None:
        self.set_u64(GPR + 8 * index, value)

    @property
    def rip(self) -> int:
        return self.u64(EIP)

    @property
    def hflags(self) -> int:
        return self.u32(HFLAGS)

    @property
    def cpl(self) -> int:
        return self.u32(HFLAGS) & HF_CPL_MASK

    @property
    def error_code(self) -> int:
        return self.u32(ERROR_CODE)

    def cr(self, n: int) -> int:
        return self.u64(CR + 8 * n)

    @property
    def efer(self) -> int:
        return self.u64(EFER)

    def dr(self, n: int) -> int:
        return self.u64(DR + 8 * n)

    def segment(self, index: int) -> SegmentState:
        return SegmentState(*self.table_fields(SEGS + 24 * index))

    def table(self, off: int) -> SegmentState:
        """LDT, TR, GDT or IDT (GDT/IDT have no selector or attributes)."""
        return SegmentState(*self.table_fields(off))

    def segment_fields(self, index: int) -> tuple[int, int, int, int]:
        """``segment`` as a plain (selector, base, limit, attrib) tuple."""
        return self.table_fields(SEGS + 24 * index)

    def table_fields(self, off: int) -> tuple[int, int, int, int]:
        """``table`` as a plain tuple: interrupt delivery copies these into its
        own segment type on every #VC, and a frozen dataclass is slow to build."""
        sel, _pad, base, limit, flags = _SEG.unpack_from(self.view, off)
        return sel & 0xFFFF, base, limit, flags_to_attrib(flags)

    def set_table(self, off: int, seg: SegmentState) -> None:
        _SEG.pack_into(
            self.view, off, seg.selector, 0, seg.base, seg.limit, attrib_to_flags(seg.attrib)
        )

    def set_segment(self, index: int, seg: SegmentState) -> None:
        self.set_table(SEGS + 24 * index, seg)

    def xmm(self, n: int) -> int:
        lo, hi = struct.unpack_from("<QQ", self.view, XMM + XMM_STRIDE * n)
        return lo | (hi << 64)

    def set_xmm(self, n: int, value: int) -> None:
        struct.pack_into(
            "<QQ",
            self.view,
            XMM + XMM_STRIDE * n,
            value & U64_MASK,
            (value >> 64) & U64_MASK,
        )

    # -- derived -----------------------------------------------------------------
    def recompute_hflags(self) -> None:
        """Redo what QEMU's segment-cache load derives from CS and SS.

        CPL is SS.DPL; in long mode a CS with L=1 makes the CPU 64-bit (and
        32-bit stack/ADDSEG irrelevant); otherwise CS.D and SS.B give the
        default operand and stack sizes.
        """
        h = self.hflags
        cs = self.segment(SEG_CS)
        ss = self.segment(SEG_SS)
        if h & HF_LMA and cs.attrib & ATTR_L:
            h |= HF_CS32 | HF_SS32 | HF_CS64
            h &= ~HF_ADDSEG
        else:
            h &= ~(HF_CS32 | HF_CS64 | HF_SS32)
            if cs.attrib & ATTR_DB:
                h |= HF_CS32
            if ss.attrib & ATTR_DB:
                h |= HF_SS32
        # The CPL is SS.DPL; a NULL SS loaded by a 64-bit interrupt carries the
        # new CPL in its DPL field, as QEMU's own delivery loads it.
        h = (h & ~HF_CPL_MASK) | (ss.dpl if h & HF_PE else 0)
        self.set_u32(HFLAGS, h)


def verify_layout(uc: Uc, ctx: CpuContext) -> None:
    """Check the offsets above on this Unicorn build (values restored after)."""
    ctx.invalidate()
    saved = ctx.load().copy_bytes()
    probes = [
        (ux.UC_X86_REG_RAX, 0x5EC0_0000_0000_0A01, GPR),
        (ux.UC_X86_REG_R15, 0x5EC0_0000_0000_0A0F, GPR + 15 * 8),
        (ux.UC_X86_REG_RIP, 0x5EC0_0000_0000_0B01, EIP),
        (ux.UC_X86_REG_FS_BASE, 0x5EC0_0000_0000_0C04, SEGS + 24 * SEG_FS + 8),
        (ux.UC_X86_REG_CR3, 0x0000_0000_5EC0_D000, CR + 3 * 8),
        (ux.UC_X86_REG_DR7, 0x0000_0000_0000_0455, DR + 7 * 8),
    ]
    try:
        for reg, value, _off in probes:
            uc.reg_write(reg, value)
        uc.reg_write(ux.UC_X86_REG_XMM3, 0x5EC0_0000_0000_0E03_0000_0000_0000_0E33)
        uc.msr_write(0xC000_0082, 0x5EC0_0000_0000_0F82)  # LSTAR
        ctx.invalidate()
        ctx.load()
        bad = [hex(off) for _reg, value, off in probes if ctx.u64(off) != value]
        if ctx.xmm(3) != 0x5EC0_0000_0000_0E03_0000_0000_0000_0E33:
            bad.append("xmm")
        if ctx.u64(LSTAR) != 0x5EC0_0000_0000_0F82:
            bad.append("lstar")
        if bad:
            import unicorn

            raise ContextLayoutError(
                f"unicorn {unicorn.__version__}: CPU state layout differs at {', '.join(bad)}; "
                "sevx86 needs the unicorn 2.1 line"
            )
    finally:
        ctx.restore_bytes(saved)
