"""The emulation of each NAE request: one small function per exit code.

Every handler has the shape ``handler(hv, req)`` and works on a ``Request``
(``sevx86.hv.requests``), so the same code serves a GHCB request of an SEV-ES
guest and a direct #VMEXIT of a plain or SEV guest. Validation already
happened (``sevx86.hv.validate`` for the GHCB path; the hardware produced the
direct exits), so a handler only emulates: reads inputs, writes outputs, or
answers #GP / a GHCB error.

``HANDLERS`` maps exit codes (SvmExit for the hardware events a #VC handler
forwards, SwExit for the software-defined VMGEXITs of GHCB spec 56421) to
these functions. A ``Hypervisor`` subclass replaces one by defining
``handle_<name>`` (``handle_cpuid``, ``handle_mmio_read``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sevx86.arch.bits import U32_MASK as _U32
from sevx86.arch.exits import AP_JUMP_TABLE_GET, SvmExit, SwExit, exit_name
from sevx86.arch.ghcb import GhcbError, decode_sw_terminate
from sevx86.arch.msr import Msr
from sevx86.arch.vectors import Vector
from sevx86.arch.vmcb import decode_ioio
from sevx86.hv import smp
from sevx86.hv.cpuid import CpuidQuery
from sevx86.hv.requests import Request

if TYPE_CHECKING:
    from sevx86.hv.hypervisor import Hypervisor

Handler = Callable[["Hypervisor", Request], None]
# KVM's answers to a hypercall it does not know / from CPL > 0 (include/uapi/linux/kvm_para.h).
KVM_ENOSYS = 1000
KVM_EPERM = 1
# AMD has four legacy performance counters (RDPMC ECX 0..3); sevx86 keeps them at 0.
PMC_COUNT = 4
MMIO_CHUNK = 8


def _set_edx_eax(req: Request, value: int) -> None:
    req.set_reg("rax", value & _U32)
    req.set_reg("rdx", (value >> 32) & _U32)


def cpuid(hv: Hypervisor, req: Request) -> None:
    st = hv.vcpu_state(req.vcpu.index)
    # Under SEV-ES the guest reports XCR0 in the GHCB (GHCB spec 56421, CPUID
    # NAE); without it the host reads the vCPU's own XCR0, which KVM tracks
    # by intercepting XSETBV (arch/x86/kvm/svm/svm.c, xsetbv_interception).
    if req.via_ghcb:
        xcr0 = req.reg("xcr0") if req.has_reg("xcr0") else st.regs.xcr0
    else:
        xcr0 = st.regs.xcr0 = req.reg("xcr0")
    xss = req.reg("xss") if req.via_ghcb and req.has_reg("xss") else st.regs.xss
    cr4 = st.regs.cr4 if req.via_ghcb else req.reg("cr4")
    query = CpuidQuery(
        leaf=req.reg("rax") & _U32,
        subleaf=req.reg("rcx") & _U32,
        vcpu=req.vcpu.index,
        xcr0=xcr0,
        xss=xss,
        cr4=cr4,
    )
    eax, ebx, ecx, edx = hv.cpuid.lookup(query)
    for name, value in (("rax", eax), ("rbx", ebx), ("rcx", ecx), ("rdx", edx)):
        req.set_reg(name, value)


def ioio(hv: Hypervisor, req: Request) -> None:
    io = decode_ioio(req.info1)
    mask = (1 << (8 * io.size)) - 1
    if not io.string:
        if io.is_in:
            req.set_reg_part("rax", hv.io_bus.read(io.port, io.size), io.size)
        else:
            hv.io_bus.write(io.port, io.size, req.reg("rax") & mask)
        return
    count = req.count
    if count == 0:
        return
    if io.is_in:
        if not req.write_data(hv.io_bus.read_string(io.port, io.size, count)):
            req.error(GhcbError.INVALID_SCRATCH_AREA, "INS buffer unreachable")
        return
    data = req.read_data(count * io.size)
    if data is None:
        req.error(GhcbError.INVALID_SCRATCH_AREA, "OUTS buffer unreachable")
        return
    hv.io_bus.write_string(io.port, io.size, data)


def msr(hv: Hypervisor, req: Request) -> None:
    index = req.reg("rcx") & _U32
    if hv.lapic.owns_msr(index):
        # x2APIC registers: the APIC ID, EOI and the ICR that sends IPIs.
        _msr_access(req, index, hv.lapic.msr_read, hv.lapic.msr_write)
    else:
        _msr_access(req, index, hv.msrs.read, hv.msrs.write)


def _msr_access(
    req: Request,
    index: int,
    read: Callable[[int, int], int | None],
    write: Callable[[int, int, int], bool],
) -> None:
    """RDMSR/WRMSR (SW_EXITINFO1 1 = write) against one register file; #GP if refused."""
    if req.info1:
        value = (req.reg("rax") & _U32) | ((req.reg("rdx") & _U32) << 32)
        if not write(req.vcpu.index, index, value):
            req.inject_exception(Vector.GP, 0)
            req.detail = f"WRMSR {index:#x} refused"
        return
    result = read(req.vcpu.index, index)
    if result is None:
        req.inject_exception(Vector.GP, 0)
        req.detail = f"RDMSR {index:#x} refused"
        return
    _set_edx_eax(req, result)


def rdtsc(hv: Hypervisor, req: Request) -> None:
    _set_edx_eax(req, hv.msrs.clock.read())


