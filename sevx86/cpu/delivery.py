"""Exception and interrupt delivery applied to the vCPU.

``sevx86.cpu.exceptions`` plans a delivery from an ``InterruptContext``
(AMD APM vol 2, chapter 8: the IDT or IVT gate, the stack switch, the frame,
escalation to #DF and shutdown); this module builds that context from the
live CPU, writes the frame through ``GuestLinear`` and loads CS/SS/RIP/RSP/
RFLAGS, as the processor does. ``inject_pending_event`` is VMRUN's EVENTINJ
(APM vol 2, 15.20).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import x86_const as ux

from sevx86.arch.descriptors import ATTR_L
from sevx86.arch.layout import U32_MASK
from sevx86.arch.vectors import Vector, vector_name
from sevx86.arch.vmcb import EVENTINJ_V, EventType, decode_event
from sevx86.cpu import context as C
from sevx86.cpu.context import SegmentState
from sevx86.cpu.exceptions import (
    DeliveryPlan,
    Event,
    EventKind,
    InterruptContext,
    Segment,
    TripleFault,
    deliver_with_escalation,
)
from sevx86.cpu.stop import ExitRecorded

if TYPE_CHECKING:
    from sevx86.cpu.vcpu import VCpu


def interrupt_context(vcpu: VCpu, return_rip: int) -> InterruptContext:
    ctx = vcpu.ctx.load()
    rflags = vcpu.uc.reg_read(ux.UC_X86_REG_RFLAGS)
    # Plain tuples straight into Segment: no SegmentState in between.
    fields = ctx.table_fields
    _, gdt_base, gdt_limit, _ = fields(C.GDT)
    _, idt_base, idt_limit, _ = fields(C.IDT)
    cs = ctx.segment_fields(C.SEG_CS)
    return InterruptContext(
        mode=vcpu.cpu_mode(),
        cpl=ctx.cpl,
        rip=return_rip,
        rsp=ctx.gpr(4),
        rflags=rflags,
        cs=Segment(*cs),
        ss=Segment(*ctx.segment_fields(C.SEG_SS)),
        idtr_base=idt_base,
        idtr_limit=idt_limit,
        gdtr_base=gdt_base,
        gdtr_limit=gdt_limit,
        ldtr=Segment(*fields(C.LDT)),
        tr=Segment(*fields(C.TR)),
        code64=bool(cs[3] & ATTR_L),
    )


def deliver(
    vcpu: VCpu,
    event: Event,
    return_rip: int,
    *,
    cr2: int | None = None,
    fault_rip: int | None = None,
) -> None:
    """Deliver ``event`` through the guest's IVT/IDT, as the processor does."""
    ictx = interrupt_context(vcpu, return_rip)
    try:
        plan, chain = deliver_with_escalation(ictx, event, vcpu.linear, fault_rip=fault_rip)
    except TripleFault as exc:
        vcpu.trace(
            "cpu",
            "exception",
            f"{event} -> triple fault",
            target="guest",
            vector=event.vector,
            error_code=event.error_code,
            rip=return_rip,
        )
        vcpu.shutdown(f"triple fault: {exc}")
        return
    final = chain[-1]
    if plan.cr2 is not None:
        cr2 = plan.cr2
    elif final.vector != Vector.PF or len(chain) > 1 and chain[0].vector != Vector.PF:
        cr2 = cr2 if final is event else None
    apply_plan(vcpu, plan, cr2 if final.vector == Vector.PF else None)
    if (event.vector != Vector.VC or len(chain) > 1) and vcpu.tracer.enabled:
        names = " -> ".join(str(e) for e in chain)
        vcpu.trace(
            "cpu",
            "exception",
            f"{names} delivered to {plan.rip:#x}",
            target="guest",
            vector=final.vector,
            name=vector_name(final.vector),
            error_code=final.error_code,
            rip=return_rip,
            handler=plan.rip,
            cr2=cr2,
        )


def apply_plan(vcpu: VCpu, plan: DeliveryPlan, cr2: int | None) -> None:
    user_stack = plan.cpl == 3
    for addr, data in plan.stack:
        vcpu.linear.write(addr, data, user=user_stack)
    ctx = vcpu.ctx.load()
    ctx.set_segment(
        C.SEG_CS, SegmentState(plan.cs.selector, plan.cs.base, plan.cs.limit, plan.cs.attrib)
    )
    if plan.ss is not None:
        ctx.set_segment(
            C.SEG_SS,
            SegmentState(plan.ss.selector, plan.ss.base, plan.ss.limit, plan.ss.attrib),
        )
    ctx.set_u64(C.EIP, plan.rip)
    ctx.set_gpr(4, plan.rsp)
    if cr2 is not None:
        ctx.set_u64(C.CR + 16, cr2)
    ctx.set_u32(C.OLD_EXCEPTION, U32_MASK)  # -1: no exception in flight
    ctx.recompute_hflags()
    ctx.store()
    vcpu.uc.reg_write(ux.UC_X86_REG_RFLAGS, plan.rflags)
    vcpu.ctx.invalidate()


def inject_pending_event(vcpu: VCpu) -> None:
    vcpu.linear.begin_event()
    value = vcpu.vmcb["event_inj"] | (vcpu.vmcb["event_inj_err"] << 32)
    if not value & EVENTINJ_V:
        return
    vcpu.vmcb["event_inj"] = 0
    ev = decode_event(value)
    kind = {
        EventType.INTR: EventKind.EXTERNAL,
        EventType.NMI: EventKind.EXTERNAL,
        EventType.SOFT_INT: EventKind.SOFTWARE,
    }.get(ev.event_type, EventKind.EXCEPTION)
    if vcpu.tracer.enabled:
        vcpu.trace(
            "hv",
            "inject",
            f"inject vector {ev.vector:#x}",
            target="cpu",
            vector=ev.vector,
            type=ev.event_type,
        )
    try:
        vcpu.deliver(Event(ev.vector, kind, ev.error_code), vcpu.rip())
    except ExitRecorded:
        pass
