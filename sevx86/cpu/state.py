"""Architectural register state <-> the VMSA layout.

Every automatic exit of an SEV-ES guest writes *all* of the vCPU's state into
its VMSA (AMD APM vol 2, 15.35.4 "VMSA" / table B-4), and VMRUN loads it all
back. In modes ``none`` and ``sev`` the same layout, in plaintext, is what the
host reads and writes as the guest's registers (KVM keeps the GPRs in its own
memory and the rest in the VMCB save area; the content is the same).

The copy goes through Unicorn's context blob (``sevx86.cpu.context``). It is
on the hot path of every world switch, so the field table below is compiled
once into one ``struct`` that gathers every value from the blob in a single
call, and a few structs that scatter them into the VMSA's contiguous runs.
RFLAGS is the one register read and written through Unicorn's API, because
QEMU keeps the arithmetic flags lazily outside ``eflags``.
"""

from __future__ import annotations

import operator
import struct

from unicorn import Uc
from unicorn.x86_const import UC_X86_REG_RFLAGS

from sevx86.arch.cr import Cr0
from sevx86.arch.msr import Efer
from sevx86.arch.vmsa import VMSA, VMSA_GPR_NAMES, VMSA_SIZE
from sevx86.cpu import context as C
from sevx86.cpu.context import CpuContext, SegmentState

# Scalar fields: (VMSA field, blob offset, struct code in the blob).
_SCALARS: list[tuple[str, int, str]] = [
    *((name, C.GPR + 8 * i, "Q") for i, name in enumerate(VMSA_GPR_NAMES)),
    ("rip", C.EIP, "Q"),
    ("cr0", C.CR + 0, "Q"),
    ("cr2", C.CR + 16, "Q"),
    ("cr3", C.CR + 24, "Q"),
    ("cr4", C.CR + 32, "Q"),
    ("efer", C.EFER, "Q"),
    ("dr0", C.DR + 0, "Q"),
    ("dr1", C.DR + 8, "Q"),
    ("dr2", C.DR + 16, "Q"),
    ("dr3", C.DR + 24, "Q"),
    ("dr6", C.DR + 48, "Q"),
    ("dr7", C.DR + 56, "Q"),
    ("star", C.STAR, "Q"),
    ("lstar", C.LSTAR, "Q"),
    ("cstar", C.CSTAR, "Q"),
    ("sfmask", C.FMASK, "Q"),
    ("kernel_gs_base", C.KERNEL_GS_BASE, "Q"),
    ("sysenter_cs", C.SYSENTER_CS, "Q"),
    ("sysenter_esp", C.SYSENTER_ESP, "Q"),
    ("sysenter_eip", C.SYSENTER_EIP, "Q"),
    ("g_pat", C.PAT, "Q"),
    ("tsc_aux", C.TSC_AUX, "I"),
    ("mxcsr", C.MXCSR, "I"),
    ("xcr0", C.XCR0, "Q"),  # VMSA 0x3E8: how a non-SEV-ES host learns the XSETBV value
]
# Segment registers: VMSA name -> blob offset of QEMU's SegmentCache
# (u32 selector, pad, u64 base, u32 limit, u32 flags).
_SEGMENTS: list[tuple[str, int]] = [
    *((name, C.SEGS + 24 * i) for i, name in enumerate(C.SEGMENT_ORDER)),
    ("ldtr", C.LDT),
    ("tr", C.TR),
    ("gdtr", C.GDT),
    ("idtr", C.IDT),
]
_XMM = [(f"xmm{i}", C.XMM + C.XMM_STRIDE * i) for i in range(16)]

_CODE_SIZE = {"Q": 8, "I": 4, "H": 2, "B": 1}


def _compile_gather() -> tuple[struct.Struct, list[str]]:
    """One struct reading every needed blob field, and the value names in order."""
    items: list[tuple[int, str, str]] = []  # (offset, code, value name)
    for name, off, code in _SCALARS:
        items.append((off, code, name))
    for name, off in _SEGMENTS:
        items += [
            (off, "I", f"{name}.selector"),
            (off + 8, "Q", f"{name}.base"),
            (off + 16, "I", f"{name}.limit"),
            (off + 20, "I", f"{name}.flags"),
        ]
    for name, off in _XMM:
        items += [(off, "Q", f"{name}.lo"), (off + 8, "Q", f"{name}.hi")]
    items.append((C.HFLAGS, "I", "hflags"))
    items.sort()
    fmt, pos, names = "<", 0, []
    for off, code, name in items:
        if off < pos:
            raise AssertionError(f"blob fields overlap at {off:#x}")
        if off > pos:
            fmt += f"{off - pos}x"
        fmt += code
        pos = off + _CODE_SIZE[code]
        names.append(name)
    return struct.Struct(fmt), names


_GATHER, _GATHER_NAMES = _compile_gather()
_INDEX = {name: i for i, name in enumerate(_GATHER_NAMES)}


