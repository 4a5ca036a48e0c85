"""The vCPU: guest code on Unicorn in SVM guest mode, and what the CPU does at each event.

``VCpu`` is the facade the host side (``sevx86.machine.HostVcpu``) drives:
``vmrun()`` runs the guest until the next exit for the host. The concerns
live in modules named after them (docs/engine.md maps the whole path):

* this module: the Unicorn handle, the hooks, and the run loop around
  ``emu_start``, which acts on one ``StopRequest`` per iteration
  (``sevx86.cpu.stop``);
* ``sevx86.cpu.dispatch``: intercept code -> handler (KVM's
  ``svm_exit_handlers``), defaulting to the NAE/AE rules of
  ``sevx86.cpu.intercepts``;
* ``sevx86.cpu.emulate``: the CR writes, MSRs and INVLPG the engine
  performs itself;
* ``sevx86.cpu.world_switch``: VMRUN and the VMSA save, through
  ``sevx86.cpu.state.capture/apply`` and the ``VmsaGuard``;
* ``sevx86.cpu.io_rollback``: IN/OUT turned into the IOIO intercept;
* ``sevx86.cpu.exceptions`` plans an event's delivery,
  ``sevx86.cpu.delivery`` applies it (and VMRUN's EVENTINJ);
  ``sevx86.cpu.linear`` reads and writes guest-linear memory for it;
* ``sevx86.cpu.faults``: what a refused TLB fill means (#PF, NPF, a page
  form change).

Hooks for other engine users (a debugger's breakpoints and single-step,
SYSCALL and SYSENTER in ``sevx86.cpu.syscall``) go through ``add_code_hook``,
``add_insn_hook`` and ``add_intercept_handler`` below, not into Unicorn
directly (docs/engine.md, "Extending the engine").
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING

from unicorn import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_TLB_FILL,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_TLB_VIRTUAL,
    Uc,
    UcError,
)
from unicorn import x86_const as ux

from sevx86.arch.cr import Rflags
from sevx86.arch.exits import SvmExit, exit_name
from sevx86.arch.layout import U32_MASK, U64_MASK
from sevx86.arch.paging import PAGE_OFFSET_MASK
from sevx86.arch.vectors import Vector, has_error_code
from sevx86.arch.vmcb import (
    INT_STATE_GUEST_IF,
    INT_STATE_SHADOW,
)
from sevx86.config import GuestConfig, GuestMode
from sevx86.cpu import context as C
from sevx86.cpu import decode, delivery, dispatch, faults, state
from sevx86.cpu.context import CpuContext
from sevx86.cpu.exceptions import (
    CpuMode,
    Event,
    EventKind,
    GuestFault,
)
from sevx86.cpu.intercepts import UNICORN_INTERCEPT_BASE, VMGEXIT_BYTES
from sevx86.cpu.io_rollback import IoRollback
from sevx86.cpu.linear import GuestLinear
from sevx86.cpu.stop import ExitRecorded, StopLatch, StopRequest
from sevx86.cpu.svm import STUB, SvmHardware
from sevx86.cpu.syscall import FastSystemCalls
from sevx86.cpu.vmcb import Vmcb
from sevx86.cpu.watchdog import Watchdog
from sevx86.cpu.world_switch import WorldSwitch
from sevx86.memory.dram import PhysicalMemory
from sevx86.memory.mmu import (
    MMU,
    PagingState,
    TlbFiller,
)
from sevx86.vmexit import StopReason, VmExit

if TYPE_CHECKING:
    from sevx86.cpu.debug import VcpuDebug
    from sevx86.cpu.parallel import AtomicWatch, World
    from sevx86.cpu.vmsa_guard import VmsaGuard
    from sevx86.trace.events import Tracer

_STUB_PAGE = STUB & ~PAGE_OFFSET_MASK
_RFLAGS_IF = int(Rflags.IF)
_HLT_BYTE = b"\xf4"

# An extra intercept handler: True when it handled the code (sevx86.cpu.dispatch
# otherwise). See add_intercept_handler.
InterceptHook = Callable[["VCpu", int], bool]


class VcpuState(Enum):
    NEW = "new"  # not yet entered
    RUNNING = "running"
    DEAD = "dead"  # shutdown or failed VMRUN: never runs again


class VCpu:
    """One virtual CPU: Unicorn in SVM guest mode, driven by ``vmrun``."""

    def __init__(
        self,
        config: GuestConfig,
        memory: PhysicalMemory,
        tracer: Tracer,
        index: int,
        initial_state: bytes,
        vmsa_spa: int | None = None,
        guard: VmsaGuard | None = None,
    ):
        self.index = index
        self.config = config
        self.mode = config.mode
        self.memory = memory
        self.tracer = tracer
        self.vmsa_spa = vmsa_spa
        if self.mode is GuestMode.SEV_ES and (guard is None or vmsa_spa is None):
            raise ValueError("an SEV-ES vCPU needs its VMSA and a guard for it")
        self.vmcb = Vmcb()
        self.vmcb["vmsa_pa"] = vmsa_spa or 0
        self.status = VcpuState.NEW
        self.ghcb_msr = 0
        self.exits = 0
        self.vc_count = 0
        self.exit: VmExit | None = None  # the exit being recorded for the host
        # Why the vCPU died, in full: for the operator (trusted side), not the host.
        self.failure: str | None = None
        self.stop = StopLatch()
        # Parallel mode (sevx86.cpu.parallel): the stop-the-world gate and the
        # watch on atomic instructions; None when vCPUs take turns.
        self.world: World | None = None
        self.atomics: AtomicWatch | None = None
        self._intercept_hooks: list[InterceptHook] = []
        # A debugger's breakpoints and stops (sevx86.cpu.debug), None without one.
        self.debug: VcpuDebug | None = None

        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_cpu_model(ux.UC_CPU_X86_EPYC_ROME)
        self.uc = uc
        self.memory.attach(uc)
        self.svm = SvmHardware(uc)
        self.ctx = CpuContext(uc)
        self.mmu = MMU(self.memory, self.config)
        self.filler = TlbFiller(self.mmu, self.paging_state)
        self.linear = GuestLinear(self.mmu, self.memory, lambda: self.paging_state(cpl=0))
        self.io = IoRollback(self.ctx, self)
        self.switch = WorldSwitch(self, initial_state, guard)
        self._stub_pending = False
        self._entry = 0
        self._watchdog: Watchdog | None = None
        # No exit addresses: the engine stops Unicorn itself (emu_stop).
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        uc.hook_add(UC_HOOK_TLB_FILL, self._on_fill)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, ux.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, ux.UC_X86_INS_OUT)
        self.fast_calls = FastSystemCalls(self)  # SYSCALL, SYSENTER: sevx86.cpu.syscall
        self.fast_calls.install()

    def load_state(self, page: bytes) -> None:
        """The host writes the state a not-yet-entered vCPU starts from (VMSA layout).

        Possible only without SEV-ES: there the save area is host memory (APM
        vol 2, 15.5.1) and KVM rewrites it for INIT and SIPI
        (``kvm_vcpu_reset``, ``kvm_vcpu_deliver_sipi_vector``). Under SEV-ES
        the state is in the encrypted, measured VMSA (15.35.1).
        """
        if self.mode is GuestMode.SEV_ES:
            raise PermissionError("under SEV-ES the vCPU state is in the VMSA, not the host's")
        if self.status is not VcpuState.NEW:
            raise RuntimeError(f"vCPU {self.index} has already been entered")
        if len(page) != len(self.switch.initial_state):
            raise ValueError(
                f"a state page is {len(self.switch.initial_state)} bytes, not {len(page)}"
            )
        self.switch.initial_state = bytes(page)

    # -- extending the engine ---------------------------------------------------------
    def add_code_hook(
        self, callback: Callable[[Uc, int, int, object], None], begin: int = 1, end: int = 0
    ) -> int:
        """A Unicorn code hook on guest-linear ``[begin, end]`` (a debugger's breakpoint).

        The callback may call ``request_stop`` to return to the host; the run
        loop then ends with ``StopReason.KICKED``.
        """
        return self.uc.hook_add(UC_HOOK_CODE, callback, None, begin, end)

    def remove_hook(self, handle: int) -> None:
        self.uc.hook_del(handle)

    def add_insn_hook(self, insn: int, handler: Callable[[], None]) -> int:
        """Run ``handler`` when Unicorn hands instruction ``insn`` to its hooks.

        ``insn`` is a ``UC_X86_INS_*`` whose hook takes no operands
        (SYSCALL, SYSENTER: docs/unicorn-notes.md says what Unicorn leaves
        undone). The handler runs as an engine event (``run_event``).
        """
        return self.uc.hook_add(
            UC_HOOK_INSN, lambda _uc, _data: self.run_event(handler), None, 1, 0, insn
        )

    def add_intercept_handler(self, hook: InterceptHook) -> None:
        """Offered every intercept code before ``sevx86.cpu.dispatch``; True = handled."""
        self._intercept_hooks.append(hook)

    # -- state ------------------------------------------------------------------------
    def paging_state(self, cpl: int | None = None) -> PagingState:
        ctx = self.ctx.load()
        return PagingState(
            ctx.cr(0), ctx.cr(3), ctx.cr(4), ctx.efer, ctx.cpl if cpl is None else cpl
        )

    def code_bits(self) -> int:
        """The default operand size of the code running now: 16, 32 or 64.

        QEMU keeps it in hflags, derived from CS.L/CS.D at every CS load
        (HF_CS64, HF_CS32): one field instead of CR0, EFER and the CS
        descriptor. Real mode is 16-bit whatever CS's cached D bit says.
        """
        hflags = self.ctx.load().hflags
        if not hflags & C.HF_PE:
            return 16
        if hflags & C.HF_CS64:
            return 64
        return 32 if hflags & C.HF_CS32 else 16

    def cpu_mode(self) -> CpuMode:
        # CR0.PE and EFER.LMA as QEMU mirrors them in hflags (HF_PE, HF_LMA).
        hflags = self.ctx.load().hflags
        if not hflags & C.HF_PE:
            return CpuMode.REAL
        return CpuMode.LONG if hflags & C.HF_LMA else CpuMode.PROTECTED

    def rip(self) -> int:
        return self.ctx.load().rip

    def set_rip(self, rip: int) -> None:
        self.uc.reg_write(ux.UC_X86_REG_RIP, rip)
        self.ctx.invalidate()

    def set_edx_eax(self, value: int) -> None:
        ctx = self.ctx.load()
        ctx.set_gpr(0, value & U32_MASK)
        ctx.set_gpr(2, (value >> 32) & U32_MASK)
        ctx.store()

    def linear_rip(self) -> int:
        ctx = self.ctx.load()
        if self.code_bits() == 64:
            return ctx.rip & U64_MASK
        return (ctx.segment(C.SEG_CS).base + ctx.rip) & U32_MASK

    def fetch(self, linear: int, size: int) -> bytes:
        """Instruction bytes at a guest-linear address (always private)."""
        return self.linear.read(linear, size, fetch=True)

    def fetch_insn(self) -> bytes:
        """Up to 15 bytes at RIP, fetched as the CPU would (always private)."""
        addr = self.linear_rip()
        for size in (decode.MAX_INSN, 8, 4, 1):
            try:
                return self.linear.read(addr, size, fetch=True)
            except GuestFault:
                continue
        return b""

    def capture(self) -> bytearray:
        return state.capture(self.uc, self.ctx)

    def trace(self, actor: str, kind: str, summary: str, target: str | None = None, **data):
        self.tracer.emit(actor, kind, summary, vcpu=self.index, target=target, **data)

    # -- VMRUN ------------------------------------------------------------------------
    def vmrun(self, *, timeout: float | None = None, max_instructions: int | None = None) -> VmExit:
        """VMRUN: run the guest until the next exit for the host.

        Never raises for anything the guest or the host did: an internal
        failure ends the vCPU with an emulation-error exit and a trace event.
        """
        if self.status is VcpuState.DEAD:
            return self.vmrun_failed("the vCPU is dead (shutdown or failed VMRUN)")
        self.exit = None
        self.stop.discard(StopRequest.TIMEOUT)  # a watchdog that fired after the last VMRUN
        try:
            if self.status is VcpuState.NEW:
                failure = self.switch.first_entry()
                if failure is None:
                    self._stub_pending = True
                    self.status = VcpuState.RUNNING
                    self.trace("hv", "vmrun", "VMRUN (first entry)", target="cpu")
                    # Unicorn's own VMRUN injects EVENTINJ; an exception it
                    # raises reaches the engine's hook like any other.
                    self._entry = STUB
            else:
                failure = self.switch.resume()
                if failure is None:
                    delivery.inject_pending_event(self)
                    self._entry = self.rip()
            if failure is not None:
                return failure
            return self._execute(timeout, max_instructions)
        except Exception as exc:  # a bug here must not take the host down
            self.fail(exc)
            assert self.exit is not None
            return self.exit

    def vmrun_failed(self, why: str) -> VmExit:
        self.status = VcpuState.DEAD
        self.vmcb["exit_code"] = SvmExit.INVALID
        self.trace("cpu", "vmrun-failed", f"VMRUN failed: {why}", target="hv", reason=why)
        return VmExit(self.index, SvmExit.INVALID, detail=why)

    def _execute(self, timeout: float | None, max_instructions: int | None) -> VmExit:
        timer = None
        if timeout is not None:
            if self._watchdog is None:
                self._watchdog = Watchdog(self)
            timer = self._watchdog
            timer.arm(timeout)
        try:
            return self._loop(max_instructions or 0)
        finally:
            if timer is not None:
                timer.disarm()

    def _loop(self, count: int) -> VmExit:
        """Run until an exit for the host.

        ``count`` > 0 bounds the instructions of each stretch of guest code
        (Unicorn counts them exactly, at about half speed); when it runs out,
        or the wall-clock timer fires, the host gets control the way a
        physical interrupt gives it: an INTR exit (an AE under SEV-ES).

        Each iteration reads the stop request once (``StopLatch.take``) and
        acts on it; a request already pending skips ``emu_start``.
        """
        while True:
            debug = self.debug
            if debug is not None:
                # Before the stop request is read: a kick that comes while the
                # debugger holds the vCPU is acted on at once.
                debug.before_entry()  # may stop here for the debugger, and change RIP
                if self._entry != STUB:
                    self._entry = self.rip()
            self.filler.pending = None
            error: UcError | None = None
            ran = self.stop.value is StopRequest.NONE
            if ran:
                world = self.world
                if world is not None:
                    world.enter(self)
                try:
                    self.uc.emu_start(self._entry, 0, 0, count)
                except UcError as exc:
                    error = exc
                finally:
                    if world is not None:
                        world.leave(self)
                self.ctx.invalidate()
            request = self.stop.take()
            # A debugger's stop stops Unicorn without a request (sevx86.cpu.debug).
            restart = debug is not None and debug.take_restart()
            if self.io.active:
                # However Unicorn stopped (a refused fill, the stop request,
                # an intercept later in the block): undo and intercept.
                self._finish_io()
            elif error is not None:
                faults.after_error(self, error)
            if self.exit is not None:
                return self.exit
            if self.status is VcpuState.DEAD:
                return self.vmrun_failed("the vCPU died")
            if request in (StopRequest.TIMEOUT, StopRequest.KICK):
                if self._entry == STUB and (not ran or self.rip() == STUB):
                    return self._not_entered(request)
                if request is StopRequest.TIMEOUT:
                    return self._interrupted(StopReason.TIMEOUT, "wall-clock limit reached")
                return self._interrupted(StopReason.KICKED, "the host took the CPU back")
            if restart and request is StopRequest.NONE and error is None:
                self._entry = self.rip()  # a debugger stop, not an exit: carry on
                continue
            if request is StopRequest.NONE and error is None and count:
                # Nobody asked Unicorn to stop: its instruction count ran out.
                return self._interrupted(StopReason.INSTRUCTION_LIMIT, f"{count} instructions ran")
            # WORLD, or a fault or page form change handled in place: carry on.
            self._entry = self.rip()

    def _not_entered(self, request: StopRequest) -> VmExit:
        """Stopped before the first VMRUN instruction ran: there is no guest
        state to save yet, so the vCPU stays new and the next VMRUN is again
        a first entry (an INTR exit now would seal host state as the guest's)."""
        reason = StopReason.TIMEOUT if request is StopRequest.TIMEOUT else StopReason.KICKED
        self.status = VcpuState.NEW
        self.vmcb["exit_code"] = SvmExit.INTR
        return VmExit(
            self.index,
            SvmExit.INTR,
            stop=reason,
            detail="stopped before guest entry",
            data={"entered": False},
        )

    def _interrupted(self, reason: StopReason, detail: str) -> VmExit:
        """The host takes the CPU back between two instructions (INTR exit)."""
        self.linear.begin_event()
        try:
            self.automatic_exit(SvmExit.INTR)
        except ExitRecorded:
            pass
        exit = self.exit
        assert exit is not None
        self.stop.take()  # the INTR exit's own request
        exit.stop = reason
        exit.detail = detail
        self._entry = self.rip()
        return exit

    # -- stopping (any thread) --------------------------------------------------------------
    def request_stop(self, what: StopRequest = StopRequest.KICK) -> None:
        self.stop.request(what)
        self.uc.emu_stop()

    def timeout_fired(self) -> None:
        self.request_stop(StopRequest.TIMEOUT)

    def kick(self) -> None:
        """Return to the host at the next instruction boundary (any thread may call).

        What a physical interrupt does to a running guest: an INTR exit (an
        AE under SEV-ES) whose ``stop`` is ``StopReason.KICKED``. A kick while
        the vCPU is not running makes its next VMRUN return at once.
        """
        self.request_stop(StopRequest.KICK)

    def stop_for_world(self) -> None:
        """Leave ``emu_start`` so another vCPU can be alone; resumes by itself."""
        self.request_stop(StopRequest.WORLD)

    def _stopping(self) -> bool:
        """A hook that fires while an exit or a rollback is pending only stops Unicorn."""
        return self.stop.value >= StopRequest.IO_ROLLBACK

    # -- hooks --------------------------------------------------------------------------
    def _on_fill(self, uc: Uc, vaddr: int, access: int, entry, data: object) -> bool:
        self.ctx.invalidate()
        if self.io.active:
            return False  # freeze the tail of the TB after an IN/OUT
        if self._stub_pending and vaddr == _STUB_PAGE:
            self._stub_pending = False
            entry.paddr, entry.perms = _STUB_PAGE, UC_PROT_ALL
            return True
        ok = self.filler.fill(uc, vaddr, access, entry, data)
        if ok and self.atomics is not None and entry.perms & UC_PROT_EXEC:
            self.atomics.on_fill(vaddr, entry.paddr, self.code_bits())
        return ok

    def _on_intr(self, uc: Uc, intno: int, _data: object) -> None:
        self.ctx.invalidate()
        if self._stopping():
            uc.emu_stop()
            return
        self.linear.begin_event()
        try:
            if intno >= UNICORN_INTERCEPT_BASE:
                self._on_intercept(intno - UNICORN_INTERCEPT_BASE)
            else:
                self._on_cpu_exception(intno)
        except ExitRecorded:
            uc.emu_stop()
        except Exception as exc:  # never let a Python error escape into Unicorn
            self.fail(exc)
            uc.emu_stop()

    def _on_invalid(self, uc: Uc, _data: object) -> bool:
        self.ctx.invalidate()
        if self._stopping():
            uc.emu_stop()
            return True
        self.linear.begin_event()
        try:
            self.deliver(Event(Vector.UD), self.rip())
        except ExitRecorded:
            uc.emu_stop()
        except Exception as exc:
            self.fail(exc)
            uc.emu_stop()
        return True

    def run_event(self, handler: Callable[[], None]) -> None:
        """Run ``handler`` as an engine event from inside a Unicorn hook.

        The guard every hook shares: nothing runs while an exit or an IN/OUT
        rollback is pending, a recorded exit stops Unicorn, and an internal
        error ends the vCPU (``fail``) instead of escaping into Unicorn.
        """
        self.ctx.invalidate()
        if self._stopping():
            self.uc.emu_stop()
            return
        self.linear.begin_event()
        try:
            handler()
        except ExitRecorded:
            self.uc.emu_stop()
        except Exception as exc:
            self.fail(exc)
            self.uc.emu_stop()

    def _on_in(self, uc: Uc, port: int, size: int, _data: object) -> int:
        return self._on_io(port, size, True)

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _data: object) -> None:
        self._on_io(port, size, False)

    def _on_io(self, port: int, size: int, is_in: bool) -> int:
        self.ctx.invalidate()
        if self._stopping():
            self.uc.emu_stop()
            return 0
        if not self.vmcb.io_intercepted(port, size):
            return (1 << (8 * size)) - 1  # nothing on the bus: reads float high
        try:
            self.io.begin(port, size, is_in)
        except Exception as exc:
            self.fail(exc)
            self.uc.emu_stop()
            return 0
        self.flush_tlb()
        self.request_stop(StopRequest.IO_ROLLBACK)
        return 0

    def _on_intercept(self, code: int) -> None:
        for hook in self._intercept_hooks:
            if hook(self, code):
                return
        dispatch.handle_intercept(self, code)

    def _on_cpu_exception(self, vector: int) -> None:
        ctx = self.ctx.load()
        code = ctx.error_code if has_error_code(vector) else None
        self.deliver(Event(vector, EventKind.EXCEPTION, code), ctx.rip)

    # -- after a stop -------------------------------------------------------------------------
    def _finish_io(self) -> None:
        """The IN/OUT rollback's second half: restore, then the IOIO intercept."""
        self.linear.begin_event()
        access = self.io.finish()
        # No second flush: while the rollback was active every fill was
        # refused, so the TLB holds nothing made after the one in _on_io.
        self._entry = self.rip()
        try:
            insn = self.fetch_insn()
            decoded = decode.io_access(insn, self.code_bits())
            if self.mode is GuestMode.SEV_ES:
                self.inject_vc(SvmExit.IOIO)
                return
            ctx = self.ctx.load()
            next_rip = ctx.rip + decoded.length
            self.exit_to_host(
                SvmExit.IOIO,
                decoded.exitinfo1(ctx.gpr(2)),
                next_rip,
                next_rip=next_rip,
                port=access.port,
                size=access.size,
                is_in=access.is_in,
            )
        except ExitRecorded:
            pass

    def fail(self, exc: BaseException) -> None:
        """The engine itself failed: the vCPU ends; the operator's trace says where.

        The host-side exit names only the failure's type: under SEV-ES the
        guest RIP and the instruction bytes an error message may quote are
        guest plaintext (issue 15 item 8), so they go to the trace only.
        """
        try:
            self.ctx.invalidate()
            rip: int | None = self.rip()
        except Exception:  # the state itself may be what failed
            rip = None
        where = f" at RIP {rip:#x}" if rip is not None else ""
        full = f"{type(exc).__name__}: {exc}{where}"
        self.trace("cpu", "emulation-error", full, target="hv", rip=rip)
        self.status = VcpuState.DEAD
        self.failure = full
        detail = full if self.mode is not GuestMode.SEV_ES else f"{type(exc).__name__} in the CPU"
        self.exit = VmExit(
            self.index, SvmExit.SHUTDOWN, stop=StopReason.EMULATION_ERROR, detail=detail
        )
        self.stop.request(StopRequest.EXIT)

    # -- nested page faults (MMIO) --------------------------------------------------------

    # -- exceptions and interrupts ------------------------------------------------------------

    def deliver(
        self, event: Event, return_rip: int, *, cr2: int | None = None, fault_rip: int | None = None
    ) -> None:
        """Deliver ``event`` through the guest's IVT/IDT (``sevx86.cpu.delivery``)."""
        delivery.deliver(self, event, return_rip, cr2=cr2, fault_rip=fault_rip)

    def invalidate_tlbs(self) -> None:
        self.linear.flush()
        self.flush_tlb()

    def flush_tlb(self) -> None:
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    # -- what intercept handlers call ------------------------------------------------------------
    def non_automatic(self, code: int, info1: int = 0, info2: int = 0, **data) -> None:
        """NAE: #VC in the guest under SEV-ES, a plain exit otherwise."""
        if self.mode is GuestMode.SEV_ES:
            self.inject_vc(code)
        else:
            self.exit_to_host(code, info1, info2, **data)

    def inject_vc(self, code: int) -> None:
        rip = self.rip()
        self.vc_count += 1
        if self.tracer.enabled:
            self.trace(
                "cpu",
                "vc",
                f"#VC {exit_name(code)} at {rip:#x}",
                target="guest",
                code=code,
                name=exit_name(code),
                rip=rip,
            )
        self.deliver(Event(Vector.VC, EventKind.EXCEPTION, code), rip)

    def exit_to_host(
        self, code: int, info1: int = 0, info2: int = 0, *, next_rip: int | None = None, **data
    ) -> None:
        """A plain #VMEXIT (modes none and sev): the host sees the registers."""
        regs = self.switch.host_registers()
        rip = regs.rip
        if next_rip is None:
            insn = self.fetch_insn()
            length = decode.length(insn, self.code_bits()) if insn else 0
            next_rip = rip + length
        self.record_exit(code, info1, info2, rip=rip, regs=regs, next_rip=next_rip, **data)

    def record_exit(
        self,
        code: int,
        info1: int,
        info2: int,
        *,
        rip: int | None,
        regs: state.RegisterFile | None,
        next_rip: int = 0,
        **data,
    ) -> None:
        vmcb = self.vmcb
        vmcb["exit_code"] = code
        vmcb["exit_info_1"] = info1
        vmcb["exit_info_2"] = info2
        vmcb["next_rip"] = next_rip
        vmcb["ghcb_gpa"] = self.ghcb_msr
        # The host cannot read an SEV-ES guest's RFLAGS, so the hardware tells
        # it whether the guest can take an interrupt (APM vol 2, 15.35.6).
        ctx = self.ctx.load()
        int_state = INT_STATE_GUEST_IF if ctx.u64(C.EFLAGS) & _RFLAGS_IF else 0
        if ctx.hflags & C.HF_INHIBIT_IRQ:
            int_state |= INT_STATE_SHADOW
        vmcb["int_state"] = int_state
        self.exits += 1
        self.exit = VmExit(self.index, code, info1, info2, rip=rip, regs=regs, data=data)
        self.stop.request(StopRequest.EXIT)
        if self.tracer.enabled:  # once per exit: do not build the event for nobody
            self.trace(
                "cpu",
                "exit",
                f"#VMEXIT {exit_name(code)}",
                target="hv",
                code=code,
                name=exit_name(code),
                info1=info1,
                info2=info2,
                **data,
            )
        raise ExitRecorded

    def automatic_exit(
        self,
        code: int,
        *,
        advance: bool = False,
        info1: int = 0,
        info2: int = 0,
        insn: bytes | None = None,
    ) -> None:
        """AE: SEV-ES world switch; in other modes a plain exit.

        ``insn``: the instruction bytes at RIP when the caller already fetched them.
        """
        if code == SvmExit.HLT:
            self._end_shadow_at_hlt()
        if self.mode is not GuestMode.SEV_ES:
            self.exit_to_host(code, info1, info2)
        if advance:
            self.set_rip(self.rip() + self._ae_length(code, insn))
        self.switch.save_vmsa()
        self.record_exit(code, info1, info2, rip=None, regs=None)

    def _end_shadow_at_hlt(self) -> None:
        """HLT ends an STI/MOV SS interrupt shadow: ``sti; hlt`` waits with IF=1.

        The shadow covers the instruction after STI, here HLT itself; once the
        CPU halts, an interrupt is taken (APM vol 2, 8.1 and 15.35.6: the VMCB
        interrupt state is what the host checks). QEMU clears the flag in its
        HLT helper, after the SVM intercept check that brought us here.
        """
        ctx = self.ctx.load()
        flags = ctx.hflags
        if flags & C.HF_INHIBIT_IRQ:
            ctx.set_u32(C.HFLAGS, flags & ~C.HF_INHIBIT_IRQ)
            ctx.store()
            self.ctx.invalidate()

    def _ae_length(self, code: int, insn: bytes | None = None) -> int:
        """Length of the AE instruction the CPU steps over (VMGEXIT, HLT)."""
        if insn is None:
            insn = self.fetch_insn()
        if code == SvmExit.VMGEXIT and insn.startswith(VMGEXIT_BYTES):
            return len(VMGEXIT_BYTES)
        if code == SvmExit.HLT and insn[:1] == _HLT_BYTE:
            return 1
        return decode.length(insn, self.code_bits())

    def shutdown(self, why: str) -> None:
        """Shutdown (triple fault): the vCPU ends; under SEV-ES the host learns only that.

        ``why`` may name guest addresses ("linear 0x... is not RAM"): the
        trace keeps it whole, the host's exit only the kind before the colon.
        """
        self.status = VcpuState.DEAD
        self.trace("cpu", "shutdown", f"shutdown: {why}", target="hv", reason=why)
        self.vmcb["exit_code"] = SvmExit.SHUTDOWN
        self.failure = why
        detail = why if self.mode is not GuestMode.SEV_ES else why.split(":", 1)[0]
        self.exit = VmExit(self.index, SvmExit.SHUTDOWN, detail=detail)
        self.stop.request(StopRequest.EXIT)
        raise ExitRecorded


__all__ = ["VCpu", "VcpuState"]
