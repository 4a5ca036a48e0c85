"""A ready-made guest environment, built by the host, for running guest code in tests.

Firmware normally builds its GDT, IDT and page tables itself (our firmware/
does). To test a #VC handler or a few instructions, that is a lot of code to
repeat, so the harness does it host-side and hands the program a ready
environment -- the way a loader or a unit-test rig would:

* 64-bit long mode (or 32-bit protected mode), CPL 0, interrupts off;
* a GDT with flat ring-0 and ring-3 code and data and a TSS (RSP0 and IST1);
* an IDT whose gates point at labels of the program (``handlers``);
* page tables identity-mapping the guest's RAM with the C-bit set (2 MiB
  pages; the first 2 MiB in 4 KiB pages so single pages can be shared);
* a stack, and the program at ``CODE_BASE`` entered at its ``start`` label.

Several vCPUs (``GuestConfig(vcpus=N)``): each vCPU gets its own TSS (and
TSS descriptor), its own ring-0 and IST1 stacks, and a launch VMSA of its
own: vCPU 0 enters at ``entry``, the APs at ``ap_entry`` (their "AP reset
address"; ``entry`` if not given), each with its index in RDI and TSC_AUX.
Right after each TSS sits the #VC handler's per-vCPU block
(``sevx86.asm.guest_abi.VcPercpu``; programs built with ``%define
VC_PERCPU`` use it), filled with the vCPU's GHCB from ``ghcbs`` if given.

Every image goes through the launch (LAUNCH_UPDATE_DATA), so in the
encrypted modes it is measured and encrypted like any guest memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sevx86.arch.cr import Cr0, Cr4, Rflags
from sevx86.arch.descriptors import (
    ATTR_P,
    TSS64_SIZE,
    SystemType,
    code_segment,
    data_segment,
    tss32_stack_offsets,
    tss64_ist_offset,
    tss64_rsp_offset,
    tss_descriptor,
)
from sevx86.arch.msr import Efer
from sevx86.arch.vmsa import VMSA
from sevx86.asm import Program, assemble
from sevx86.config import GuestConfig, GuestMode
from sevx86.machine import Machine
from sevx86.memory.dram import PhysicalMemory
from sevx86.memory.pagetables import PageTableBuilder
from sevx86.sp.launch import GuestLaunch
from sevx86.sp.policy import GuestPolicy
from sevx86.sp.secure_processor import SecureProcessor
from sevx86.trace.events import Tracer

GDT_BASE = 0x1000
IDT_BASE = 0x2000
TSS_BASE = 0x3000
TABLES_BASE = 0x10000
TABLES_SIZE = 0x10000
STACK_TOP = 0x80000  # ring-0 stack, grows down
IST1_TOP = 0x90000  # IST1 stack (e.g. for #DF)
USER_STACK_TOP = 0xA0000
CODE_BASE = 0x100000

# GDT selectors.
KERNEL_CS = 0x08
KERNEL_DS = 0x10
KERNEL_CS32 = 0x18
USER_DS = 0x23  # index 4, RPL 3
USER_CS = 0x2B  # index 5, RPL 3
TSS_SELECTOR = 0x30  # 16-byte system descriptor in long mode
TSS_LIMIT = 0x67

# Several vCPUs: vCPU n's TSS and #VC block at TSS_BASE + n * PERCPU_STRIDE,
# its TSS descriptor at TSS_SELECTOR + 16 n; AP n's stacks below AP_STACKS_TOP.
PERCPU_STRIDE = 0x100
MAX_VCPUS = 16
AP_STACKS_TOP = 0x1F0000
AP_STACK_SIZE = 0x8000  # ring-0 stack above, IST1 stack in the lower half


def percpu_base(index: int) -> int:
    """GPA of vCPU ``index``'s TSS; its #VC block follows at ``VC_PERCPU_TSS_OFFSET``."""
    return TSS_BASE + index * PERCPU_STRIDE


def stacks(index: int) -> tuple[int, int]:
    """(ring-0 stack top, IST1 stack top) of vCPU ``index``."""
    if index == 0:
        return STACK_TOP, IST1_TOP
    top = AP_STACKS_TOP - (index - 1) * AP_STACK_SIZE
    return top, top - AP_STACK_SIZE // 2


def _gdt(long_mode: bool, vcpus: int = 1) -> bytes:
    entries = [
        bytes(8),
        code_segment(dpl=0, long=long_mode).encode(),
        data_segment(dpl=0).encode(),
        code_segment(dpl=0, long=False).encode(),
        data_segment(dpl=3).encode(),
        code_segment(dpl=3, long=long_mode).encode(),
    ]
    # An available TSS per vCPU; its 16-byte long-mode form in either mode
    # (the upper half reads as a null descriptor to a 32-bit guest).
    for index in range(vcpus):
        entries.append(tss_descriptor(percpu_base(index), TSS_LIMIT))
    return b"".join(entries)


