"""Exception and interrupt delivery through the guest's IVT or IDT.

Unicorn reports exceptions but never delivers them (docs/unicorn-notes.md,
"Exceptions"), so the engine does what the processor does, following AMD APM vol 2 (24593):

* 8.7 "Real-Mode Interrupt Control Transfers": IVT entry, push FLAGS, CS, IP;
* 8.8 "Legacy Protected-Mode Interrupt Control Transfers": IDT gate checks,
  stack switch through the TSS on a privilege change, error codes;
* 8.9 "Long-Mode Interrupt Control Transfers": 16-byte gates, IST, the
  16-byte stack alignment, SS:RSP always pushed, a NULL SS on a CPL change;
* 8.2.9 "#DF" and its table of contributory / page-fault classes: a fault
  while delivering becomes #DF when the pair is contributory+contributory or
  page-fault+(contributory or page fault); any fault while delivering #DF is a
  triple fault, i.e. shutdown.

``plan_delivery`` is pure: it reads descriptor tables through a
``LinearMemory`` and returns a ``DeliveryPlan`` (the new register values and
the stack writes); the CPU engine checks nothing more and applies it.
Faults found while planning are raised as ``GuestFault`` and combined by
``deliver_with_escalation``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol

from sevx86.arch.cr import Rflags
from sevx86.arch.descriptors import (
    ATTR_DB,
    DESCRIPTOR_SIZE,
    GATE32_SIZE,
    GATE64_SIZE,
    IVT_ENTRY_SIZE,
    Descriptor,
    Gate,
    SystemType,
    tss32_stack_offsets,
    tss64_ist_offset,
    tss64_rsp_offset,
)
from sevx86.arch.layout import U64_MASK
from sevx86.arch.vectors import Vector, has_error_code, vector_name


class CpuMode(Enum):
    REAL = "real"
    PROTECTED = "protected"  # legacy 16/32-bit protected mode
    LONG = "long"  # IA-32e: 64-bit or compatibility mode


class EventKind(Enum):
    EXCEPTION = "exception"  # a fault or trap raised by the processor
    EXTERNAL = "external"  # an external interrupt or NMI
    SOFTWARE = "software"  # INT n, INT3, INTO: gate DPL is checked, no EXT bit


@dataclass(frozen=True)
class Event:
    vector: int
    kind: EventKind = EventKind.EXCEPTION
    error_code: int | None = None

    @property
    def external(self) -> bool:
        """EXT bit of selector error codes: not caused by the program (INT n)."""
        return self.kind is not EventKind.SOFTWARE

    def __str__(self) -> str:
        name = vector_name(self.vector)
        code = "" if self.error_code is None else f"({self.error_code:#x})"
        return (
            f"#{name}{code}"
            if self.kind is EventKind.EXCEPTION
            else f"{self.kind.value} {self.vector:#x}"
        )


class GuestFault(Exception):
    """An exception the guest takes (raised while reading its tables or stack)."""

    def __init__(
        self, vector: int, error_code: int | None = None, cr2: int | None = None, reason: str = ""
    ):
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.reason = reason
        code = "" if error_code is None else f"({error_code:#x})"
        super().__init__(f"#{vector_name(vector)}{code} {reason}".strip())

    def as_event(self) -> Event:
        return Event(self.vector, EventKind.EXCEPTION, self.error_code)


class TripleFault(Exception):
    """A fault while delivering #DF: the processor shuts down."""


@dataclass(frozen=True)
class Segment:
    selector: int
    base: int
    limit: int
    attrib: int

    @classmethod
    def from_descriptor(cls, selector: int, d: Descriptor) -> Segment:
        return cls(selector, d.base, d.limit, d.attrib)

    @classmethod
    def real_mode(cls, selector: int, *, code: bool = False) -> Segment:
        # Present, accessed; read/write data or execute/read code.
        return cls(selector, selector << 4, 0xFFFF, 0x9B if code else 0x93)