def rdtscp(hv: Hypervisor, req: Request) -> None:
    _set_edx_eax(req, hv.msrs.clock.read())
    req.set_reg("rcx", (hv.msrs.read(req.vcpu.index, Msr.TSC_AUX) or 0) & _U32)


def rdpmc(hv: Hypervisor, req: Request) -> None:
    if req.reg("rcx") & _U32 >= PMC_COUNT:
        req.inject_exception(Vector.GP, 0)
        return
    _set_edx_eax(req, 0)


def nothing(hv: Hypervisor, req: Request) -> None:
    """WBINVD, INVD, MONITOR, MWAIT: no cache or wait state to model (KVM: a NOP)."""


def vmmcall(hv: Hypervisor, req: Request) -> None:
    nr = req.reg("rax") & _U32
    call = hv.hypercalls.get(nr)
    if req.reg("cpl") & 3:  # hypercalls are for the kernel only (KVM: -KVM_EPERM)
        req.set_reg("rax", -KVM_EPERM)
    elif call is None:
        req.set_reg("rax", -KVM_ENOSYS)
    else:
        req.set_reg("rax", call(hv, req))


def dr7_read(hv: Hypervisor, req: Request) -> None:
    req.set_reg("rax", hv.vcpu_state(req.vcpu.index).regs.dr7)


def dr7_write(hv: Hypervisor, req: Request) -> None:
    value = req.reg("rax")
    if value >> 32:  # bits 63:32 of DR7 are reserved: #GP (APM vol 2, 13.1.1.5)
        req.inject_exception(Vector.GP, 0)
        return
    hv.vcpu_state(req.vcpu.index).regs.dr7 = value


def mmio_read(hv: Hypervisor, req: Request) -> None:
    gpa, length = req.info1, req.info2
    if length == 0:
        return
    data = b"".join(
        hv.mmio_bus.read_bytes(gpa + off, min(MMIO_CHUNK, length - off))
        for off in range(0, length, MMIO_CHUNK)
    )
    if not req.write_data(data):
        req.error(GhcbError.INVALID_SCRATCH_AREA, "MMIO read buffer unreachable")


def mmio_write(hv: Hypervisor, req: Request) -> None:
    gpa, length = req.info1, req.info2
    if length == 0:
        return
    data = req.read_data(length)
    if data is None:
        req.error(GhcbError.INVALID_SCRATCH_AREA, "MMIO write buffer unreachable")
        return
    for off in range(0, length, MMIO_CHUNK):
        hv.mmio_bus.write_bytes(gpa + off, data[off : off + MMIO_CHUNK])


def nmi_complete(hv: Hypervisor, req: Request) -> None:
    """The guest's NMI handler is done: the NMI window opens (sevx86.hv.smp)."""
    smp.nmi_complete(hv, req.vcpu.index)


def ap_hlt_loop(hv: Hypervisor, req: Request) -> None:
    """AP reset hold: parked until INIT + SIPI; SW_EXITINFO2 = 0 until then (KVM)."""
    smp.ap_reset_hold(hv, req.vcpu, smp.HoldKind.GHCB)


def ap_jump_table(hv: Hypervisor, req: Request) -> None:
    if req.info1 == AP_JUMP_TABLE_GET:
        req.set_info2(hv.ap_jump_table)
    else:
        hv.ap_jump_table = req.info2


def hv_features(hv: Hypervisor, req: Request) -> None:
    req.set_info2(hv.hv_features)


def terminate(hv: Hypervisor, req: Request) -> None:
    reason_set, reason_code = decode_sw_terminate(req.info1)
    hv.terminate(
        by="guest",
        reason_set=reason_set,
        reason_code=reason_code,
        detail=f"termination request (GHCB), reason set {reason_set} code {reason_code:#x}",
        vcpu=req.vcpu.index,
    )


def unsupported(hv: Hypervisor, req: Request) -> None:
    """The guest met an event it cannot handle; KVM stops the VM, so do we."""
    hv.terminate(
        by="guest",
        detail=f"guest reported an unsupported event: {exit_name(req.info1)}"
        f" (info2 {req.info2:#x})",
        vcpu=req.vcpu.index,
    )


HANDLERS: dict[int, Handler] = {
    SvmExit.CPUID: cpuid,
    SvmExit.IOIO: ioio,
    SvmExit.MSR: msr,
    SvmExit.RDTSC: rdtsc,
    SvmExit.RDTSCP: rdtscp,
    SvmExit.RDPMC: rdpmc,
    SvmExit.INVD: nothing,
    SvmExit.WBINVD: nothing,
    SvmExit.MONITOR: nothing,
    SvmExit.MWAIT: nothing,
    SvmExit.VMMCALL: vmmcall,
    SvmExit.DR7_READ: dr7_read,
    SvmExit.DR7_WRITE: dr7_write,
    SwExit.MMIO_READ: mmio_read,
    SwExit.MMIO_WRITE: mmio_write,
    SwExit.NMI_COMPLETE: nmi_complete,
    SwExit.AP_HLT_LOOP: ap_hlt_loop,
    SwExit.AP_JUMP_TABLE: ap_jump_table,
    SwExit.HV_FEATURES: hv_features,
    SwExit.TERMINATE: terminate,
    SwExit.UNSUPPORTED: unsupported,
}


def handler_name(code: int) -> str:
    """The ``handle_<name>`` suffix for an exit code: ``cpuid``, ``mmio_read``, ..."""
    return exit_name(code).lower()


__all__ = ["HANDLERS", "Handler", "handler_name"]
