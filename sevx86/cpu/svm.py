"""Unicorn's own SVM: the hardware VMCB that puts the vCPU in guest mode.

docs/engine.md ("Guest mode for good"): Unicorn's QEMU core
still has QEMU's TCG model of AMD SVM. After one VMRUN from a 3-byte host stub
the vCPU stays in guest mode for good, and every intercepted instruction
reaches ``UC_HOOK_INTR`` as ``0x100 + exit code`` with RIP on it. This module
owns the host-internal pages that make that happen -- the stub, the VMCB
Unicorn reads, the host save area and the permission maps -- in a Unicorn
region no guest translation can reach, and programs the intercepts from the
host's VMCB plus what the engine itself needs.

Verified behaviour it relies on (unicorn 2.1.4, docs/unicorn-notes.md):
VMRUN loads ES/CS/SS/DS with their hidden state, GDTR, IDTR, CR0/2/3/4,
EFER, RFLAGS, RIP, RSP, RAX, DR6/7 and the CPL; QEMU loads CR0 before CR4,
so the host needs CR4.PAE set or a paged long-mode guest loses CR0.PG; the
MSRPM is re-read on every check, so the engine can clear a bit to reach an
MSR itself and put it back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from unicorn import UC_PROT_ALL, Uc
from unicorn.x86_const import UC_X86_REG_CR4, UC_X86_REG_RAX

from sevx86.arch.cr import Cr4
from sevx86.arch.layout import SEGMENT_PARTS
from sevx86.arch.msr import Efer, Msr
from sevx86.arch.vmcb import (
    IOPM_SIZE,
    MSRPM_SIZE,
    VMCB_CONTROL,
    VMCB_SAVE,
    VMCB_SAVE_OFFSET,
    Intercept,
    TlbControl,
    msrpm_bit,
    msrpm_covers,
)
from sevx86.arch.vmsa import VMSA
from sevx86.config import GuestMode
from sevx86.cpu.vmcb import Vmcb

# Unicorn physical address of the host-internal pages (never guest-reachable).
CPU_PRIVATE_BASE = 1 << 46
STUB = CPU_PRIVATE_BASE
HW_VMCB = CPU_PRIVATE_BASE + 0x1000
HSAVE = CPU_PRIVATE_BASE + 0x2000
IOPM = CPU_PRIVATE_BASE + 0x3000
MSRPM = IOPM + IOPM_SIZE
PRIVATE_SIZE = 0x3000 + IOPM_SIZE + MSRPM_SIZE

VMRUN_BYTES = b"\x0f\x01\xd8"
HLT_BYTE = b"\xf4"

# Intercepts the engine always needs, whatever the host asked for.
ENGINE_INTERCEPTS: tuple[Intercept, ...] = (
    Intercept.SWINT,  # INT n / INT3: RIP on the instruction (avoids a stale next-RIP)
    Intercept.VMMCALL,  # VMGEXIT is REP VMMCALL
    Intercept.MSR_PROT,  # GHCB MSR, SEV_STATUS, EFER traps; MSRPM below is all ones
    Intercept.HLT,
    Intercept.SHUTDOWN,
    # The engine caches translations like a TLB: it must see every flush.
    Intercept.INVLPG,
    # SVM instructions inside the guest: the engine answers with #UD.
    Intercept.VMRUN,
    Intercept.VMLOAD,
    Intercept.VMSAVE,
    Intercept.STGI,
    Intercept.CLGI,
    Intercept.SKINIT,
    Intercept.INVLPGA,
)

# Host intercepts that map one-to-one onto Unicorn's.
PASSTHROUGH_INTERCEPTS: tuple[Intercept, ...] = (
    Intercept.CPUID,
    Intercept.RDTSC,
    Intercept.RDTSCP,
    Intercept.RDPMC,
    Intercept.INVD,
    Intercept.WBINVD,
    Intercept.MONITOR,
    Intercept.MWAIT,
)


# What Unicorn's VMRUN loads from the VMCB save area (APM vol 2, 15.5.1; QEMU
# helper_vmrun); the first entry applies everything else in host mode.
VMRUN_SEGMENTS: tuple[str, ...] = ("es", "cs", "ss", "ds", "gdtr", "idtr")
VMRUN_SCALARS: tuple[str, ...] = (
    "cpl",
    "efer",
    "cr4",
    "cr3",
    "cr0",
    "dr7",
    "dr6",
    "rflags",
    "rip",
    "rsp",
    "rax",
    "cr2",
    "g_pat",
)
VMRUN_LOADED: frozenset[str] = frozenset(VMRUN_SEGMENTS + VMRUN_SCALARS)


class SvmHardware:
    """The host-internal SVM pages of one vCPU's Unicorn."""

    def __init__(self, uc: Uc):
        self.uc = uc
        uc.mem_map(CPU_PRIVATE_BASE, PRIVATE_SIZE, UC_PROT_ALL)
        uc.mem_write(STUB, VMRUN_BYTES + HLT_BYTE)
        uc.mem_write(IOPM, b"\xff" * IOPM_SIZE)
        uc.mem_write(MSRPM, b"\xff" * MSRPM_SIZE)
        self.control = VMCB_CONTROL.new()

    # -- intercepts ------------------------------------------------------------------
    def program(self, host: Vmcb, mode: GuestMode) -> None:
        """Unicorn's intercepts = what the host asked for + what the engine needs."""
        c = self.control
        c[0:0x18] = bytes(0x18)
        bits: list[int] = list(ENGINE_INTERCEPTS)
        bits += [i for i in PASSTHROUGH_INTERCEPTS if host.intercepts(i)]
        # RDTSCP and INVD arrive under the RDTSC and WBINVD intercepts in TCG.
        if host.intercepts(Intercept.RDTSCP):
            bits.append(Intercept.RDTSC)
        if host.intercepts(Intercept.INVD):
            bits.append(Intercept.WBINVD)
        bits.append(Intercept.CR3_WRITE)  # a CR3 write flushes the engine's TLB
        # CR0 writes turn paging (and with it the C-bit) on: the engine
        # performs them itself unless the host asked, and traces the moment.
        bits.append(Intercept.CR0_WRITE)
        for n in range(16):
            wants = host["intercept_cr_write"] >> n & 1
            if mode is GuestMode.SEV_ES:
                wants |= host.intercepts(Intercept.CR0_WRITE_TRAP + n)
            if wants:
                bits.append(Intercept.CR0_WRITE + n)
        from sevx86.arch.vmcb import set_intercepts

        set_intercepts(c, *bits)
        VMCB_CONTROL.write(c, "intercept_dr_read", host["intercept_dr_read"])
        VMCB_CONTROL.write(c, "intercept_dr_write", host["intercept_dr_write"])
        VMCB_CONTROL.write(c, "iopm_base_pa", IOPM)
        VMCB_CONTROL.write(c, "msrpm_base_pa", MSRPM)
        VMCB_CONTROL.write(c, "asid", 1)
        # Flush the TLB at VMRUN: the stub's identity mapping must not leak in.
        VMCB_CONTROL.write(c, "tlb_ctl", TlbControl.FLUSH_ALL)
        self.uc.mem_write(HW_VMCB, bytes(c))

    @contextmanager
    def msr_passthrough(self, msr: int) -> Iterator[None]:
        """Let the engine's own msr_read/msr_write reach ``msr`` without an intercept.

        QEMU checks the MSRPM on every access, including Unicorn's msr_read;
        an intercepted one would re-enter the hook (and recurse).
        """
        if not msrpm_covers(msr):
            raise ValueError(f"MSR {msr:#x} cannot be reached outside the MSRPM ranges")
        byte, _ = msrpm_bit(msr, False)
        addr = MSRPM + byte
        saved = bytes(self.uc.mem_read(addr, 1))
        self.uc.mem_write(addr, b"\x00")
        try:
            yield
        finally:
            self.uc.mem_write(addr, saved)

    def read_msr(self, msr: int) -> int:
        with self.msr_passthrough(msr):
            return self.uc.msr_read(msr)

    def write_msr(self, msr: int, value: int) -> None:
        with self.msr_passthrough(msr):
            self.uc.msr_write(msr, value)

    def inject_at_entry(self, event_inj: int, event_inj_err: int) -> None:
        """Let the stub's VMRUN inject the host's pending event (APM vol 2, 15.20)."""
        VMCB_CONTROL.write(self.control, "event_inj", event_inj)
        VMCB_CONTROL.write(self.control, "event_inj_err", event_inj_err)
        self.uc.mem_write(HW_VMCB, bytes(self.control))
        VMCB_CONTROL.write(self.control, "event_inj", 0)

    # -- the first entry ------------------------------------------------------------
    def prepare_entry(self, state: bytes | bytearray) -> None:
        """Fill the hardware save area from a VMSA page and set up the host stub.

        After this, ``emu_start(STUB)`` executes VMRUN and the guest runs.
        """
        save = bytearray(VMCB_SAVE.size)
        for name in VMRUN_SEGMENTS:
            for part, _rel, _size in SEGMENT_PARTS:
                VMCB_SAVE.write(save, f"{name}.{part}", VMSA.read(state, f"{name}.{part}"))
        for name in VMRUN_SCALARS:
            VMCB_SAVE.write(save, name, VMSA.read(state, name))
        self.uc.mem_write(HW_VMCB + VMCB_SAVE_OFFSET, bytes(save))
        uc = self.uc
        # Host side of VMRUN: SVME on, a host save area, RAX -> VMCB, and
        # CR4.PAE so QEMU keeps the guest's CR0.PG while it loads CR0 first.
        uc.msr_write(Msr.EFER, uc.msr_read(Msr.EFER) | Efer.SVME)
        uc.msr_write(Msr.VM_HSAVE_PA, HSAVE)
        uc.reg_write(UC_X86_REG_CR4, uc.reg_read(UC_X86_REG_CR4) | Cr4.PAE)
        uc.reg_write(UC_X86_REG_RAX, HW_VMCB)