@dataclass(frozen=True)
class InterruptContext:
    """The processor state delivery reads (APM vol 2 ch. 8 inputs)."""

    mode: CpuMode
    cpl: int
    rip: int  # where IRET returns: the faulting instruction, or the next one
    rsp: int
    rflags: int
    cs: Segment
    ss: Segment
    idtr_base: int
    idtr_limit: int
    gdtr_base: int
    gdtr_limit: int
    ldtr: Segment
    tr: Segment
    code64: bool = True  # CS.L in long mode (False: compatibility mode)


@dataclass
class DeliveryPlan:
    cs: Segment
    rip: int
    rsp: int
    rflags: int
    cpl: int
    ss: Segment | None = None  # None: SS unchanged
    stack: list[tuple[int, bytes]] = field(default_factory=list)  # (linear address, bytes)
    cr2: int | None = None

    @property
    def privilege_change(self) -> bool:
        return self.ss is not None


class LinearMemory(Protocol):
    """Guest linear memory as the processor's implicit accesses see it."""

    def read(self, addr: int, size: int, *, user: bool = False) -> bytes: ...

    def check_write(self, addr: int, size: int, *, user: bool = False) -> None: ...


# -- helpers -------------------------------------------------------------------
def _selector_error(selector: int, event: Event) -> int:
    return (selector & 0xFFFC) | (1 if event.external else 0)


def _idt_error(vector: int, event: Event) -> int:
    return vector * 8 + 2 + (1 if event.external else 0)


def _read_descriptor(
    ctx: InterruptContext, mem: LinearMemory, selector: int, event: Event, *, wide: bool = False
) -> Descriptor:
    """Descriptor for ``selector`` from the GDT or LDT (#GP(sel) if outside)."""
    index = selector & 0xFFF8
    if selector & 4:
        base, limit = ctx.ldtr.base, ctx.ldtr.limit
    else:
        base, limit = ctx.gdtr_base, ctx.gdtr_limit
    size = 16 if wide else DESCRIPTOR_SIZE
    if index + size - 1 > limit:
        raise GuestFault(
            Vector.GP,
            _selector_error(selector, event),
            reason=f"selector {selector:#x} beyond the descriptor table",
        )
    raw = mem.read(base + index, size)
    return Descriptor.decode(raw[:8], raw[8:] if wide else None)


def _target_code_segment(
    ctx: InterruptContext, mem: LinearMemory, gate: Gate, event: Event
) -> tuple[Segment, int]:
    """Check the gate's code segment; return it and the new CPL."""
    if gate.selector & 0xFFFC == 0:
        raise GuestFault(Vector.GP, 1 if event.external else 0, reason="gate selector is null")
    d = _read_descriptor(ctx, mem, gate.selector, event)
    if not d.code or d.dpl > ctx.cpl:
        raise GuestFault(
            Vector.GP,
            _selector_error(gate.selector, event),
            reason=f"gate selector {gate.selector:#x} is not a usable code segment",
        )
    if ctx.mode is CpuMode.LONG and (not d.long or d.big):
        raise GuestFault(
            Vector.GP,
            _selector_error(gate.selector, event),
            reason="long-mode gates must target a 64-bit code segment",
        )
    if not d.present:
        raise GuestFault(
            Vector.NP,
            _selector_error(gate.selector, event),
            reason=f"code segment {gate.selector:#x} not present",
        )
    new_cpl = ctx.cpl if d.conforming else d.dpl
    selector = (gate.selector & 0xFFFC) | new_cpl
    return Segment.from_descriptor(selector, d), new_cpl


def _pack(values: list[int], width: int) -> bytes:
    """Values as pushed, first element at the lowest address."""
    mask = (1 << (8 * width)) - 1
    return b"".join((v & mask).to_bytes(width, "little") for v in values)


_CLEAR_ALWAYS = int(Rflags.TF | Rflags.NT | Rflags.RF)
_AC, _VM, _IF, _FIXED1 = int(Rflags.AC), int(Rflags.VM), int(Rflags.IF), int(Rflags.FIXED1)


