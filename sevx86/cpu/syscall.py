"""SYSCALL and SYSENTER: the fast system-call entries Unicorn leaves to the engine.

Unicorn replaces QEMU's SYSCALL and SYSENTER helpers with a call to the
``UC_HOOK_INSN`` hooks for ``UC_X86_INS_SYSCALL``/``UC_X86_INS_SYSENTER``,
made with RIP on the instruction, after which it adds the instruction's
length to RIP: the instruction itself does nothing (no CS/SS/RIP load, no
EFER.SCE check; see docs/unicorn-notes.md). This module performs the
architectural transition inside that hook, as AMD APM vol 3 "SYSCALL" and
"SYSENTER" and vol 2, 6.1 "Fast System Call and Return" define it, then takes
the length back off RIP so that Unicorn's own increment lands on the target.

SYSRET and SYSEXIT are left to QEMU's helpers (Unicorn keeps those); their
deviations from AMD are listed in docs/unicorn-notes.md.

The transitions are pure functions of the architectural inputs
(``syscall_transition``, ``sysenter_transition``); ``FastSystemCalls`` is the
glue to a vCPU through the small ``FastCallCpu`` interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from unicorn import Uc
from unicorn import x86_const as ux

from sevx86.arch.bits import U32_MASK as _U32
from sevx86.arch.bits import U64_MASK as _U64
from sevx86.arch.cr import Rflags
from sevx86.arch.descriptors import code_segment, data_segment
from sevx86.arch.msr import (
    STAR_EIP_MASK,
    STAR_SYSCALL_CS_SHIFT,
    Efer,
)
from sevx86.arch.vectors import Vector
from sevx86.cpu import context as C
from sevx86.cpu import decode
from sevx86.cpu.context import CpuContext, SegmentState
from sevx86.cpu.exceptions import CpuMode, Event, GuestFault
from sevx86.trace.events import TraceKind, Tracer

GPR_RCX, GPR_RSP, GPR_R11 = 1, 4, 11

# The flat segments both instructions load without reading the GDT (APM vol 3,
# SYSCALL/SYSENTER: base 0, limit 4 GiB, fixed attributes, DPL 0).
_CS64 = code_segment(dpl=0, long=True)
_CS32 = code_segment(dpl=0, long=False)
_SS0 = data_segment(dpl=0)


@dataclass(frozen=True)
class FastCallState:
    """The inputs of a fast system call: the mode, the MSRs, RFLAGS, the next RIP."""

    mode: CpuMode
    code64: bool  # long mode with CS.L = 1 (64-bit mode, not compatibility mode)
    efer: int
    star: int
    lstar: int
    cstar: int
    sfmask: int
    sysenter_cs: int
    sysenter_esp: int
    sysenter_eip: int
    rflags: int
    next_rip: int


@dataclass(frozen=True)
class Transition:
    """What the instruction loads: CS, SS, RIP, RFLAGS and some GPRs (index -> value)."""

    cs: SegmentState
    ss: SegmentState
    rip: int
    rflags: int
    gprs: tuple[tuple[int, int], ...]


def _flat(selector: int, attrib: int) -> SegmentState:
    return SegmentState(selector & 0xFFFF, 0, _U32, attrib)


def syscall_transition(s: FastCallState) -> Transition:
    """SYSCALL (APM vol 3): #UD without EFER.SCE; long mode enters 64-bit CPL 0
    at LSTAR (CSTAR from compatibility mode) with RCX = next RIP and R11 =
    RFLAGS (RF cleared), RFLAGS &= ~SFMASK; legacy mode enters 32-bit CPL 0 at
    STAR[31:0] with ECX = next EIP and VM, IF, RF cleared."""
    if not s.efer & Efer.SCE:
        raise GuestFault(Vector.UD, reason="SYSCALL with EFER.SCE clear")
    cs_sel = (s.star >> STAR_SYSCALL_CS_SHIFT) & 0xFFFF
    ss = _flat(cs_sel + 8, _SS0.attrib)
    if s.mode is CpuMode.LONG:
        saved = s.rflags & ~Rflags.RF & _U64
        target = s.lstar if s.code64 else s.cstar
        rflags = (s.rflags & ~s.sfmask & ~Rflags.RF) | Rflags.FIXED1
        return Transition(
            _flat(cs_sel & 0xFFFC, _CS64.attrib),
            ss,
            target & _U64,
            rflags & _U64,
            ((GPR_RCX, s.next_rip & _U64), (GPR_R11, saved)),
        )
    rflags = (s.rflags & ~(Rflags.VM | Rflags.IF | Rflags.RF)) | Rflags.FIXED1
    return Transition(
        _flat(cs_sel & 0xFFFC, _CS32.attrib),
        ss,
        s.star & STAR_EIP_MASK,
        rflags & _U64,
        ((GPR_RCX, s.next_rip & _U32),),
    )


def sysenter_transition(s: FastCallState) -> Transition:
    """SYSENTER (APM vol 3): #UD in long mode (AMD has it in legacy mode only),
    #GP(0) in real mode or with a null SYSENTER_CS; else 32-bit CPL 0 at
    SYSENTER_EIP with ESP = SYSENTER_ESP, SS = SYSENTER_CS + 8, VM, IF, RF cleared."""
    if s.mode is CpuMode.LONG:
        raise GuestFault(Vector.UD, reason="SYSENTER in long mode")
    if s.mode is CpuMode.REAL:
        raise GuestFault(Vector.GP, 0, reason="SYSENTER in real mode")
    cs_sel = s.sysenter_cs & 0xFFFF
    if not cs_sel & 0xFFFC:
        raise GuestFault(Vector.GP, 0, reason="SYSENTER with a null SYSENTER_CS")
    rflags = (s.rflags & ~(Rflags.VM | Rflags.IF | Rflags.RF)) | Rflags.FIXED1
    return Transition(
        _flat(cs_sel & 0xFFFC, _CS32.attrib),
        _flat((cs_sel + 8) & 0xFFFC, _SS0.attrib),
        s.sysenter_eip & _U32,
        rflags & _U64,
        ((GPR_RSP, s.sysenter_esp & _U32),),
    )


class FastCallCpu(Protocol):
    """What ``FastSystemCalls`` needs from a vCPU."""

    uc: Uc
    ctx: CpuContext
    index: int
    tracer: Tracer

    def code_bits(self) -> int: ...

    def cpu_mode(self) -> CpuMode: ...

    def fetch_insn(self) -> bytes: ...

    def deliver(self, event: Event, return_rip: int) -> None: ...

    def add_insn_hook(self, insn: int, handler: Callable[[], None]) -> int: ...

    # Leave emu_start and carry on at the current RIP: the run loop's
    # self-resuming stop (also what a vCPU that must make room for another uses).
    def stop_for_world(self) -> None: ...


class FastSystemCalls:
    """Performs SYSCALL and SYSENTER for one vCPU from Unicorn's instruction hooks."""

    def __init__(self, cpu: FastCallCpu):
        self.cpu = cpu
        self.count = 0  # fast system calls entered (tests and statistics)

    def install(self) -> None:
        """Register both instructions through the vCPU's extension hook."""
        cpu = self.cpu
        cpu.add_insn_hook(
            ux.UC_X86_INS_SYSCALL, lambda: self._execute("SYSCALL", syscall_transition)
        )
        cpu.add_insn_hook(
            ux.UC_X86_INS_SYSENTER, lambda: self._execute("SYSENTER", sysenter_transition)
        )

    def state(self, next_rip: int) -> FastCallState:
        """The architectural inputs, read from the live CPU."""
        cpu = self.cpu
        ctx = cpu.ctx.load()
        return FastCallState(
            mode=cpu.cpu_mode(),
            code64=cpu.code_bits() == 64,
            efer=ctx.efer,
            star=ctx.u64(C.STAR),
            lstar=ctx.u64(C.LSTAR),
            cstar=ctx.u64(C.CSTAR),
            sfmask=ctx.u64(C.FMASK) & _U32,  # SFMASK bits 63:32 are reserved
            sysenter_cs=ctx.u64(C.SYSENTER_CS),
            sysenter_esp=ctx.u64(C.SYSENTER_ESP),
            sysenter_eip=ctx.u64(C.SYSENTER_EIP),
            rflags=cpu.uc.reg_read(ux.UC_X86_REG_RFLAGS),
            next_rip=next_rip,
        )

    def _execute(self, name: str, transition: Callable[[FastCallState], Transition]) -> None:
        cpu = self.cpu
        ctx = cpu.ctx.load()
        rip, rax = ctx.rip, ctx.gpr(0)
        length = decode.length(cpu.fetch_insn(), cpu.code_bits())
        try:
            try:
                result = transition(self.state(rip + length))
            except GuestFault as fault:
                cpu.deliver(fault.as_event(), rip)  # a fault: RIP stays on the instruction
            else:
                self._load(result)
                self.count += 1
                if cpu.tracer.enabled:  # per system call: only when someone listens
                    cpu.tracer.emit(
                        "guest",
                        TraceKind.FAST_CALL,
                        f"{name} at {rip:#x} -> {result.rip:#x} (RAX {rax:#x})",
                        vcpu=cpu.index,
                        target="cpu",
                        instruction=name,
                        rip=rip,
                        entry=result.rip,
                        rax=rax,
                    )
        finally:
            # Unicorn adds the length to RIP after the hook returns; the run
            # loop restarts at the resulting RIP (no exit, no instruction-limit stop).
            ctx = cpu.ctx.load()
            ctx.set_u64(C.EIP, (ctx.rip - length) & _U64)
            ctx.store()
            cpu.stop_for_world()

    def _load(self, t: Transition) -> None:
        uc = self.cpu.uc
        ctx = self.cpu.ctx.load()
        for index, value in t.gprs:
            ctx.set_gpr(index, value)
        ctx.set_segment(C.SEG_CS, t.cs)
        ctx.set_segment(C.SEG_SS, t.ss)
        ctx.set_u64(C.EIP, t.rip)
        ctx.recompute_hflags()  # CPL 0 from SS.DPL; CS64/CS32 from the new CS
        ctx.store()
        # RFLAGS through Unicorn: its arithmetic flags live outside the blob.
        uc.reg_write(ux.UC_X86_REG_RFLAGS, t.rflags)
        self.cpu.ctx.invalidate()


__all__ = [
    "FastCallCpu",
    "FastCallState",
    "FastSystemCalls",
    "Transition",
    "syscall_transition",
    "sysenter_transition",
]
