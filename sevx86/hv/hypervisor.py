"""The untrusted hypervisor: a run loop over the vCPUs and a table of exit handlers.

``Hypervisor(host).run(timeout=..., max_instructions=...)`` sets KVM-like
intercepts, enters the guest with VMRUN and services every exit until the
guest ends the run (debug-exit, a termination request), dies (shutdown, a
failed VMRUN), halts for good, or a limit is reached. It returns a
``RunResult``; it never raises because of anything the guest did.

It only ever holds a ``HostView`` (docs/design.md, "Trust boundary"): DRAM as the
host sees it, the VMCB control areas, VMRUN -- and in modes none/sev the
registers an exit hands over.

Exit handling is two tables, with validation apart from emulation:

1. ``EXIT_TABLE``: hardware exit code -> method (VMGEXIT, HLT, CR write
   traps, SHUTDOWN, VMRUN failure, NPF, and the direct NAE exits of modes
   none/sev).
2. ``sevx86.hv.handlers.HANDLERS``: the emulation of each NAE request
   (CPUID, IOIO, MSR, MMIO, ...), shared by the GHCB path (after
   ``sevx86.hv.validate``) and the direct path; and
   ``sevx86.hv.msr_protocol.MSR_PROTOCOL_HANDLERS`` for the GHCB MSR protocol.

Instrumenting or malicious hypervisors (examples in the ``sevx86.hv``
package docstring and tests/hv/test_malicious.py) change behaviour in three
ways:

* subclass and define ``handle_<name>(self, req)`` to replace the emulation
  of one request (``handle_cpuid``, ``handle_msr``, ``handle_mmio_read``...);
* ``hv.on_request(code, hook)`` / ``hv.on_vmgexit(sw_exitcode, hook)`` /
  ``hv.on_exit(code, hook)`` / ``hv.on_msr_protocol(ghcb_info, hook)``:
  ``hook(ctx, proceed)`` runs around the handling; call ``proceed()`` to get
  the normal answer and then change it, or don't, to replace it;
* replace ``hv.cpuid`` (a ``CpuidTable``) or ``hv.msrs`` (an ``MsrPolicy``).
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from sevx86.arch.apic import X2APIC_ICR, XAPIC_BASE, XAPIC_PAGE_SIZE, ApicReg, Icr
from sevx86.arch.bits import U64_MASK as _U64
from sevx86.arch.exits import (
    CR_WRITE_TRAPS,
    NAE_INSTRUCTION_EXITS,
    SvmExit,
    SwExit,
    cr_write_trap_number,
    exit_name,
)
from sevx86.arch.ghcb import (
    GHCB_PROTOCOL_MAX,
    GHCB_SIZE,
    ExitInfoResult,
    GhcbError,
    decode_answer,
    msr_info,
    msr_sev_info_response,
)
from sevx86.arch.msr import Msr
from sevx86.arch.vectors import vector_name
from sevx86.arch.vmcb import EventType, Intercept, decode_event, decode_ioio, encode_event
from sevx86.config import GuestConfig, GuestMode
from sevx86.cpu.vmcb import Vmcb
from sevx86.hv import direct, msr_protocol, smp
from sevx86.hv.clock import VirtualClock
from sevx86.hv.cpuid import CpuidTable
from sevx86.hv.devices import (
    COM1,
    DEBUG_EXIT_PORT,
    DEBUGCON_PORT,
    MMIO_TEST_BASE,
    Console,
    DebugCon,
    DebugExit,
    IoBus,
    MmioBus,
    MmioTestDevice,
    Serial16550,
)
from sevx86.hv.devices.lapic import LocalApic, LocalApics
from sevx86.hv.devices.mmio_test import MMIO_TEST_SIZE
from sevx86.hv.ghcb import GhcbPage
from sevx86.hv.handlers import HANDLERS, Handler, handler_name
from sevx86.hv.msr_policy import PASSTHROUGH_MSRS, PASSTHROUGH_MSRS_SEV_ES, MsrPolicy
from sevx86.hv.requests import GhcbRequest, RegisterRequest, Request, error_name
from sevx86.hv.run import RunReason, RunResult, Termination
from sevx86.hv.scheduler import DeterministicScheduler, Scheduler
from sevx86.hv.validate import Invalid, describe_request, validate_vmgexit
from sevx86.hv.vcpu_state import MpState, VcpuHvState
from sevx86.machine import HostVcpu, HostView
from sevx86.vmexit import StopReason, VmExit

# A hook is ``hook(ctx, proceed)``: ``proceed()`` runs the rest of the chain
# (later hooks, then the handler); the context type depends on the hook point.
Proceed = Callable[[], None]
ExitHook = Callable[["ExitEvent", Proceed], None]
RequestHook = Callable[[Request, Proceed], None]
VmgexitHook = Callable[[GhcbRequest, Proceed], None]
MsrProtocolHook = Callable[[msr_protocol.MsrProtocolRequest, Proceed], None]
Hook = ExitHook | RequestHook | VmgexitHook | MsrProtocolHook

# Hardware exit code -> method name. The direct NAE exits of modes none/sev
# all go to _exit_direct, which turns them into requests for HANDLERS.
EXIT_TABLE: dict[int, str] = {
    SvmExit.VMGEXIT: "_exit_vmgexit",
    SvmExit.HLT: "_exit_hlt",
    SvmExit.SHUTDOWN: "_exit_shutdown",
    SvmExit.INVALID: "_exit_invalid",
    SvmExit.NPF: "_exit_npf",
    SvmExit.EFER_WRITE_TRAP: "_exit_cr_trap",
    SvmExit.INTR: "_exit_nothing",
    SvmExit.NMI: "_exit_nothing",
    **{code: "_exit_cr_trap" for code in CR_WRITE_TRAPS},
    # Without SEV-ES the guest's NAE instructions reach the host directly.
    **{code: "_exit_direct" for code in NAE_INSTRUCTION_EXITS},
}

# KVM-like intercepts (arch/x86/kvm/svm/svm.c init_vmcb, sev.c sev_es_init_vmcb).
DEFAULT_INTERCEPTS: tuple[Intercept, ...] = (
    Intercept.CPUID,
    Intercept.HLT,
    Intercept.VMMCALL,
    Intercept.RDTSC,
    Intercept.RDTSCP,
    Intercept.RDPMC,
    Intercept.INVD,
    Intercept.WBINVD,
    Intercept.MONITOR,
    Intercept.MWAIT,
    Intercept.SHUTDOWN,
)
SEV_ES_TRAPS: tuple[int, ...] = (
    Intercept.CR0_WRITE_TRAP,
    Intercept.CR4_WRITE_TRAP,
    Intercept.CR8_WRITE_TRAP,
    Intercept.EFER_WRITE_TRAP,
)
DR7 = 7


class Hypervisor:
    """A KVM-like hypervisor for one guest, driven through its ``HostView``."""

    def __init__(
        self,
        host: HostView,
        *,
        cpuid: CpuidTable | dict | None = None,
        msrs: MsrPolicy | None = None,
        console: IO[bytes] | None = None,
        ghcb_max_version: int = GHCB_PROTOCOL_MAX,
        devices: bool = True,
        scheduler: Scheduler | None = None,
        ap_start: str = "sipi",
    ):
        self.host = host
        self.mode: GuestMode = host.mode
        self.config: GuestConfig = host.config
        self.cpuid = CpuidTable.default(host.config) if cpuid is None else CpuidTable.coerce(cpuid)
        self.msrs = msrs if msrs is not None else MsrPolicy.default()
        self.ghcb_max_version = ghcb_max_version
        self.hv_features = 0  # GHCB v2 feature bitmap: no SNP features
        self.ap_jump_table = 0
        self.hypercalls: dict[int, Callable[[Hypervisor, Request], int]] = {}
        self.console = Console(stream=console, log=self._log_console)
        self.io_bus = IoBus()
        self.mmio_bus = MmioBus()
        self.counters: Counter[str] = Counter()
        # Several vCPUs (sevx86.hv.smp, sevx86.hv.scheduler): APs wait for
        # INIT-SIPI unless ap_start="run"; the scheduler decides who runs.
        self._states = [VcpuHvState(v.index) for v in host.vcpus]
        for st in self._states:
            st.events.mp_state = smp.initial_state(st.index, ap_start)
        self.scheduler: Scheduler = scheduler or DeterministicScheduler()
        # Platform time (APIC timer; QemuPc's timers advance it at every exit).
        self.platform_clock = VirtualClock()
        # One local APIC per vCPU; the APIC ID of vCPU n is n (as QEMU numbers them).
        self.lapic = LocalApics(
            [
                LocalApic(
                    self.platform_clock,
                    v.index,
                    send_ipi=self._apic_send_ipi,
                    deliver=self._apic_deliver,
                    log=self.host.log,
                )
                for v in host.vcpus
            ],
            current=lambda: self.current_vcpu or 0,
        )
        self.current_vcpu: int | None = None  # whose exit is being handled
        self._hooks: dict[tuple[str, int], list[Hook]] = {}
        self._handlers = self._handler_table()
        self._msr_handlers = dict(msr_protocol.MSR_PROTOCOL_HANDLERS)
        self._setup_done = False
        self._result: RunResult | None = None
        if devices:
            self._add_default_devices()

    # ------------------------------------------------------------------ devices
    def _add_default_devices(self) -> None:
        self.serial = Serial16550(self.console)
        self.io_bus.register(COM1, 8, self.serial)
        self.io_bus.register(DEBUGCON_PORT, 1, DebugCon(self.console))
        self.io_bus.register(DEBUG_EXIT_PORT, 4, DebugExit(self.exit_status))
        self.mmio_test = MmioTestDevice()
        self.mmio_bus.register(MMIO_TEST_BASE, MMIO_TEST_SIZE, self.mmio_test)
        # The xAPIC page of the accessing vCPU's local APIC.
        self.mmio_bus.register(XAPIC_BASE, XAPIC_PAGE_SIZE, self.lapic)

    # ------------------------------------------------------------------ hooks
    def on_exit(self, code: int, hook: ExitHook | None = None) -> Any:
        """Hook a hardware exit (``ctx`` is an ``ExitEvent``), before any handling."""
        return self._add_hook("exit", code, hook)

    def on_request(self, code: int, hook: RequestHook | None = None) -> Any:
        """Hook an NAE request (``ctx`` is a ``Request``) on any path (GHCB or direct)."""
        return self._add_hook("request", code, hook)

    def on_vmgexit(self, sw_exitcode: int, hook: VmgexitHook | None = None) -> Any:
        """Hook a validated GHCB request (``ctx`` is a ``GhcbRequest``, SEV-ES only)."""
        return self._add_hook("vmgexit", sw_exitcode, hook)

    def on_msr_protocol(self, ghcb_info: int, hook: MsrProtocolHook | None = None) -> Any:
        """Hook a GHCB MSR-protocol request (``ctx`` is a ``MsrProtocolRequest``)."""
        return self._add_hook("msr", ghcb_info, hook)

    def hooked(self) -> list[tuple[str, int]]:
        """(kind, code) of every hook registered: "exit", "request", "vmgexit", "msr"."""
        return [key for key, hooks in self._hooks.items() if hooks]

    def _add_hook(self, kind: str, code: int, hook: Hook | None) -> Any:
        def register(fn: Hook) -> Hook:
            self._hooks.setdefault((kind, int(code)), []).append(fn)
            return fn

        return register(hook) if hook is not None else register

    def _chain(self, keys: list[tuple[str, int]], ctx: Any, final: Callable[[Any], None]) -> None:
        hooks = [h for key in keys for h in self._hooks.get(key, ())]
        if not hooks:
            final(ctx)
            return

        def step(i: int) -> None:
            if i == len(hooks):
                final(ctx)
            else:
                hooks[i](ctx, lambda: step(i + 1))

        step(0)

    def _handler_table(self) -> dict[int, Handler]:
        """HANDLERS, with any ``handle_<name>`` a subclass defines in place of the default."""
        table: dict[int, Handler] = {}
        for code, fn in HANDLERS.items():
            method = getattr(type(self), f"handle_{handler_name(code)}", None)
            table[code] = (lambda hv, req, m=method: m(hv, req)) if method else fn
        return table

    # ------------------------------------------------------------------ state
    def vcpu_state(self, index: int) -> VcpuHvState:
        return self._states[index]

    # ------------------------------------------------------------------ events (smp)
    def request_nmi(self, vcpu: int) -> None:
        """Ask for an NMI on ``vcpu``: injected when its NMI window is open."""
        with self.scheduler.lock:
            smp.request_nmi(self, vcpu)

    def request_interrupt(self, vcpu: int, vector: int) -> None:
        """Raise external interrupt ``vector`` on ``vcpu``: injected once IF=1."""
        with self.scheduler.lock:
            smp.request_interrupt(self, vcpu, vector)

    def send_ipi(self, source: int, icr: int, *, x2apic: bool = True) -> None:
        """An ICR write of vCPU ``source`` (what the guest's APIC write does)."""
        apic = self.lapic[source]
        with self.scheduler.lock:
            if x2apic:
                apic.msr_write(X2APIC_ICR, icr)
            else:
                apic.write_reg(ApicReg.ICR_HIGH, icr >> 32)
                apic.write_reg(ApicReg.ICR_LOW, icr)

    def _apic_send_ipi(self, source: int, icr: Icr) -> None:
        """A local APIC sends an IPI (an ICR write of the guest, lock held)."""
        smp.send_ipi(self, source, icr)

    def _apic_deliver(self, apic_id: int, vector: int) -> None:
        """A local APIC accepted an interrupt: the event path injects it."""
        smp.request_interrupt(self, apic_id, vector)

    def wake(self, index: int) -> None:
        """A vCPU's state changed: let the scheduler run it (and kick it if running)."""
        self.scheduler.wake(self, index)

    def log(self, kind: str, summary: str, *, vcpu: int | None = None, **data: object) -> None:
        """Add a host event to the trace (``HostView.log``)."""
        self.host.log(kind, summary, vcpu=vcpu, **data)

    def _log(self, kind: str, summary: str, *, vcpu: int | None = None, **data: object) -> None:
        self.host.log(kind, summary, vcpu=vcpu, **data)

    def _log_console(self, kind: str, summary: str, **data: object) -> None:
        """A line of guest output, on the vCPU whose exit completed it (several vCPUs print)."""
        self._log(kind, summary, vcpu=self.current_vcpu, **data)

    # ------------------------------------------------------------------ ending the run
    def exit_status(self, status: int) -> None:
        """The debug-exit device: end the run with ``status``."""
        self._end(RunReason.EXIT_STATUS, f"guest exit status {status}", exit_status=status)

    def terminate(
        self,
        *,
        by: str,
        reason_set: int | None = None,
        reason_code: int | None = None,
        detail: str = "",
        vcpu: int | None = None,
    ) -> None:
        """End the run: the guest asked to terminate, or the hypervisor refuses to go on."""
        if vcpu is not None and len(self._states) > 1:
            detail = f"vCPU {vcpu}: {detail}"  # with several, say which one
        self._log(
            "terminate",
            f"terminated by the {by}: {detail}",
            vcpu=vcpu,
            by=by,
            reason_set=reason_set,
            reason_code=reason_code,
        )
        self._end(
            RunReason.TERMINATED,
            detail,
            vcpu=vcpu,
            termination=Termination(by, reason_set, reason_code, detail),
        )

    def stop(self, detail: str, *, vcpu: int | None = None) -> None:
        """End the run after the exit being handled (a device powered off, a watcher is done)."""
        self._end(RunReason.STOPPED, detail, vcpu=vcpu)

    def power_off(self, detail: str) -> None:
        """The platform powered off at the guest's request (ACPI S5): the run ends cleanly."""
        self._end(RunReason.POWERED_OFF, detail, exit_status=0)

    def _end(self, reason: RunReason, detail: str, **kw: Any) -> None:
        if self._result is None:
            self._result = RunResult(reason, detail=detail, **kw)

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Program the intercepts (once, before the first VMRUN), as KVM does."""
        if self._setup_done:
            return
        self._setup_done = True
        es = self.mode is GuestMode.SEV_ES
        for v in self.host.vcpus:
            vmcb = v.vmcb
            vmcb.intercept(*DEFAULT_INTERCEPTS)
            vmcb.intercept_all_io()
            vmcb.intercept_all_msrs()
            for msr in PASSTHROUGH_MSRS + (PASSTHROUGH_MSRS_SEV_ES if es else ()):
                vmcb.set_msr_intercept(msr, read=False, write=False)
            # The hardware virtualizes the GHCB MSR (and SEV_STATUS); never intercept it.
            vmcb.set_msr_intercept(Msr.SEV_ES_GHCB, read=False, write=False)
            if es:
                # DR7 has no state the host could emulate without the #VC
                # handler's help; the CR/EFER traps keep the host informed.
                vmcb["intercept_dr_read"] = vmcb["intercept_dr_read"] | (1 << DR7)
                vmcb["intercept_dr_write"] = vmcb["intercept_dr_write"] | (1 << DR7)
                vmcb.intercept(*SEV_ES_TRAPS)
                # At reset the GHCB MSR holds the SEV information (GHCB spec,
                # "SEV Information"; KVM sev_es_init_vmcb).
                vmcb["ghcb_gpa"] = msr_sev_info_response(
                    self.ghcb_max_version, 1, self.config.cbitpos
                )

    # ------------------------------------------------------------------ the run loop
    def run(
        self, *, timeout: float | None = None, max_instructions: int | None = None
    ) -> RunResult:
        """Run the guest until it ends, dies, halts, or a limit is reached.

        ``timeout`` bounds the whole run (wall clock, seconds);
        ``max_instructions`` bounds each guest entry (the engine counts
        translation blocks, so it is approximate). ``run`` may be called again
        after a timeout or limit: the guest continues where it was.
        """
        self.setup()
        start = time.perf_counter()
        deadline = None if timeout is None else start + timeout
        self._result = None
        exits = self.scheduler.run(self, deadline, max_instructions)
        result = self._result
        assert result is not None
        result.console = self.console.text()
        result.outputs = {k: bytes(v) for k, v in self.console.outputs.items()}
        result.counters = dict(self.counters)
        result.exits = exits
        result.elapsed = time.perf_counter() - start
        result.dead_vcpus = {
            st.index: f"{st.dead.reason.value}: {st.dead.detail}"
            for st in self._states
            if st.dead is not None
        }
        self._log("run-end", f"run ended: {result.reason.value} {result.detail}".strip())
        return result

    # ------------------------------------------------------------------ RunTarget
    # What a scheduler drives (sevx86.hv.run.RunTarget): KVM's vcpu_enter_guest
    # loop, with the "who runs when" part left to the scheduler.
    @property
    def vcpus(self) -> list[HostVcpu]:
        return self.host.vcpus

    @property
    def done(self) -> bool:
        return self._result is not None

    def wake_on_event(self, index: int) -> None:
        smp.wake_on_event(self, self._states[index])

    def runnable(self, index: int) -> bool:
        return smp.is_runnable(self._states[index])

    def dead(self, index: int) -> bool:
        return self._states[index].dead is not None

    def prepare_entry(self, index: int) -> None:
        smp.prepare_entry(self, self.host.vcpus[index])

    def preempted(self, index: int, exit: VmExit) -> None:
        smp.note_exit(self, self.host.vcpus[index], exit)

    def end(self, reason: RunReason, detail: str, *, vcpu: int | None = None) -> None:
        self._end(reason, detail, vcpu=vcpu)

    def enable_parallel(self) -> None:
        self.host.enable_parallel()

    def no_runnable_vcpu(self) -> None:
        dead = [st.dead for st in self._states if st.dead is not None]
        if len(dead) == len(self._states):
            # Every vCPU died earlier: say how again, rather than "halted".
            first = dead[0]
            self._end(first.reason, f"the vCPU is dead: {first.detail}", vcpu=first.vcpu)
            return
        self._end(
            RunReason.HALTED,
            f"no vCPU can run and nothing can wake one: {smp.describe_stuck(self)}",
        )

    def handle_exit(self, index: int, exit: VmExit) -> None:
        """Handle one exit of vCPU ``index``; a bug in a handler or hook ends the run."""
        vcpu = self.host.vcpus[index]
        try:
            smp.note_exit(self, vcpu, exit)
            self._handle_exit(vcpu, exit)
        except Exception as exc:  # a bug in a handler or a user hook
            self._end(
                RunReason.HYPERVISOR_ERROR,
                f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}",
                vcpu=index,
            )

    def states(self) -> list[VcpuHvState]:
        """Every vCPU's host state, by index."""
        return list(self._states)

    # ------------------------------------------------------------------ exits
    def _handle_exit(self, vcpu: HostVcpu, exit: VmExit) -> None:
        self.current_vcpu = vcpu.index
        if exit.stop is not None:
            self._stopped(vcpu, exit)
            return
        self.counters[exit_name(exit.code)] += 1
        event = ExitEvent(self, vcpu, exit)
        self._chain([("exit", exit.code)], event, self._dispatch_exit)

    def _dispatch_exit(self, event: ExitEvent) -> None:
        method = EXIT_TABLE.get(event.exit.code)
        if method is None:
            self._end(
                RunReason.HYPERVISOR_ERROR,
                f"no handler for exit {exit_name(event.exit.code)}",
                vcpu=event.vcpu.index,
            )
            return
        getattr(self, method)(event.vcpu, event.exit)

    def _stopped(self, vcpu: HostVcpu, exit: VmExit) -> None:
        reason = {
            StopReason.TIMEOUT: RunReason.TIMEOUT,
            StopReason.INSTRUCTION_LIMIT: RunReason.INSTRUCTION_LIMIT,
            StopReason.EMULATION_ERROR: RunReason.EMULATION_ERROR,
            StopReason.KICKED: None,
        }[exit.stop]  # type: ignore[index]
        if reason is None:
            return  # the host took the CPU back for itself: nothing ends
        if not vcpu.alive:
            self._died(vcpu, reason, exit.detail)
            return
        self._end(reason, exit.detail, vcpu=vcpu.index)

    def _exit_nothing(self, vcpu: HostVcpu, exit: VmExit) -> None:
        """Physical interrupt or NMI: the host had its turn; re-enter."""

    def _exit_shutdown(self, vcpu: HostVcpu, exit: VmExit) -> None:
        self._died(vcpu, RunReason.SHUTDOWN, exit.detail or "shutdown (triple fault)")

    def _exit_invalid(self, vcpu: HostVcpu, exit: VmExit) -> None:
        self._died(vcpu, RunReason.VMRUN_FAILED, exit.detail or "VMRUN failed")

    def _died(self, vcpu: HostVcpu, reason: RunReason, detail: str) -> None:
        self._states[vcpu.index].dead = RunResult(reason, detail=detail, vcpu=vcpu.index)
        alive = [st for st in self._states if st.dead is None]
        if reason is RunReason.VMRUN_FAILED and alive:
            # Only this vCPU's VMRUN failed (its VMSA, its integrity tag): the
            # others go on; the result names it in dead_vcpus.
            self._log(
                "vcpu-dead",
                f"vCPU {vcpu.index} can no longer run ({reason.value}: {detail});"
                f" {len(alive)} vCPU(s) go on",
                vcpu=vcpu.index,
                reason=reason.value,
            )
            return
        self._end(reason, detail, vcpu=vcpu.index)

    def _exit_hlt(self, vcpu: HostVcpu, exit: VmExit) -> None:
        st = self._states[vcpu.index]
        if exit.regs is not None:
            # Direct exit: the host moves RIP past HLT (KVM kvm_emulate_halt).
            exit.regs["rip"] = vcpu.vmcb["next_rip"]
            if_flag = bool(exit.regs["rflags"] & (1 << 9))
            where = f" at {exit.rip:#x} with IF={int(if_flag)}"
        else:
            # SEV-ES: the CPU advanced RIP; the VMCB interrupt state gives IF.
            where = f" with IF={int(st.events.guest_if)}"
        st.events.mp_state = MpState.HALTED
        self._log("halt", f"vCPU {vcpu.index} halted{where}", vcpu=vcpu.index)

    def _exit_cr_trap(self, vcpu: HostVcpu, exit: VmExit) -> None:
        """SEV-ES CR/EFER write trap: the write happened; the new value is in EXITINFO1."""
        st = self._states[vcpu.index]
        if exit.code == SvmExit.EFER_WRITE_TRAP:
            st.regs.efer = exit.info1
            what = "EFER"
        else:
            n = cr_write_trap_number(exit.code)
            what = f"CR{n}"
            if n in (0, 4, 8):
                setattr(st.regs, f"cr{n}", exit.info1)
        self._log("cr-trap", f"{what} <- {exit.info1:#x}", vcpu=vcpu.index, value=exit.info1)

    # -- SEV-ES: VMGEXIT -------------------------------------------------------------
    def _exit_vmgexit(self, vcpu: HostVcpu, exit: VmExit) -> None:
        msr = vcpu.vmcb["ghcb_gpa"]
        if msr_info(msr):  # GHCBInfo set: an MSR-protocol request, not a GHCB GPA
            self._msr_protocol(vcpu, msr)
            return
        self._ghcb_request(vcpu, msr)

    def _msr_protocol(self, vcpu: HostVcpu, value: int) -> None:
        req = msr_protocol.parse(vcpu, value)
        self.counters[f"msr-protocol:{req.name}"] += 1
        handled: list[int | None] = []  # the response the handler chose, if it ran

        def serve(r: msr_protocol.MsrProtocolRequest) -> None:
            handler = self._msr_handlers.get(r.code)
            if handler is None:
                r.note = f"unknown request {r.code:#x} -> not supported (MSR left unchanged)"
            else:
                handler(self, r)
            handled.append(r.response)

        self._chain([("msr", req.code)], req, serve)
        if req.response is not None:
            vcpu.vmcb["ghcb_gpa"] = req.response & _U64
        # The trace says what the guest receives: a hook's answer is described anew.
        note = req.note or req.name
        changed = None
        if not handled:
            changed = "answered by a hook"
        elif handled[0] != req.response:
            changed = "changed by a hook"
        if changed:
            note = f"{msr_protocol.describe_response(req)} [{changed}]"
        self._log(
            "msr-protocol",
            f"GHCB MSR {value:#x}: {note}",
            vcpu=vcpu.index,
            target="guest",
            request=value,
            response=req.response,
            hook=changed,
        )

    def _ghcb_request(self, vcpu: HostVcpu, gpa: int) -> None:
        memory = self.host.memory
        index = vcpu.index
        if gpa == 0:
            self.terminate(
                by="hypervisor", detail="VMGEXIT without a GHCB (GHCB MSR is 0)", vcpu=index
            )
            return
        if not memory.contains(gpa, GHCB_SIZE):
            self.terminate(by="hypervisor", detail=f"GHCB at {gpa:#x} is not guest RAM", vcpu=index)
            return
        st = self._states[index]
        if st.ghcb.registered is not None and gpa != st.ghcb.registered:
            # GHCB spec 56421, 2.3.2 "GHCB GPA Registration": once a GHCB is
            # registered the guest must use it, and the hypervisor terminates
            # a guest that does not (KVM's sev_handle_vmgexit returned -EINVAL,
            # ending the VM, from 2021; since 2026 it answers NOT_REGISTERED in
            # that page instead). sevx86 follows the spec: no answer is written
            # into a page the guest never registered.
            self.terminate(
                by="hypervisor",
                detail=f"VMGEXIT with GHCB {gpa:#x}, not the registered {st.ghcb.registered:#x}",
                vcpu=index,
            )
            return
        page = GhcbPage.read(memory, gpa)
        valid = validate_vmgexit(page, max_version=self.ghcb_max_version, contains=memory.contains)
        if isinstance(valid, Invalid):
            self._ghcb_error(vcpu, page, valid)
            return
        st.ghcb.protocol_version = valid.version
        name = exit_name(valid.code)
        self.counters[f"vmgexit:{name}"] += 1
        tracing = self.host.tracing
        if tracing:
            self._log(
                "vmgexit",
                f"VMGEXIT {name}: {describe_request(valid)}; valid: {' '.join(valid.valid)}",
                vcpu=index,
                code=valid.code,
                name=name,
                info1=valid.info1,
                info2=valid.info2,
                valid=list(valid.valid),
            )
        req = GhcbRequest(vcpu, page, valid, memory.read, memory.write)
        try:
            self._chain(
                [("vmgexit", valid.code), ("request", valid.code)], req, self._serve_request
            )
        finally:
            info1, info2 = req.finish()
            page.write_back(memory)
        if tracing:
            self._log_answer(vcpu, req, info1, info2)

    def _ghcb_error(self, vcpu: HostVcpu, page: GhcbPage, invalid: Invalid) -> None:
        """Answer a malformed request the GHCB v2 way: SW_EXITINFO1 = 2, reason in EXITINFO2."""
        reason = error_name(invalid.reason)
        self.counters[f"ghcb-error:{reason}"] += 1
        page.clear_valid()
        page.answer(2, int(invalid.reason))
        page.write_back(self.host.memory)
        self._log(
            "ghcb-error",
            f"VMGEXIT refused: {reason} ({invalid.detail})",
            vcpu=vcpu.index,
            target="guest",
            reason=int(invalid.reason),
            detail=invalid.detail,
        )

    def _log_answer(self, vcpu: HostVcpu, req: Request, info1: int, info2: int) -> None:
        """What the guest received (after every hook), and whether a hook changed it."""
        answer = decode_answer(info1, info2)
        if answer.result == ExitInfoResult.ERROR:
            reason = error_name(answer.info2)
            self.counters[f"ghcb-error:{reason}"] += 1
            what = f"error {reason}"
        elif answer.result == ExitInfoResult.EXCEPTION:
            what = f"inject {vector_name(decode_event(answer.info2).vector)}"
        elif answer.result == ExitInfoResult.OK:
            outs = getattr(req, "outputs", {})
            what = "ok" + "".join(f" {k}={v:#x}" for k, v in outs.items())
        else:
            what = f"SW_EXITINFO1 {info1:#x}, SW_EXITINFO2 {info2:#x}"
        if req.detail:
            what += f" ({req.detail})"
        changed = req.hook_changed
        if changed:
            what += f" [{changed}]"
        self._log(
            "ghcb-answer",
            f"{req.name} -> {what}",
            vcpu=vcpu.index,
            target="guest",
            info1=info1,
            info2=info2,
            hook=changed,
        )

    def serve_request(self, req: Request) -> None:
        """Emulate one NAE request: ``on_request`` hooks around the handler table.

        Every path that emulates an instruction for the guest goes through
        here -- GHCB requests (after the ``on_vmgexit`` hooks), direct exits,
        MMIO, and the MSR protocol's CPUID.
        """
        self._chain([("request", req.code)], req, self._serve_request)

    def _serve_request(self, req: Request) -> None:
        handler = self._handlers.get(req.code)
        if handler is None:
            req.error(GhcbError.INVALID_EVENT, f"no handler for {req.name}")
        else:
            handler(self, req)
        req.handled = req.answer_state()

    # -- modes none / sev: direct exits -------------------------------------------------
    def _exit_direct(self, vcpu: HostVcpu, exit: VmExit) -> None:
        regs = exit.regs
        if regs is None:  # an NAE exit under SEV-ES would be a CPU bug
            self._end(
                RunReason.HYPERVISOR_ERROR,
                f"direct exit {exit_name(exit.code)} without registers",
                vcpu=vcpu.index,
            )
            return
        req = RegisterRequest(vcpu, exit.code, exit.info1, exit.info2, regs)
        string = None
        if exit.code == SvmExit.IOIO:
            io = decode_ioio(exit.info1)
            if io.string:
                string = direct.string_io(io, regs, self.host.memory)
                if not string.reachable:
                    req.error(GhcbError.INVALID_INPUT, "string I/O buffer is not guest RAM")
                    self._finish_direct(vcpu, req, vcpu.vmcb["next_rip"])
                    return
                req.count = string.count
                req.use_data(string.data_read, string.data_write)
        self.serve_request(req)
        if string is not None and not req.failed:
            req.retry = not string.done()
        self._finish_direct(vcpu, req, vcpu.vmcb["next_rip"])

    def _finish_direct(self, vcpu: HostVcpu, req: RegisterRequest, next_rip: int) -> None:
        event = req.finish(next_rip)
        if event is not None:
            vector, code = event
            value = encode_event(vector, EventType.EXCEPTION, error_code=code)
            vcpu.vmcb["event_inj"] = value & 0xFFFF_FFFF
            vcpu.vmcb["event_inj_err"] = value >> 32
            self._log(
                "inject",
                f"{req.name}: inject {vector_name(vector)} ({req.detail or 'refused'})",
                vcpu=vcpu.index,
                target="guest",
                vector=vector,
            )

    def _exit_npf(self, vcpu: HostVcpu, exit: VmExit) -> None:
        """A nested page fault outside RAM is MMIO: decode the MOV and emulate it."""
        regs = exit.regs
        if regs is None:
            # SEV-ES: an NPF that is not MMIO's (a write to a read-only page)
            # comes without registers or instruction bytes. KVM cannot emulate
            # it and re-enters the guest, which faults again forever (OVMF's
            # QemuFlashDetected says so); end the run and say why instead.
            self._end(
                RunReason.EMULATION_ERROR,
                f"NPF at GPA {exit.info2:#x} (error code {exit.info1:#x}) of an SEV-ES guest: "
                "its registers are encrypted, the access cannot be emulated",
                vcpu=vcpu.index,
            )
            return
        vmcb = vcpu.vmcb
        insn = vmcb.insn_bytes
        bits = direct.code_bits(regs)
        rip = exit.rip if exit.rip is not None else regs["rip"]
        try:
            access = direct.decode_mmio(insn, bits)
        except direct.MmioDecodeError as exc:
            self._end(
                RunReason.EMULATION_ERROR,
                f"hypervisor cannot emulate MMIO at {exit.info2:#x}: {exc}",
                vcpu=vcpu.index,
            )
            return
        # EXITINFO2 is the faulting GPA to the byte (APM vol 2, 15.25.6).
        gpa = exit.info2
        loaded: list[bytes] = []
        code = SwExit.MMIO_WRITE if access.write else SwExit.MMIO_READ
        value = direct.store_value(access, regs) if access.write else 0

        def data_read(size: int) -> bytes:
            return value.to_bytes(access.size, "little")[:size]

        def data_write(data: bytes) -> bool:
            loaded.append(bytes(data))
            return True

        req = RegisterRequest(
            vcpu, code, gpa, access.size, regs, data_read=data_read, data_write=data_write
        )
        self._log("mmio", f"{access.text} at GPA {gpa:#x}", vcpu=vcpu.index, gpa=gpa)
        self.serve_request(req)
        if not req.failed and not access.write and loaded:
            direct.load_result(access, regs, int.from_bytes(loaded[0], "little"))
        self._finish_direct(vcpu, req, rip + access.length)


@dataclass
class ExitEvent:
    """A hardware exit as ``on_exit`` hooks see it."""

    hv: Hypervisor
    vcpu: HostVcpu
    exit: VmExit

    @property
    def code(self) -> int:
        return self.exit.code

    @property
    def vmcb(self) -> Vmcb:
        return self.vcpu.vmcb


__all__ = [
    "EXIT_TABLE",
    "ExitEvent",
    "ExitHook",
    "Hypervisor",
    "MsrProtocolHook",
    "Proceed",
    "RequestHook",
    "VmgexitHook",
]