def _gate(offset: int, *, long_mode: bool, dpl: int = 0, ist: int = 0) -> bytes:
    from sevx86.arch.descriptors import encode_gate32, encode_gate64

    if long_mode:
        return encode_gate64(KERNEL_CS, offset, dpl=dpl, ist=ist)
    return encode_gate32(KERNEL_CS32, offset, dpl=dpl)


@dataclass
class GuestSpec:
    """What to build: the program and how its vectors are wired."""

    source: str
    bits: int = 64
    handlers: Mapping[int, str] = field(default_factory=dict)  # vector -> label
    ist: Mapping[int, int] = field(default_factory=dict)  # vector -> IST index
    user_gates: Iterable[int] = ()  # vectors callable from ring 3 (INT n)
    user_pages: bool = False  # map all RAM user-accessible (for ring-3 tests)
    shared_pages: Iterable[int] = ()  # GPAs of 4 KiB pages mapped with C=0
    mmio: Iterable[int] = ()  # GPAs (rounded to 2 MiB) identity-mapped with C=0 for devices
    entry: str = "start"
    ap_entry: str | None = None  # where APs start (their AP reset address); default: entry
    ghcbs: Mapping[int, int] = field(default_factory=dict)  # vCPU -> its GHCB GPA (shared)
    name: str = "<test>"
    include_paths: tuple[Path, ...] = ()
    defines: Mapping[str, int | str] = field(default_factory=dict)  # as %define NAME value


def build_tables(
    config: GuestConfig,
    shared_pages: Iterable[int],
    mmio: Iterable[int] = (),
    *,
    user: bool = False,
) -> tuple[int, bytes]:
    """(CR3, image of the table pool) identity-mapping RAM, C-bit on all but ``shared_pages``."""
    scratch = PhysicalMemory(
        GuestConfig(mode=GuestMode.NONE, memory=config.memory, cbitpos=config.cbitpos)
    )
    builder = PageTableBuilder(scratch, TABLES_BASE, TABLES_SIZE, config.c_bit)
    shared = set(shared_pages)
    # Supervisor pages unless asked: ring-3 tests ask for user pages everywhere.
    builder.map(0, 0, 0x200000, private=True, user=user)
    for gpa in shared:
        if gpa >= 0x200000:
            raise ValueError(f"shared page {gpa:#x}: only the first 2 MiB can be shared")
        builder.map(gpa, gpa, 0x1000, private=False, user=user)
    top = max(config.memory, 0x200000)
    if top > 0x200000:
        builder.map(
            0x200000,
            0x200000,
            (top - 0x200000 + 0x1FFFFF) & ~0x1FFFFF,
            page_size=0x200000,
            user=user,
        )
    for gpa in sorted({g & ~0x1FFFFF for g in mmio}):
        # Device windows live outside RAM and are shared (C=0), as guests map MMIO.
        builder.map(gpa, gpa, 0x200000, page_size=0x200000, private=False, nx=True)
    return builder.cr3, scratch.read_private(TABLES_BASE, TABLES_SIZE)


def initial_state(
    program: Program, spec: GuestSpec, cr3: int, index: int = 0, vcpus: int = 1
) -> bytearray:
    """The VMSA page vCPU ``index`` starts from."""
    page = VMSA.new()
    long_mode = spec.bits == 64
    entry = spec.entry if index == 0 else (spec.ap_entry or spec.entry)
    cs = code_segment(dpl=0, long=long_mode)
    ds = data_segment(dpl=0)
    values: dict[str, int] = {
        "cs.selector": KERNEL_CS if long_mode else KERNEL_CS32,
        "cs.attrib": cs.attrib,
        "cs.limit": cs.limit,
        "cs.base": 0,
        "gdtr.base": GDT_BASE,
        "gdtr.limit": len(_gdt(long_mode, vcpus)) - 1,
        "idtr.base": IDT_BASE,
        "idtr.limit": (256 * (16 if long_mode else 8)) - 1,
        "tr.selector": TSS_SELECTOR + 16 * index,
        "tr.base": percpu_base(index),
        "tr.limit": TSS_LIMIT,
        "tr.attrib": ATTR_P | SystemType.TSS_BUSY,  # LTR marks it busy
        "ldtr.attrib": ATTR_P | SystemType.LDT,
        "ldtr.limit": 0xFFFF,
        "rip": program.symbol(entry),
        "rsp": stacks(index)[0],
        "rdi": index,  # which vCPU am I (also in TSC_AUX, as Linux keeps it)
        "tsc_aux": index,
        "rflags": int(Rflags.FIXED1),
        "cr0": int(Cr0.PE | Cr0.MP | Cr0.ET | Cr0.NE | Cr0.WP | (Cr0.PG if long_mode else 0)),
        "cr3": cr3 if long_mode else 0,
        "cr4": int(Cr4.PAE | Cr4.OSFXSR | Cr4.OSXMMEXCPT) if long_mode else int(Cr4.OSFXSR),
        "efer": int(Efer.SVME | ((Efer.LME | Efer.LMA | Efer.NXE | Efer.SCE) if long_mode else 0)),
        "g_pat": 0x0007_0406_0007_0406,
        "xcr0": 1,
        "mxcsr": 0x1F80,
        "x87_fcw": 0x37F,
        "dr7": 0x400,
        "dr6": 0xFFFF_0FF0,
    }
    for seg in ("ss", "ds", "es", "fs", "gs"):
        values[f"{seg}.selector"] = KERNEL_DS
        values[f"{seg}.attrib"] = ds.attrib
        values[f"{seg}.limit"] = ds.limit
    for name, value in values.items():
        VMSA.write(page, name, value)
    return page


