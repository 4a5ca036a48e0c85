"""What a refused TLB fill means: a guest #PF/#GP, a nested page fault, or a page form change.

``sevx86.memory.mmu.TlbFiller`` refuses a fill and leaves the reason in
``filler.pending``; Unicorn then stops with ``UC_ERR_EXCEPTION`` and the run
loop calls ``after_error``. The fill saw only the page: the faulting byte
(CR2, and an NPF's EXITINFO2, APM vol 2 15.25.6) comes from decoding the
instruction's operands.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from unicorn import UC_ERR_EXCEPTION, UcError

from sevx86.arch.exits import SvmExit
from sevx86.arch.paging import PAGE_OFFSET_MASK, PfErr
from sevx86.arch.vectors import Vector
from sevx86.config import GuestMode
from sevx86.cpu import context as C
from sevx86.cpu import decode
from sevx86.cpu.exceptions import Event, EventKind
from sevx86.cpu.stop import ExitRecorded
from sevx86.memory.mmu import Access, FormChange, NestedFault, PageFault

if TYPE_CHECKING:
    from sevx86.cpu.vcpu import VCpu


def after_error(vcpu: VCpu, error: UcError) -> None:
    vcpu.linear.begin_event()
    pending = vcpu.filler.pending
    if error.errno == UC_ERR_EXCEPTION and pending.__class__ is FormChange:
        vcpu.filler.pending = None
        # Not a fault: the page changes form and the access is replayed.
        if pending.to_shared:
            vcpu.memory.make_shared(pending.gpa)
        else:
            vcpu.memory.make_private(pending.gpa)
        vcpu.memory.flush_tlbs()
        return
    if error.errno == UC_ERR_EXCEPTION and pending is not None:
        vcpu.filler.pending = None
        try:
            if isinstance(pending, PageFault):
                cr2 = exact_fault_address(vcpu, pending) if pending.vector == Vector.PF else None
                vcpu.deliver(
                    Event(pending.vector, EventKind.EXCEPTION, pending.error_code),
                    vcpu.rip(),
                    cr2=cr2,
                )
            else:
                nested_fault(vcpu, pending)
        except ExitRecorded:
            pass
        return
    if vcpu.exit is not None:
        return
    vcpu.fail(error)


def exact_fault_address(vcpu: VCpu, fault: PageFault | NestedFault) -> int:
    """The faulting linear address of a refused fill.

    The hook saw only the page; the faulting instruction's operands say
    which byte (CR2 for #PF, and with it EXITINFO2 of an NPF).
    """
    page = fault.vaddr & ~PAGE_OFFSET_MASK
    linear_rip = vcpu.linear_rip()
    fetch = (
        fault.access is Access.FETCH
        if isinstance(fault, NestedFault)
        else bool(fault.error_code & PfErr.ID)
    )
    if fetch:
        # A fetch: the instruction's first byte, or the start of the next
        # page when the instruction straddles into it.
        return linear_rip if linear_rip >= page else page
    insn = vcpu.fetch_insn()
    if not insn:
        return page
    ctx = vcpu.ctx
    return decode.fault_address(
        insn,
        vcpu.code_bits(),
        ctx.rip,
        ctx.gprs(),
        functools.partial(_segment_base_by_capstone_id, vcpu),
        page,
    )


def _segment_base_by_capstone_id(vcpu: VCpu, reg: int) -> int:
    from capstone import x86_const as cx

    index = {
        cx.X86_REG_ES: C.SEG_ES,
        cx.X86_REG_CS: C.SEG_CS,
        cx.X86_REG_SS: C.SEG_SS,
        cx.X86_REG_FS: C.SEG_FS,
        cx.X86_REG_GS: C.SEG_GS,
    }.get(reg, C.SEG_DS)
    return vcpu.ctx.segment(index).base


def nested_fault(vcpu: VCpu, fault: NestedFault) -> None:
    if vcpu.mode is GuestMode.SEV_ES and not fault.readonly:
        vcpu.inject_vc(SvmExit.NPF)
        return
    code = PfErr.US if vcpu.ctx.load().cpl == 3 else 0
    if fault.access is Access.WRITE:
        code |= PfErr.WR
    if fault.access is Access.FETCH:
        code |= PfErr.ID
    if fault.readonly:
        code |= PfErr.P  # the nested entry is present, only not writable
    # EXITINFO2 is the faulting GPA to the byte (APM vol 2, 15.25.6).
    gpa = fault.gpa | (exact_fault_address(vcpu, fault) & PAGE_OFFSET_MASK)
    if vcpu.mode is GuestMode.SEV_ES:
        # Only an NPF on a reserved-bit entry becomes #VC (MMIO); this one
        # is an automatic exit with the state sealed in the VMSA: the
        # host learns the GPA and the error code, never the instruction.
        vcpu.automatic_exit(SvmExit.NPF, info1=int(code), info2=gpa)
        return
    # Decode assist: the host gets the instruction bytes (APM 15.33).
    vcpu.vmcb.set_insn_bytes(vcpu.fetch_insn())
    vcpu.exit_to_host(
        SvmExit.NPF,
        int(code),
        gpa,
        gpa=gpa,
        access=fault.access.name.lower(),
        private=fault.private,
    )
