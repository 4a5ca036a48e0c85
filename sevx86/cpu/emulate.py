"""The instructions the engine performs itself: CR writes, MSRs, INVLPG.

Unicorn raises these as intercepts because the engine asked for them (it
must see every CR0/CR3/CR4 write and INVLPG to keep its own TLB honest, and
every MSR access for the ones SEV-ES hardware virtualizes in place). When the
host did not ask, the engine does what the processor would and the guest
goes on without an exit; when the host did, the access is the host's
(an exit, or #VC under SEV-ES).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import x86_const as ux

from sevx86.arch.cr import Cr0, Cr4
from sevx86.arch.exits import SvmExit, cr_write, cr_write_trap
from sevx86.arch.layout import U32_MASK
from sevx86.arch.msr import Efer, Msr, SevStatus
from sevx86.arch.vectors import Vector
from sevx86.arch.vmcb import Intercept, intercept_cr_write_trap, msrpm_covers
from sevx86.config import GuestMode
from sevx86.cpu import decode
from sevx86.cpu.exceptions import Event, EventKind, GuestFault
from sevx86.cpu.intercepts import IN_PLACE_MSRS
from sevx86.memory.mmu import Access, Translation

if TYPE_CHECKING:
    from sevx86.cpu.vcpu import VCpu

_UCREG_CR = {
    0: ux.UC_X86_REG_CR0,
    2: ux.UC_X86_REG_CR2,
    3: ux.UC_X86_REG_CR3,
    4: ux.UC_X86_REG_CR4,
    8: ux.UC_X86_REG_CR8,
}
# LMSW writes only CR0[3:0] (PE, MP, EM, TS) and cannot clear PE (APM vol 3, LMSW).
_LMSW_BITS = int(Cr0.PE | Cr0.MP | Cr0.EM | Cr0.TS)
# Control bits a cached translation depends on (APM vol 2, 5.5.3 and 3.1):
# changing one invalidates every translation. MOV CR3 always does here,
# PCID or not, because Unicorn's TLB is not tagged by PCID.
TRANSLATION_BITS: dict[int, int] = {
    0: int(Cr0.PG | Cr0.WP | Cr0.PE),
    4: int(Cr4.PGE | Cr4.PAE | Cr4.PSE | Cr4.LA57 | Cr4.PCIDE | Cr4.SMEP | Cr4.SMAP),
}
EFER_TRANSLATION_BITS = int(Efer.NXE | Efer.LMA | Efer.LME)


# -- control registers ----------------------------------------------------------------
def write_cr(vcpu: VCpu, cr: int) -> None:
    """MOV to CRn / CLTS / LMSW, intercepted by the engine (and maybe the host)."""
    insn = vcpu.fetch_insn()
    w = decode.cr_write(insn, vcpu.code_bits())
    if vcpu.vmcb["intercept_cr_write"] >> cr & 1:
        vcpu.non_automatic(cr_write(cr))
        return
    ctx = vcpu.ctx.load()
    current = ctx.cr(cr) if cr != 8 else vcpu.uc.reg_read(ux.UC_X86_REG_CR8)
    if w.kind == "mov":
        value = ctx.gpr(w.gpr)  # type: ignore[arg-type]
        if vcpu.code_bits() != 64:
            value &= U32_MASK
    elif w.kind == "clts":
        value = current & ~Cr0.TS
    else:  # lmsw: PE cannot be cleared
        src = ctx.gpr(w.gpr) & _LMSW_BITS  # type: ignore[arg-type]
        value = (current & ~(_LMSW_BITS & ~Cr0.PE)) | src | (current & Cr0.PE)
    if cr == 0:
        value |= Cr0.ET  # hardwired to 1 on AMD64
    if check_cr(vcpu, cr, value) is not None:
        vcpu.deliver(Event(Vector.GP, EventKind.EXCEPTION, 0), ctx.rip)
        return
    vcpu.uc.reg_write(_UCREG_CR[cr], value)
    vcpu.ctx.invalidate()
    vcpu.set_rip(ctx.rip + w.length)
    if cr == 3 or (current ^ value) & TRANSLATION_BITS.get(cr, 0):
        vcpu.invalidate_tlbs()
    if vcpu.tracer.enabled:
        vcpu.trace("guest", "cr-write", f"CR{cr} <- {value:#x}", target="cpu", cr=cr, value=value)
        if cr == 0 and value & Cr0.PG and not current & Cr0.PG:
            trace_paging_on(vcpu)
    if vcpu.mode is GuestMode.SEV_ES and vcpu.vmcb.intercepts(intercept_cr_write_trap(cr)):
        vcpu.automatic_exit(cr_write_trap(cr), info1=value)


def check_cr(vcpu: VCpu, cr: int, value: int) -> str | None:
    """The architectural #GP checks QEMU's TCG leaves out (APM vol 2, 3.1.1, 3.1.3)."""
    if value >> 32 and cr in (0, 4):
        return "reserved bits"
    if cr == 0 and value & Cr0.PG and not value & Cr0.PE:
        return "PG without PE"
    if cr == 0 and value & Cr0.NW and not value & Cr0.CD:
        return "NW without CD"
    if cr == 4 and vcpu.ctx.efer & Efer.LMA and not value & Cr4.PAE:
        return "clearing PAE in long mode"
    return None


