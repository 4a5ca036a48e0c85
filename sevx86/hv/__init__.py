"""The untrusted hypervisor: exit handling, the GHCB protocol, devices.

Running a guest (what the ``sevx86`` CLI does)::

    from sevx86.harness import GuestSpec, build_machine
    from sevx86.hv import Hypervisor, RunReason

    machine, _ = build_machine(GuestSpec(source, handlers={29: "vc_handler"}))
    hv = Hypervisor(machine.host_view(), console=sys.stdout.buffer)
    result = hv.run(timeout=10)
    if result.reason is RunReason.EXIT_STATUS:
        sys.exit(result.exit_status)  # the guest wrote N to port 0xF4

``run`` never raises for anything the guest does; ``result.reason`` says why
it returned (exit-status, terminated, shutdown, vmrun-failed, halted (the
detail says what each vCPU waits for), timeout, instruction-limit,
emulation-error, hypervisor-error, stopped), with
``detail``, ``termination`` (who and which reason set/code), ``console``
(serial + debug console output), ``counters`` (per exit kind) and ``exits``.
``timeout`` bounds the whole call; ``max_instructions`` bounds each guest
entry. After a timeout or a limit, ``run`` may be called again.

Devices: 16550 UART at 0x3F8, debug console at 0x402 (QEMU isa-debugcon),
debug-exit at 0xF4 (a write of N ends the run with status N), an MMIO test
device at 0xFEB0_0000 (sevx86/hv/devices/mmio_test.py). Add your own with
``hv.io_bus.register(port, length, device)`` / ``hv.mmio_bus.register``.
``sevx86.hv.machines.QemuPc`` adds the devices of QEMU's ``pc`` machine
that firmware such as OVMF needs (fw_cfg, CMOS/RTC, PCI configuration with
the i440FX/PIIX functions, the ACPI PM timer, the local APIC).

Several vCPUs (``GuestConfig(vcpus=N)``; ``sevx86.hv.smp``, ``sevx86.hv.scheduler``)::

    hv = Hypervisor(host, scheduler=DeterministicScheduler(seed=1), ap_start="sipi")
    hv = Hypervisor(host, scheduler=ParallelScheduler())   # a thread per vCPU
    hv.request_nmi(1); hv.request_interrupt(0, 0x30)       # from tests or hooks

APs wait for INIT-SIPI (``ap_start="run"`` starts them all at once); the
first SIPI starts an AP from its launch VMSA; AP reset hold and the AP jump
table follow the GHCB spec; x2APIC/xAPIC ICR writes become IPIs; NMIs wait
for NMI_COMPLETE; interrupts wait for IF=1. A vCPU whose VMRUN fails (its
VMSA was changed) stops alone: ``result.dead_vcpus`` names it.

A malicious (or instrumenting) hypervisor -- lie about the C-bit::

    from sevx86.hv.handlers import cpuid as default_cpuid

    class LyingCbit(Hypervisor):
        def handle_cpuid(self, req):          # replaces HANDLERS[CPUID]
            leaf = req.reg("rax")
            default_cpuid(self, req)          # the honest answer first
            if leaf == 0x8000_001F:
                req.set_reg("rbx", (req.reg("rbx") & ~0x3F) | 47)

or, without subclassing, with a hook around the normal handling::

    def lie(req, proceed):
        proceed()                             # skip this call to replace it
        if req.via_ghcb: ...                  # req.reg / req.set_reg / req.page

    hv.on_request(SvmExit.CPUID, lie)         # GHCB and direct paths
    hv.on_vmgexit(SvmExit.CPUID, lie)         # GHCB path only
    hv.on_msr_protocol(GhcbMsr.CPUID_REQ, h)  # req.response = ...
    hv.on_exit(SvmExit.VMGEXIT, h)            # raw exits: ctx.vcpu, ctx.exit, ctx.hv

An ``on_exit`` hook may also write host memory (``ctx.hv.host.memory``), for
instance flip a byte of the VMSA page (``ctx.vcpu.vmsa_gpa``): the next VMRUN
fails its integrity check and ``run`` returns ``vmrun-failed``.
tests/hv/test_malicious.py has these examples running.
"""

from sevx86.hv.cpuid import CpuidQuery, CpuidTable
from sevx86.hv.hypervisor import EXIT_TABLE, ExitEvent, Hypervisor
from sevx86.hv.msr_policy import MsrPolicy, MsrRule
from sevx86.hv.msr_protocol import MsrProtocolRequest
from sevx86.hv.requests import GhcbRequest, RegisterRequest, Request
from sevx86.hv.run import RunReason, RunResult, RunTarget, Termination
from sevx86.hv.scheduler import DeterministicScheduler, ParallelScheduler, Scheduler
from sevx86.hv.vcpu_state import MpState, VcpuHvState

__all__ = [
    "EXIT_TABLE",
    "CpuidQuery",
    "CpuidTable",
    "DeterministicScheduler",
    "ExitEvent",
    "GhcbRequest",
    "Hypervisor",
    "MsrPolicy",
    "MsrProtocolRequest",
    "MpState",
    "MsrRule",
    "ParallelScheduler",
    "RegisterRequest",
    "Request",
    "RunReason",
    "RunResult",
    "RunTarget",
    "Scheduler",
    "Termination",
    "VcpuHvState",
]