def build_machine(
    spec: GuestSpec,
    config: GuestConfig | None = None,
    *,
    tracer: Tracer | None = None,
    sp: SecureProcessor | None = None,
    finish: bool = True,
    policy: GuestPolicy | int | None = None,
) -> tuple[Machine, Program]:
    """Assemble ``spec``, launch a machine with the environment, ``config.vcpus`` vCPUs."""
    config = config or GuestConfig(memory=8 << 20)
    vcpus = config.vcpus
    if not 1 <= vcpus <= MAX_VCPUS:
        raise ValueError(f"the harness builds 1..{MAX_VCPUS} vCPUs, not {vcpus}")
    if vcpus > 1 and spec.bits != 64:
        raise ValueError("several vCPUs need a 64-bit harness guest")
    program = assemble(
        spec.source,
        base=CODE_BASE,
        bits=spec.bits,
        name=spec.name,
        include_paths=spec.include_paths,
        defines=spec.defines,
    )
    long_mode = spec.bits == 64
    # Images -> launch -> machine, as every stack builder does (sevx86.sp.launch).
    launch = GuestLaunch(config, sp=sp, policy=policy, tracer=tracer)
    launch.start()
    machine = Machine(config, launch=launch, tracer=tracer)
    idt = bytearray(256 * (16 if long_mode else 8))
    user = set(spec.user_gates)
    for vector, label in spec.handlers.items():
        gate = _gate(
            program.symbol(label),
            long_mode=long_mode,
            dpl=3 if vector in user else 0,
            ist=spec.ist.get(vector, 0),
        )
        idt[vector * len(gate) : (vector + 1) * len(gate)] = gate
    tss = bytearray(TSS64_SIZE)
    if long_mode:
        _put(tss, tss64_rsp_offset(0), STACK_TOP, 8)
        _put(tss, tss64_ist_offset(1), IST1_TOP, 8)
    else:
        esp0, ss0 = tss32_stack_offsets(0)
        _put(tss, esp0, STACK_TOP, 4)
        _put(tss, ss0, KERNEL_DS, 2)
    shared = set(spec.shared_pages) | {gpa & ~0xFFF for gpa in spec.ghcbs.values()}
    cr3, tables = (
        build_tables(config, shared, spec.mmio, user=spec.user_pages) if long_mode else (0, b"")
    )
    machine.load(GDT_BASE, _gdt(long_mode, vcpus), name="gdt")
    machine.load(IDT_BASE, bytes(idt), name="idt")
    if vcpus == 1 and not spec.ghcbs:
        machine.load(TSS_BASE, bytes(tss), name="tss")
    else:
        machine.load(TSS_BASE, _percpu_areas(spec, vcpus), name="tss")
    if tables:
        machine.load(TABLES_BASE, tables, name="page tables")
    machine.load(program.base, program.code, name="program")
    for index in range(vcpus):
        machine.add_vcpu(initial_state(program, spec, cr3, index, vcpus))
    if finish:
        machine.finish()
    return machine, program


def _put(buf: bytearray, offset: int, value: int, size: int) -> None:
    buf[offset : offset + size] = value.to_bytes(size, "little")


def _percpu_areas(spec: GuestSpec, vcpus: int) -> bytes:
    """Each vCPU's TSS (its stacks) and, after it, its #VC handler block."""
    from sevx86.asm.guest_abi import DR7_RESET, VC_PERCPU_TSS_OFFSET, VcPercpu

    out = bytearray(PERCPU_STRIDE * vcpus)
    for index in range(vcpus):
        base = index * PERCPU_STRIDE
        rsp0, ist1 = stacks(index)
        _put(out, base + tss64_rsp_offset(0), rsp0, 8)
        _put(out, base + tss64_ist_offset(1), ist1, 8)
        block = base + VC_PERCPU_TSS_OFFSET
        ghcb = spec.ghcbs.get(index, 0)
        for off, value in (
            (VcPercpu.GHCB_VA, ghcb),  # the harness maps RAM 1:1
            (VcPercpu.GHCB_PA, ghcb),
            (VcPercpu.DR7, DR7_RESET),
        ):
            out[block + off : block + off + 8] = value.to_bytes(8, "little")
    return bytes(out)