# -- paging on -------------------------------------------------------------------------
def trace_paging_on(vcpu: VCpu) -> None:
    """The moment paging takes effect, and whether the tables carry the C-bit.

    Until now every access was private (APM vol 2, 15.34.5: with paging
    off the C-bit cannot be expressed); from here the leaf entries
    decide. One read walk of the code page tells which case the guest
    built: with the C-bit, its memory stays private and a page can be
    shared by clearing it (the GHCB).
    """
    st = vcpu.paging_state(cpl=0)
    rip = vcpu.linear_rip()
    res = vcpu.mmu.walk(rip, Access.READ, st)
    c_bit = bool(vcpu.config.c_bit) and isinstance(res, Translation) and res.private
    form = "long mode, 4-level" if st.long_mode else "PAE" if st.pae else "32-bit"
    if c_bit:
        what = f"C-bit {vcpu.config.cbitpos} set at RIP {rip:#x}: memory stays private"
    elif not isinstance(res, Translation):
        what = f"RIP {rip:#x} is not mapped"
    else:
        what = "no C-bit in the tables"
    vcpu.trace(
        "cpu",
        "paging",
        f"paging on ({form}, CR3 {st.cr3:#x}): {what}",
        target="guest",
        cr3=st.cr3,
        long_mode=st.long_mode,
        c_bit=c_bit,
        rip=rip,
    )


# -- INVLPG -----------------------------------------------------------------------------
def invlpg(vcpu: VCpu) -> None:
    """INVLPG the host does not intercept: the engine's TLBs drop the page."""
    vcpu.invalidate_tlbs()
    vcpu.set_rip(vcpu.rip() + decode.length(vcpu.fetch_insn(), vcpu.code_bits()))


# -- MSRs ---------------------------------------------------------------------------------
# RDMSR/WRMSR are two bytes (0F 32 / 0F 30).
_MSR_INSN_LENGTH = 2


def rdmsr_wrmsr(vcpu: VCpu) -> None:
    ctx = vcpu.ctx.load()
    msr = ctx.gpr(1) & U32_MASK
    write = ctx.error_code == 1
    rip = ctx.rip
    value = (ctx.gpr(0) & U32_MASK) | ((ctx.gpr(2) & U32_MASK) << 32)
    if msr in IN_PLACE_MSRS and _in_place(vcpu, msr, write, value):
        vcpu.set_rip(rip + _MSR_INSN_LENGTH)
        return
    if vcpu.vmcb.msr_intercepted(msr, write):
        vcpu.non_automatic(SvmExit.MSR, int(write), 0, msr=msr)
        return
    # Not intercepted by the host: the hardware executes it.
    if write:
        _native_wrmsr(vcpu, msr, value)
    else:
        vcpu.set_edx_eax(_native_rdmsr(vcpu, msr))
    vcpu.set_rip(rip + _MSR_INSN_LENGTH)
    if (
        write
        and msr == Msr.EFER
        and vcpu.mode is GuestMode.SEV_ES
        and vcpu.vmcb.intercepts(Intercept.EFER_WRITE_TRAP)
    ):
        vcpu.automatic_exit(SvmExit.EFER_WRITE_TRAP, info1=vcpu.ctx.load().efer)


def _native_rdmsr(vcpu: VCpu, msr: int) -> int:
    if not msrpm_covers(msr):
        raise GuestFault(Vector.GP, 0, reason=f"RDMSR {msr:#x}")
    return vcpu.svm.read_msr(msr)


def _native_wrmsr(vcpu: VCpu, msr: int, value: int) -> None:
    if not msrpm_covers(msr):
        raise GuestFault(Vector.GP, 0, reason=f"WRMSR {msr:#x}")
    old = 0
    if msr == Msr.EFER:
        # LMA is read-only: hardware keeps it (APM vol 2, 3.1.7).
        old = vcpu.ctx.load().efer
        value = (value & ~Efer.LMA) | (old & Efer.LMA)
    vcpu.svm.write_msr(msr, value)
    vcpu.ctx.invalidate()
    if msr == Msr.EFER and (old ^ value) & EFER_TRANSLATION_BITS:
        vcpu.invalidate_tlbs()


def _in_place(vcpu: VCpu, msr: int, write: bool, value: int) -> bool:
    """The MSRs SEV hardware virtualizes itself; True if handled here."""
    if msr == Msr.SEV_STATUS and not write and vcpu.mode.encrypted:
        status = SevStatus.SEV_ENABLED
        if vcpu.mode is GuestMode.SEV_ES:
            status |= SevStatus.SEV_ES_ENABLED
        vcpu.set_edx_eax(int(status))
        return True
    if msr == Msr.SEV_ES_GHCB and vcpu.mode is GuestMode.SEV_ES:
        if write:
            vcpu.ghcb_msr = value
            if vcpu.tracer.enabled:
                vcpu.trace(
                    "guest", "ghcb-msr-write", f"GHCB MSR <- {value:#x}", target="cpu", value=value
                )
        else:
            vcpu.set_edx_eax(vcpu.ghcb_msr)
        return True
    if msr == Msr.SEV_STATUS and write and vcpu.mode.encrypted:
        raise GuestFault(Vector.GP, 0, reason="SEV_STATUS is read-only")
    return False