def _cleared_flags(rflags: int, gate_interrupt: bool, *, mode: CpuMode) -> int:
    """RFLAGS in the handler: TF, NT, RF cleared; IF too through an interrupt gate."""
    flags = rflags & ~_CLEAR_ALWAYS
    if mode is CpuMode.REAL:
        flags &= ~_AC
    else:
        flags &= ~_VM
    if gate_interrupt:
        flags &= ~_IF
    return flags | _FIXED1


# -- the three modes -------------------------------------------------------------
def _plan_real(ctx: InterruptContext, event: Event, mem: LinearMemory) -> DeliveryPlan:
    entry = event.vector * IVT_ENTRY_SIZE
    if entry + IVT_ENTRY_SIZE - 1 > ctx.idtr_limit:
        raise GuestFault(Vector.GP, 0, reason=f"vector {event.vector:#x} beyond the IVT limit")
    gate = Gate.decode_ivt(mem.read(ctx.idtr_base + entry, IVT_ENTRY_SIZE))
    sp = (ctx.rsp - 6) & 0xFFFF
    frame = _pack([ctx.rip, ctx.cs.selector, ctx.rflags], 2)
    addr = ctx.ss.base + sp
    mem.check_write(addr, len(frame))
    return DeliveryPlan(
        cs=Segment.real_mode(gate.selector, code=True),
        rip=gate.offset,
        rsp=(ctx.rsp & ~0xFFFF) | sp,
        rflags=_cleared_flags(ctx.rflags, True, mode=CpuMode.REAL),
        cpl=0,
        stack=[(addr, frame)],
    )


def _plan_protected(ctx: InterruptContext, event: Event, mem: LinearMemory) -> DeliveryPlan:
    entry = event.vector * GATE32_SIZE
    if entry + GATE32_SIZE - 1 > ctx.idtr_limit:
        raise GuestFault(Vector.GP, _idt_error(event.vector, event), reason="beyond the IDT limit")
    gate = Gate.decode32(mem.read(ctx.idtr_base + entry, GATE32_SIZE))
    gate_types = (
        SystemType.INTERRUPT_GATE,
        SystemType.TRAP_GATE,
        SystemType.INTERRUPT_GATE16,
        SystemType.TRAP_GATE16,
    )
    if gate.type not in gate_types:
        # Task gates would need hardware task switching, which sevx86 does not model.
        raise GuestFault(
            Vector.GP,
            _idt_error(event.vector, event),
            reason=f"IDT entry {event.vector:#x} is not an interrupt or trap gate",
        )
    _check_gate(ctx, gate, event)
    cs, new_cpl = _target_code_segment(ctx, mem, gate, event)
    width = 4 if gate.type in (SystemType.INTERRUPT_GATE, SystemType.TRAP_GATE) else 2
    values = [ctx.rip, ctx.cs.selector, ctx.rflags]
    ss: Segment | None = None
    if new_cpl < ctx.cpl:
        esp_off, ss_off = tss32_stack_offsets(new_cpl)
        if ss_off + 1 > ctx.tr.limit:
            raise GuestFault(
                Vector.TS,
                _selector_error(ctx.tr.selector, event),
                reason="TSS too small for the stack switch",
            )
        esp = int.from_bytes(mem.read(ctx.tr.base + esp_off, 4), "little")
        ss_sel = int.from_bytes(mem.read(ctx.tr.base + ss_off, 2), "little")
        if ss_sel & 0xFFFC == 0:
            raise GuestFault(Vector.TS, _selector_error(ss_sel, event), reason="TSS SS is null")
        sd = _read_descriptor(ctx, mem, ss_sel, event)
        if not sd.writable_data or sd.dpl != new_cpl or (ss_sel & 3) != new_cpl:
            raise GuestFault(
                Vector.TS,
                _selector_error(ss_sel, event),
                reason=f"TSS SS {ss_sel:#x} is not a writable ring-{new_cpl} stack",
            )
        if not sd.present:
            raise GuestFault(Vector.SS, _selector_error(ss_sel, event), reason="stack not present")
        ss = Segment.from_descriptor(ss_sel, sd)
        values += [ctx.rsp, ctx.ss.selector]
        stack_base, sp = ss.base, esp
        big = sd.big
    else:
        stack_base, sp, big = ctx.ss.base, ctx.rsp, bool(ctx.ss.attrib & ATTR_DB)
    if event.error_code is not None:
        values.insert(0, event.error_code)
    frame = _pack(values, width)
    mask = 0xFFFF_FFFF if big else 0xFFFF
    new_sp = (sp - len(frame)) & mask
    addr = (stack_base + new_sp) & 0xFFFF_FFFF
    mem.check_write(addr, len(frame), user=new_cpl == 3)
    return DeliveryPlan(
        cs=cs,
        rip=gate.offset & (0xFFFF_FFFF if width == 4 else 0xFFFF),
        rsp=(sp & ~mask) | new_sp if ss is None else new_sp,
        rflags=_cleared_flags(ctx.rflags, gate.interrupt, mode=CpuMode.PROTECTED),
        cpl=new_cpl,
        ss=ss,
        stack=[(addr, frame)],
    )


