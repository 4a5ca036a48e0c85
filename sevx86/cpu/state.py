"""Architectural register state <-> the VMSA layout.

Every automatic exit of an SEV-ES guest writes *all* of the vCPU's state into
its VMSA (AMD APM vol 2, 15.35.4 "VMSA" / table B-4), and VMRUN loads it all
back. In modes ``none`` and ``sev`` the same layout, in plaintext, is what the
host reads and writes as the guest's registers (KVM keeps the GPRs in its own
memory and the rest in the VMCB save area; the content is the same).

The copy goes through Unicorn's context blob (``sevx86.cpu.context``): one
table of (VMSA field, blob offset) pairs, applied in bulk. RFLAGS is the one
register read and written through Unicorn's API, because QEMU keeps the
arithmetic flags lazily outside ``eflags``.
"""

from __future__ import annotations

import struct

from unicorn import Uc
from unicorn.x86_const import UC_X86_REG_RFLAGS

from sevx86.arch.vmsa import VMSA, VMSA_GPR_NAMES, VMSA_SIZE
from sevx86.cpu import context as C
from sevx86.cpu.context import CpuContext, SegmentState

# (VMSA field, blob offset, size) for values copied verbatim.
_DIRECT: list[tuple[str, int, int]] = [
    *((name, C.GPR + 8 * i, 8) for i, name in enumerate(VMSA_GPR_NAMES)),
    ("rip", C.EIP, 8),
    ("cr0", C.CR + 0, 8),
    ("cr2", C.CR + 16, 8),
    ("cr3", C.CR + 24, 8),
    ("cr4", C.CR + 32, 8),
    ("efer", C.EFER, 8),
    ("dr0", C.DR + 0, 8),
    ("dr1", C.DR + 8, 8),
    ("dr2", C.DR + 16, 8),
    ("dr3", C.DR + 24, 8),
    ("dr6", C.DR + 48, 8),
    ("dr7", C.DR + 56, 8),
    ("star", C.STAR, 8),
    ("lstar", C.LSTAR, 8),
    ("cstar", C.CSTAR, 8),
    ("sfmask", C.FMASK, 8),
    ("kernel_gs_base", C.KERNEL_GS_BASE, 8),
    ("sysenter_cs", C.SYSENTER_CS, 8),
    ("sysenter_esp", C.SYSENTER_ESP, 8),
    ("sysenter_eip", C.SYSENTER_EIP, 8),
    ("g_pat", C.PAT, 8),
    ("tsc_aux", C.TSC_AUX, 4),
    ("mxcsr", C.MXCSR, 4),
    *((f"xmm{i}", C.XMM + C.XMM_STRIDE * i, 16) for i in range(16)),
]
_COPIES = [(VMSA[name].offset, off, size) for name, off, size in _DIRECT]

# Segment registers: VMSA name -> blob offset of the SegmentCache.
_SEGMENTS: list[tuple[str, int]] = [
    *((name, C.SEGS + 24 * i) for i, name in enumerate(C.SEGMENT_ORDER)),
    ("ldtr", C.LDT),
    ("tr", C.TR),
    ("gdtr", C.GDT),
    ("idtr", C.IDT),
]
_VMSA_SEG = struct.Struct("<HHIQ")  # selector, attrib, limit, base (APM table B-4)
_SEG_OFFSETS = [(VMSA[f"{name}.selector"].offset, off) for name, off in _SEGMENTS]
_CPL = VMSA["cpl"].offset
_RFLAGS = VMSA["rflags"]


def capture(uc: Uc, ctx: CpuContext, out: bytearray | None = None) -> bytearray:
    """The vCPU's current state as a VMSA page (plaintext)."""
    page = out if out is not None else bytearray(VMSA_SIZE)
    ctx.load()
    view = ctx.view
    for dst, src, size in _COPIES:
        page[dst : dst + size] = view[src : src + size]
    for dst, src in _SEG_OFFSETS:
        seg = ctx.table(src)
        _VMSA_SEG.pack_into(page, dst, seg.selector, seg.attrib, seg.limit, seg.base)
    page[_CPL] = ctx.cpl
    _RFLAGS.write(page, uc.reg_read(UC_X86_REG_RFLAGS))
    return page


def apply(uc: Uc, ctx: CpuContext, page: bytes | bytearray | memoryview) -> None:
    """Load every register from a VMSA page into the vCPU.

    CPL and the mode bits in QEMU's hflags are recomputed from the loaded CS
    and SS, as the segment-cache load on VMRUN does.
    """
    ctx.load()
    view = ctx.view
    for src, dst, size in _COPIES:
        view[dst : dst + size] = page[src : src + size]
    for src, dst in _SEG_OFFSETS:
        selector, attrib, limit, base = _VMSA_SEG.unpack_from(page, src)
        ctx.set_table(dst, SegmentState(selector, base, limit, attrib))
    # EFER.LMA and CR0.PE feed the mode bits; keep hflags in step with them.
    hflags = ctx.hflags & ~(C.HF_LMA | C.HF_PE)
    if ctx.efer & (1 << 10):
        hflags |= C.HF_LMA
    if ctx.cr(0) & 1:
        hflags |= C.HF_PE
    ctx.set_u32(C.HFLAGS, hflags)
    ctx.recompute_hflags()
    ctx.store()
    uc.reg_write(UC_X86_REG_RFLAGS, _RFLAGS.read(page))


class RegisterFile:
    """Guest registers by VMSA field name, over a plaintext VMSA-layout buffer.

    What a non-SEV-ES host sees at an exit (``regs.rax``, ``regs["rip"]``);
    writes are loaded back into the vCPU at the next VMRUN.
    """

    __slots__ = ("_page", "_dirty")

    def __init__(self, page: bytearray):
        object.__setattr__(self, "_page", page)
        object.__setattr__(self, "_dirty", False)

    def __getitem__(self, name: str) -> int:
        return VMSA[name].read(self._page)

    def __setitem__(self, name: str, value: int) -> None:
        VMSA[name].write(self._page, value)
        object.__setattr__(self, "_dirty", True)

    def __getattr__(self, name: str) -> int:
        if name in VMSA:
            return VMSA[name].read(self._page)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: int) -> None:
        if name not in VMSA:
            raise AttributeError(f"no register {name!r}")
        self[name] = value

    @property
    def dirty(self) -> bool:
        return self._dirty

    def raw(self) -> bytes:
        return bytes(self._page)