def _vmsa_values() -> list[tuple[int, int, str, str]]:
    """(VMSA offset, size, struct code, value name) of every captured VMSA field."""
    out: list[tuple[int, int, str, str]] = []
    for name, _off, _code in _SCALARS:
        f = VMSA[name]
        out.append((f.offset, f.size, {8: "Q", 4: "I"}[f.size], name))
    for name, _off in _SEGMENTS:
        for part, code in (("selector", "H"), ("attrib", "H"), ("limit", "I"), ("base", "Q")):
            f = VMSA[f"{name}.{part}"]
            out.append((f.offset, f.size, code, f"{name}.{part}"))
    for name, _off in _XMM:
        f = VMSA[name]
        out.append((f.offset, 8, "Q", f"{name}.lo"))
        out.append((f.offset + 8, 8, "Q", f"{name}.hi"))
    out.append((VMSA["cpl"].offset, 1, "B", "cpl"))
    out.append((VMSA["rflags"].offset, 8, "Q", "rflags"))
    return sorted(out)


def _compile_scatter() -> list[tuple[int, struct.Struct, list[str]]]:
    """Contiguous VMSA runs: (offset, struct, value names). Gaps keep their bytes."""
    runs: list[tuple[int, struct.Struct, list[str]]] = []
    start = end = -1
    fmt, names = "<", []
    for off, size, code, name in _vmsa_values():
        if off != end:
            if names:
                runs.append((start, struct.Struct(fmt), names))
            start, fmt, names = off, "<", []
        fmt += code
        names.append(name)
        end = off + size
    runs.append((start, struct.Struct(fmt), names))
    return runs


_SCATTER = _compile_scatter()
_RFLAGS = VMSA["rflags"]

# Values computed in Python go after the gathered ones, at fixed indices.
_COMPUTED = [f"{name}.attrib" for name, _ in _SEGMENTS] + ["cpl", "rflags"]
_ALL_NAMES = _GATHER_NAMES + _COMPUTED
_POS = {name: i for i, name in enumerate(_ALL_NAMES)}
_SEG_FLAGS = [_POS[f"{name}.flags"] for name, _ in _SEGMENTS]
_SEG_SELECTORS = [_POS[f"{name}.selector"] for name, _ in _SEGMENTS]
_HFLAGS_POS = _POS["hflags"]
_PICKERS = [
    (off, packer, operator.itemgetter(*[_POS[n] for n in names])) for off, packer, names in _SCATTER
]


def capture(uc: Uc, ctx: CpuContext, out: bytearray | None = None) -> bytearray:
    """The vCPU's current state as a VMSA page (plaintext).

    Fields sevx86 does not model (SEV_FEATURES, VMPL, ...) keep
    whatever ``out`` held: pass the previous VMSA to preserve them.
    """
    page = out if out is not None else bytearray(VMSA_SIZE)
    ctx.load()
    vals = list(_GATHER.unpack_from(ctx.view, 0))
    for i in _SEG_SELECTORS:
        vals[i] &= 0xFFFF
    # QEMU keeps descriptor bits 47:40 and 55:52 in place; the VMSA packs them.
    vals += [((vals[i] >> 8) & 0xFF) | ((vals[i] >> 12) & 0xF00) for i in _SEG_FLAGS]
    vals.append(vals[_HFLAGS_POS] & C.HF_CPL_MASK)
    vals.append(uc.reg_read(UC_X86_REG_RFLAGS))
    for off, packer, pick in _PICKERS:
        picked = pick(vals)
        packer.pack_into(page, off, *(picked if isinstance(picked, tuple) else (picked,)))
    return page


def apply(
    uc: Uc,
    ctx: CpuContext,
    page: bytes | bytearray | memoryview,
    *,
    skip: frozenset[str] = frozenset(),
) -> None:
    """Load every register from a VMSA page into the vCPU.

    CPL and the mode bits in QEMU's hflags are recomputed from the loaded CS
    and SS, as the segment-cache load on VMRUN does. ``skip`` names VMSA
    fields (scalars, segment registers, ``rflags``) to leave alone: the first
    entry loads those through Unicorn's own VMRUN (sevx86.cpu.svm).
    """
    ctx.load()
    view = ctx.view
    for name, off, _code in _SCALARS:
        if name in skip:
            continue
        f = VMSA[name]
        view[off : off + f.size] = page[f.offset : f.offset + f.size]
    for name, off in _SEGMENTS:
        if name in skip:
            continue
        selector, attrib, limit, base = struct.unpack_from(
            "<HHIQ", page, VMSA[f"{name}.selector"].offset
        )
        ctx.set_table(off, SegmentState(selector, base, limit, attrib))
    for name, off in _XMM:
        f = VMSA[name]
        view[off : off + 16] = page[f.offset : f.offset + 16]
    if not skip:
        # EFER.LMA and CR0.PE feed the mode bits; keep hflags in step with them.
        # (With fields skipped the mode is not the page's: leave it to VMRUN.)
        hflags = ctx.hflags & ~(C.HF_LMA | C.HF_PE)
        if ctx.efer & Efer.LMA:
            hflags |= C.HF_LMA
        if ctx.cr(0) & Cr0.PE:
            hflags |= C.HF_PE
        ctx.set_u32(C.HFLAGS, hflags)
        ctx.recompute_hflags()
    ctx.store()
    if "rflags" not in skip:
        uc.reg_write(UC_X86_REG_RFLAGS, _RFLAGS.read(page))
    ctx.invalidate()


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