def _plan_long(ctx: InterruptContext, event: Event, mem: LinearMemory) -> DeliveryPlan:
    entry = event.vector * GATE64_SIZE
    if entry + GATE64_SIZE - 1 > ctx.idtr_limit:
        raise GuestFault(Vector.GP, _idt_error(event.vector, event), reason="beyond the IDT limit")
    gate = Gate.decode64(mem.read(ctx.idtr_base + entry, GATE64_SIZE))
    if gate.type not in (SystemType.INTERRUPT_GATE, SystemType.TRAP_GATE):
        raise GuestFault(
            Vector.GP,
            _idt_error(event.vector, event),
            reason=f"IDT entry {event.vector:#x} is not a 64-bit interrupt/trap gate",
        )
    _check_gate(ctx, gate, event)
    cs, new_cpl = _target_code_segment(ctx, mem, gate, event)
    ss: Segment | None = None
    if gate.ist:
        rsp = int.from_bytes(mem.read(ctx.tr.base + tss64_ist_offset(gate.ist), 8), "little")
    elif new_cpl < ctx.cpl:
        off = tss64_rsp_offset(new_cpl)
        if off + 7 > ctx.tr.limit:
            raise GuestFault(
                Vector.TS,
                _selector_error(ctx.tr.selector, event),
                reason="TSS too small for the stack switch",
            )
        rsp = int.from_bytes(mem.read(ctx.tr.base + off, 8), "little")
    else:
        rsp = ctx.rsp
    if new_cpl < ctx.cpl:
        # A CPL change loads a NULL SS whose RPL is the new CPL (APM 8.9.3);
        # its hidden DPL carries the CPL, as on the processor.
        ss = Segment(new_cpl, 0, 0, new_cpl << 5)
    rsp &= ~0xF
    values = [ctx.rip, ctx.cs.selector, ctx.rflags, ctx.rsp, ctx.ss.selector]
    if event.error_code is not None:
        values.insert(0, event.error_code)
    frame = _pack(values, 8)
    new_rsp = (rsp - len(frame)) & U64_MASK
    if not _canonical(new_rsp) or not _canonical(rsp - 1):
        raise GuestFault(Vector.SS, 0, reason=f"non-canonical stack {new_rsp:#x}")
    mem.check_write(new_rsp, len(frame), user=new_cpl == 3)
    return DeliveryPlan(
        cs=cs,
        rip=gate.offset,
        rsp=new_rsp,
        rflags=_cleared_flags(ctx.rflags, gate.interrupt, mode=CpuMode.LONG),
        cpl=new_cpl,
        ss=ss,
        stack=[(new_rsp, frame)],
    )


def _canonical(addr: int) -> bool:
    top = (addr & U64_MASK) >> 47
    return top in (0, 0x1FFFF)


def _check_gate(ctx: InterruptContext, gate: Gate, event: Event) -> None:
    if event.kind is EventKind.SOFTWARE and gate.dpl < ctx.cpl:
        raise GuestFault(
            Vector.GP,
            _idt_error(event.vector, event),
            reason=f"INT {event.vector:#x}: gate DPL {gate.dpl} < CPL {ctx.cpl}",
        )
    if not gate.present:
        raise GuestFault(
            Vector.NP,
            _idt_error(event.vector, event),
            reason=f"IDT entry {event.vector:#x} not present",
        )


_PLANNERS: dict[CpuMode, Callable[[InterruptContext, Event, LinearMemory], DeliveryPlan]] = {
    CpuMode.REAL: _plan_real,
    CpuMode.PROTECTED: _plan_protected,
    CpuMode.LONG: _plan_long,
}


def plan_delivery(ctx: InterruptContext, event: Event, mem: LinearMemory) -> DeliveryPlan:
    """Where ``event`` lands and what it pushes; raises ``GuestFault`` if it cannot."""
    if ctx.mode is CpuMode.REAL:
        # Real mode pushes no error code (APM vol 2, 8.7).
        event = Event(event.vector, event.kind, None)
    elif event.kind is EventKind.EXCEPTION and has_error_code(event.vector):
        if event.error_code is None:
            event = Event(event.vector, event.kind, 0)
    return _PLANNERS[ctx.mode](ctx, event, mem)


# -- double and triple faults -------------------------------------------------------
CONTRIBUTORY = frozenset({Vector.DE, Vector.TS, Vector.NP, Vector.SS, Vector.GP})


def _fault_class(vector: int) -> str:
    if vector in CONTRIBUTORY:
        return "contributory"
    if vector == Vector.PF:
        return "page"
    return "benign"


def escalate(first: Event, second: GuestFault) -> Event:
    """What the processor delivers when ``second`` occurs while delivering ``first``.

    Raises ``TripleFault`` for a fault during #DF delivery.
    """
    if first.kind is EventKind.EXCEPTION and first.vector == Vector.DF:
        raise TripleFault(f"{second} while delivering #DF")
    a = _fault_class(first.vector) if first.kind is EventKind.EXCEPTION else "benign"
    b = _fault_class(second.vector)
    if (a == "contributory" and b == "contributory") or (a == "page" and b != "benign"):
        return Event(Vector.DF, EventKind.EXCEPTION, 0)
    return second.as_event()


def deliver_with_escalation(
    ctx: InterruptContext,
    event: Event,
    mem: LinearMemory,
    *,
    fault_rip: int | None = None,
    limit: int = 8,
) -> tuple[DeliveryPlan, list[Event]]:
    """Plan ``event``; on nested faults apply the #DF rules.

    ``fault_rip`` is where a fault raised during delivery points (for INT n,
    the INT instruction; ``ctx.rip`` is then the next instruction).
    Returns the final plan and the chain of events (for the trace): the
    original event, each nested fault, and what it escalated to.
    """
    chain = [event]
    cr2: int | None = None
    for _ in range(limit):
        try:
            plan = plan_delivery(ctx, event, mem)
            plan.cr2 = cr2
            return plan, chain
        except GuestFault as fault:
            nested = fault.as_event()
            event = escalate(event, fault)
            if event != nested:
                chain.append(nested)  # the fault itself, then what it escalated to
            if fault.vector == Vector.PF and event.vector == Vector.PF:
                cr2 = fault.cr2
            chain.append(event)
            if fault_rip is not None:
                # A fault raised by INT n itself restarts the INT: the frame
                # holds the instruction's address, not the next one.
                ctx = replace(ctx, rip=fault_rip)
    raise TripleFault("delivery did not converge")
