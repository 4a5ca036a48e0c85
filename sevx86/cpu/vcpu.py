"""The vCPU: guest code on Unicorn in SVM guest mode, and what the CPU does at each event.

Path of an event (the names below are the functions to follow):

    guest instruction
      -> Unicorn intercept (UC_HOOK_INTR, intno = 0x100 + exit code)   _on_intr
      -> _on_intercept: classify with sevx86.cpu.intercepts.RULES
           NAE, SEV-ES      -> _inject_vc: #VC in the guest, error code = exit code
           NAE, none/sev    -> _exit_to_host: a plain #VMEXIT with the registers
           AE               -> _automatic_exit: VMSA written and sealed, exit to host
           in place         -> _in_place_msr: GHCB MSR / SEV_STATUS, no exit
      -> exceptions (INTR with a vector, #UD hook, refused TLB fills)
           -> deliver(): sevx86.cpu.exceptions plans, this module applies

The host (``sevx86.machine.HostVcpu``) calls ``vmrun()``, which checks the
VMSA with the Secure Processor (SEV-ES), reloads the registers from it,
injects any event the host put in EVENTINJ, and runs the guest until the next
exit for the host.

Unicorn facts this relies on (measured on unicorn 2.1.4):
* intercepts arrive with RIP on the instruction; nothing is written to the
  VMCB and the guest stays in guest mode; exceptions arrive with their vector
  and are never delivered by Unicorn; #UD goes to UC_HOOK_INSN_INVALID;
* IN/OUT are never intercepted (Unicorn stubs out the IOPM check): only
  UC_HOOK_INSN sees them, mid-instruction, so the engine rolls the CPU back to
  the state before the instruction (``_on_io``) and then treats it as the
  IOIO intercept the architecture defines;
* RDTSCP/INVD/VMGEXIT arrive as RDTSC/WBINVD/VMMCALL (see intercepts.resolve);
* QEMU's own double-fault bookkeeping (``old_exception``) must be reset after
  each delivery, or the next unrelated #GP arrives as #DF.
"""

from __future__ import annotations

import threading
import time
import weakref
from enum import Enum
from typing import TYPE_CHECKING

from unicorn import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_ERR_EXCEPTION,
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

from sevx86.arch.cr import Cr0, Cr4, Rflags
from sevx86.arch.exits import SvmExit, cr_write_trap, exit_name
from sevx86.arch.msr import Efer, Msr, SevStatus
from sevx86.arch.paging import PfErr
from sevx86.arch.vectors import Vector, has_error_code, vector_name
from sevx86.arch.vmcb import (
    EVENTINJ_V,
    INT_STATE_GUEST_IF,
    INT_STATE_SHADOW,
    EventType,
    Intercept,
    decode_event,
)
from sevx86.arch.vmsa import VMSA, VMSA_GPR_NAMES, VMSA_SIZE
from sevx86.config import PAGE_SIZE, GuestMode
from sevx86.cpu import context as C
from sevx86.cpu import decode, state
from sevx86.cpu.context import CpuContext, SegmentState
from sevx86.cpu.exceptions import (
    CpuMode,
    DeliveryPlan,
    Event,
    EventKind,
    GuestFault,
    InterruptContext,
    Segment,
    TripleFault,
    deliver_with_escalation,
)
from sevx86.cpu.intercepts import IN_PLACE_MSRS, VMGEXIT_BYTES, Handling, resolve, rule_for
from sevx86.cpu.svm import STUB, SvmHardware
from sevx86.cpu.vmcb import Vmcb
from sevx86.memory.mmu import (
    MMU,
    Access,
    FormChange,
    NestedFault,
    PageFault,
    PagingState,
    TlbFiller,
    Translation,
)
from sevx86.vmexit import StopReason, VmExit

if TYPE_CHECKING:
    from sevx86.cpu.debug import VcpuDebug
    from sevx86.cpu.parallel import AtomicWatch, World
    from sevx86.machine import Machine

_UCREG_CR = {
    0: ux.UC_X86_REG_CR0,
    2: ux.UC_X86_REG_CR2,
    3: ux.UC_X86_REG_CR3,
    4: ux.UC_X86_REG_CR4,
    8: ux.UC_X86_REG_CR8,
}
_STUB_PAGE = STUB & ~(PAGE_SIZE - 1)
_CR0_PE = int(Cr0.PE)
_RFLAGS_IF = int(Rflags.IF)
_EFER_LMA = int(Efer.LMA)


class VcpuState(Enum):
    NEW = "new"  # not yet entered
    RUNNING = "running"
    DEAD = "dead"  # shutdown or failed VMRUN: never runs again


class _Stop(Exception):
    """Internal: leave the run loop with an exit for the host."""


class GuestLinear:
    """The guest's linear memory as the processor's own accesses see it.

    Used for exception delivery (IDT, GDT, TSS reads, stack pushes) and for
    fetching instruction bytes: it walks the guest's page tables with the
    MMU, honouring the C-bit (a C=0 stack page is written as shared).
    """

    def __init__(self, vcpu: VCpu):
        self.vcpu = vcpu
        # A small TLB for the CPU's own accesses. Like the hardware's, it may
        # hold translations until CR3 is written, INVLPG runs, or the paging
        # controls change (APM vol 2, 5.5); the engine intercepts the first
        # two and compares the controls at every event.
        self._tlb: dict[tuple[int, Access, bool], Translation] = {}
        self._controls: tuple[int, int, int, int] | None = None
        self._state: PagingState | None = None

    def begin_event(self) -> None:
        """A new event: re-read the paging controls; flush if they changed."""
        self._state = None

    def flush(self) -> None:
        self._tlb.clear()
        self._state = None

    def _paging(self) -> PagingState:
        st = self._state
        if st is None:
            st = self._state = self.vcpu.paging_state(cpl=0)
            controls = (st.cr0, st.cr3, st.cr4, st.efer)
            if controls != self._controls:
                self._tlb.clear()
                self._controls = controls
        return st

    def _translate(self, addr: int, access: Access, user: bool) -> Translation:
        st = self._paging()
        key = (addr >> 12, access, user)
        hit = self._tlb.get(key)
        if hit is not None:
            return hit
        if user != st.user:
            st = PagingState(st.cr0, st.cr3, st.cr4, st.efer, 3 if user else 0)
        res = self.vcpu.mmu.walk(addr, access, st)
        if res.__class__ is PageFault:
            raise GuestFault(
                res.vector,
                res.error_code,
                cr2=addr if res.vector == Vector.PF else None,
                reason=res.reason,
            )
        if self.vcpu.memory.guest_ram_at(res.gpa) is None:
            raise GuestFault(Vector.GP, 0, reason=f"linear {addr:#x} is not RAM ({res.gpa:#x})")
        if len(self._tlb) > 4096:
            self._tlb.clear()
        self._tlb[key] = res
        return res

    def _chunks(self, addr: int, size: int):
        while size > 0:
            n = min(size, PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
            yield addr, n
            addr += n
            size -= n

    def read(self, addr: int, size: int, *, user: bool = False, fetch: bool = False) -> bytes:
        access = Access.FETCH if fetch else Access.READ
        if (addr & 0xFFF) + size <= PAGE_SIZE:  # the common case: one page
            t = self._translate(addr, access, user)
            return self.vcpu.memory.read(t.gpa | (addr & 0xFFF), size, private=t.private)
        out = bytearray()
        for a, n in self._chunks(addr, size):
            t = self._translate(a, access, user)
            out += self.vcpu.memory.read(t.gpa | (a & 0xFFF), n, private=t.private)
        return bytes(out)

    def check_write(self, addr: int, size: int, *, user: bool = False) -> None:
        for a, _n in self._chunks(addr, size):
            self._translate(a, Access.WRITE, user)

    def write(self, addr: int, data: bytes, *, user: bool = False) -> None:
        pos = 0
        for a, n in self._chunks(addr, len(data)):
            t = self._translate(a, Access.WRITE, user)
            self.vcpu.memory.write(t.gpa | (a & 0xFFF), data[pos : pos + n], private=t.private)
            pos += n


class VCpu:
    """One virtual CPU of a ``Machine``."""

    def __init__(
        self, machine: Machine, index: int, initial_state: bytes, vmsa_spa: int | None = None
    ):
        self.machine = machine
        self.index = index
        self.config = machine.config
        self.mode = machine.config.mode
        self.memory = machine.memory
        self.tracer = machine.tracer
        self.vmsa_spa = vmsa_spa
        self.vmcb = Vmcb()
        self.vmcb["vmsa_pa"] = vmsa_spa or 0
        self.status = VcpuState.NEW
        self.ghcb_msr = 0
        self.exits = 0
        self.vc_count = 0
        self._initial_state = bytes(initial_state)
        self._exit: VmExit | None = None
        self._rollback: bytes | None = None  # CPU state before an intercepted IN/OUT
        self._io: tuple[int, int, bool] | None = None  # (port, size, is_in) of that IN/OUT
        self._stub_pending = False
        self._timed_out = False
        self._kicked = False
        self._world_stop = False
        # Parallel mode (sevx86.cpu.parallel): the stop-the-world gate and the
        # watch on atomic instructions; None when vCPUs take turns.
        self.world: World | None = None
        self.atomics: AtomicWatch | None = None
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
        self.linear = GuestLinear(self)
        # No exit addresses: the engine stops Unicorn itself (emu_stop).
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        uc.hook_add(UC_HOOK_TLB_FILL, self._fill)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, ux.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, ux.UC_X86_INS_OUT)
        self._scratch_page = bytearray(VMSA_SIZE)
        self._saved_vmsa = b""

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
        if len(page) != VMSA_SIZE:
            raise ValueError(f"a state page is {VMSA_SIZE} bytes, not {len(page)}")
        self._initial_state = bytes(page)

    # ------------------------------------------------------------------ state
    def paging_state(self, cpl: int | None = None) -> PagingState:
        ctx = self.ctx.load()
        return PagingState(
            ctx.cr(0), ctx.cr(3), ctx.cr(4), ctx.efer, ctx.cpl if cpl is None else cpl
        )

    def code_bits(self) -> int:
        ctx = self.ctx
        if not ctx.cr(0) & _CR0_PE:
            return 16
        cs = ctx.segment(C.SEG_CS)
        if ctx.hflags & C.HF_LMA and cs.attrib & 0x200:
            return 64
        return 32 if cs.attrib & 0x400 else 16

    def cpu_mode(self) -> CpuMode:
        if not self.ctx.cr(0) & _CR0_PE:
            return CpuMode.REAL
        return CpuMode.LONG if self.ctx.efer & _EFER_LMA else CpuMode.PROTECTED

    def rip(self) -> int:
        return self.ctx.load().rip

    def linear_rip(self) -> int:
        ctx = self.ctx.load()
        base = ctx.segment(C.SEG_CS).base if self.code_bits() != 64 else 0
        return (base + ctx.rip) & (0xFFFF_FFFF_FFFF_FFFF if self.code_bits() == 64 else 0xFFFF_FFFF)

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

    # ------------------------------------------------------------------ tracing
    def _trace(self, actor: str, kind: str, summary: str, target: str | None = None, **data):
        self.tracer.emit(actor, kind, summary, vcpu=self.index, target=target, **data)

    # ------------------------------------------------------------------ running
    def vmrun(self, *, timeout: float | None = None, max_instructions: int | None = None) -> VmExit:
        """VMRUN: run the guest until the next exit for the host.

        Never raises for anything the guest or the host did: an internal
        failure ends the vCPU with an emulation-error exit and a trace event.
        """
        if self.status is VcpuState.DEAD:
            return self._invalid("the vCPU is dead (shutdown or failed VMRUN)")
        try:
            if self.status is VcpuState.NEW:
                failure = self._first_entry()
            else:
                failure = self._resume()
            if failure is not None:
                return failure
            return self._execute(timeout, max_instructions)
        except Exception as exc:  # a bug here must not take the host down
            self._emulation_error(exc)
            assert self._exit is not None
            return self._exit

    def _invalid(self, why: str) -> VmExit:
        self.status = VcpuState.DEAD
        self.vmcb["exit_code"] = SvmExit.INVALID
        self._trace("cpu", "vmrun-failed", f"VMRUN failed: {why}", target="hv", reason=why)
        return VmExit(self.index, SvmExit.INVALID, detail=why)

    def _first_entry(self) -> VmExit | None:
        initial = self._initial_state
        if self.mode is GuestMode.SEV_ES:
            assert self.vmsa_spa is not None
            if not self.machine.vmsa_check(self):
                return self._invalid("the VMSA does not match its launch measurement")
            initial = self.memory.read_private(self.vmsa_spa, VMSA_SIZE)
            # VMRUN loads the GHCB MSR from the VMCB on every entry, the first
            # too: KVM leaves the SEV information response there at reset.
            self.ghcb_msr = self.vmcb["ghcb_gpa"]
        self.svm.program(self.vmcb, self.mode)
        self.vmcb.intercept_words_changed()
        # Fields the engine does not model (SEV_FEATURES, XCR0, ...) carry
        # over from the launch VMSA into every VMSA the CPU writes.
        self._scratch_page[:] = initial
        self.svm.prepare_entry(initial)
        self.ctx.invalidate()
        self._preload_unsaved_state(initial)
        self._stub_pending = True
        self.status = VcpuState.RUNNING
        self._trace("hv", "vmrun", "VMRUN (first entry)", target="cpu")
        # The first VMRUN is Unicorn's own: it injects EVENTINJ itself, and an
        # exception it raises reaches the engine's hook like any other.
        self.svm.inject_at_entry(self.vmcb["event_inj"], self.vmcb["event_inj_err"])
        self.vmcb["event_inj"] = 0
        self._entry = STUB
        return None

    def _preload_unsaved_state(self, page: bytes) -> None:
        """State VMRUN does not load (GPRs, FS/GS/TR/LDTR, MSRs, XMM): set it in host mode."""
        ctx = self.ctx.load()
        for i, name in enumerate(VMSA_GPR_NAMES):
            if name not in ("rax", "rsp"):
                ctx.set_gpr(i, VMSA.read(page, name))
        for name, off in (
            ("fs", C.SEGS + 24 * C.SEG_FS),
            ("gs", C.SEGS + 24 * C.SEG_GS),
            ("ldtr", C.LDT),
            ("tr", C.TR),
        ):
            ctx.set_table(
                off,
                SegmentState(
                    *(
                        VMSA.read(page, f"{name}.{p}")
                        for p in ("selector", "base", "limit", "attrib")
                    )
                ),
            )
        for vname, off, size in (
            ("star", C.STAR, 8),
            ("lstar", C.LSTAR, 8),
            ("cstar", C.CSTAR, 8),
            ("sfmask", C.FMASK, 8),
            ("kernel_gs_base", C.KERNEL_GS_BASE, 8),
            ("sysenter_cs", C.SYSENTER_CS, 8),
            ("sysenter_esp", C.SYSENTER_ESP, 8),
            ("sysenter_eip", C.SYSENTER_EIP, 8),
            ("dr0", C.DR, 8),
            ("dr1", C.DR + 8, 8),
            ("dr2", C.DR + 16, 8),
            ("dr3", C.DR + 24, 8),
            ("tsc_aux", C.TSC_AUX, 4),
            ("mxcsr", C.MXCSR, 4),
        ):
            value = VMSA.read(page, vname)
            if size == 8:
                ctx.set_u64(off, value)
            else:
                ctx.set_u32(off, value)
        for n in range(16):
            ctx.set_xmm(n, VMSA.read(page, f"xmm{n}"))
        ctx.store()

    def _resume(self) -> VmExit | None:
        """VMRUN after an exit: SEV-ES checks and reloads the VMSA."""
        if self.vmcb.intercept_words_changed():
            self.svm.program(self.vmcb, self.mode)
        if self.mode is GuestMode.SEV_ES:
            if not self.machine.vmsa_check(self):
                return self._invalid("VMSA integrity check failed (changed or rolled back)")
            page = self.memory.read_private(self.vmsa_spa, VMSA_SIZE)  # type: ignore[arg-type]
            # VMRUN loads every register from the VMSA. When the page is the
            # one the CPU left at the exit, byte for byte, the live state in
            # Unicorn already is that state and the load is a no-op.
            if page != self._saved_vmsa:
                state.apply(self.uc, self.ctx, page)
            self.ghcb_msr = self.vmcb["ghcb_gpa"]
            if self.tracer.enabled:
                self._trace("sp", "vmsa-check", "VMSA integrity verified", target="cpu")
        elif self._pending_regs is not None and self._pending_regs.dirty:
            state.apply(self.uc, self.ctx, self._pending_regs.raw())
        self._pending_regs = None
        self._inject_pending_event()
        self._entry = self.rip()
        return None

    _pending_regs: state.RegisterFile | None = None
    _entry: int = 0
    _watchdog: _Watchdog | None = None

    def _execute(self, timeout: float | None, max_instructions: int | None) -> VmExit:
        self._timed_out = False
        timer = None
        if timeout is not None:
            if self._watchdog is None:
                self._watchdog = _Watchdog(self)
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
        """
        while True:
            debug = self.debug
            if debug is not None:
                debug.before_entry()  # may stop here for the debugger, and change RIP
                if self._entry != STUB:
                    self._entry = self.rip()
            self._exit = None
            self.filler.pending = None
            error: UcError | None = None
            if self._timed_out or self._kicked:
                if self._entry == STUB:
                    return self._not_entered()
                if self._timed_out:  # the watchdog fired before Unicorn started
                    return self._interrupted(StopReason.TIMEOUT, "wall-clock limit reached")
                self._kicked = False
                return self._interrupted(StopReason.KICKED, "the host took the CPU back")
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
            if self._world_stop and error is None and self._exit is None:
                # Another vCPU needed to be alone (sevx86.cpu.parallel): carry on.
                self._world_stop = False
                self._entry = self.rip()
                continue
            self._world_stop = False
            if debug is not None and debug.take_restart() and error is None and self._exit is None:
                self._entry = self.rip()  # a debugger stop, not an exit: carry on
                continue
            if error is not None:
                self._after_error(error)
            if self._exit is not None:
                return self._exit
            if self.status is VcpuState.DEAD:
                return self._invalid("the vCPU died")
            if self._timed_out:
                return self._interrupted(StopReason.TIMEOUT, "wall-clock limit reached")
            if (self._kicked or self._timed_out) and error is None and self.rip() == STUB:
                return self._not_entered()
            if self._kicked and error is None:
                self._kicked = False
                return self._interrupted(StopReason.KICKED, "the host took the CPU back")
            if count and error is None:
                return self._interrupted(StopReason.INSTRUCTION_LIMIT, f"{count} instructions ran")
            self._entry = self.rip()

    def _not_entered(self) -> VmExit:
        """Stopped before the first VMRUN instruction ran: there is no guest
        state to save yet, so the vCPU stays new and the next VMRUN is again
        a first entry (an INTR exit now would seal host state as the guest's)."""
        reason = StopReason.TIMEOUT if self._timed_out else StopReason.KICKED
        self._kicked = False
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
            self._automatic_exit(SvmExit.INTR)
        except _ExitNow:
            pass
        assert self._exit is not None
        self._exit.stop = reason
        self._exit.detail = detail
        self._entry = self.rip()
        return self._exit

    def _on_timeout(self) -> None:
        self._timed_out = True
        self.uc.emu_stop()

    def kick(self) -> None:
        """Return to the host at the next instruction boundary (any thread may call).

        What a physical interrupt does to a running guest: an INTR exit (an
        AE under SEV-ES) whose ``stop`` is ``StopReason.KICKED``. A kick while
        the vCPU is not running makes its next VMRUN return at once.
        """
        self._kicked = True
        self.uc.emu_stop()

    def stop_for_world(self) -> None:
        """Leave ``emu_start`` so another vCPU can be alone; resumes by itself."""
        self._world_stop = True
        self.uc.emu_stop()

    # ------------------------------------------------------------------ hooks
    def _fill(self, uc: Uc, vaddr: int, access: int, entry, data: object) -> bool:
        self.ctx.invalidate()
        if self._rollback is not None:
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
        if self._rollback is not None or self._exit is not None:
            uc.emu_stop()
            return
        self.linear.begin_event()
        try:
            if intno >= 0x100:
                self._on_intercept(intno - 0x100)
            else:
                self._on_cpu_exception(intno)
        except _ExitNow:
            uc.emu_stop()
        except Exception as exc:  # never let a Python error escape into Unicorn
            self._emulation_error(exc)
            uc.emu_stop()

    def _on_invalid(self, uc: Uc, _data: object) -> bool:
        self.ctx.invalidate()
        if self._rollback is not None or self._exit is not None:
            uc.emu_stop()
            return True
        self.linear.begin_event()
        try:
            self.deliver(Event(Vector.UD), self.rip())
        except _ExitNow:
            uc.emu_stop()
        except Exception as exc:
            self._emulation_error(exc)
            uc.emu_stop()
        return True

    def _on_in(self, uc: Uc, port: int, size: int, _data: object) -> int:
        return self._on_io(port, size, True, 0)

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _data: object) -> None:
        self._on_io(port, size, False, value)

    def _on_io(self, port: int, size: int, is_in: bool, value: int) -> int:
        self.ctx.invalidate()
        if self._rollback is not None or self._exit is not None:
            self.uc.emu_stop()
            return 0
        if not self.vmcb.io_intercepted(port, size):
            return (1 << (8 * size)) - 1  # nothing on the bus: reads float high
        # Roll back to the state before this instruction: snapshot now, make
        # every further access fault so the rest of the translation block
        # cannot store anything, and stop. The registers are those before the
        # I/O instruction (it has not updated them yet), but QEMU may not have
        # synced RIP since the block began: find the instruction from there.
        ctx = self.ctx.load()
        ctx.set_u64(C.EIP, self._io_instruction_address(ctx.rip, port, size, is_in))
        self._rollback = ctx.copy_bytes()
        self._io = (port, size, is_in)
        self._flush_tlb()
        self.uc.emu_stop()
        return 0

    def _io_instruction_address(self, rip: int, port: int, size: int, is_in: bool) -> int:
        """The first I/O instruction at or after ``rip`` that matches this access.

        A translation block is straight-line code, so decoding forward from
        the last synced RIP reaches the instruction Unicorn is executing.
        """
        bits = self.code_bits()
        base = 0 if bits == 64 else self.ctx.segment(C.SEG_CS).base
        dx = self.ctx.gpr(2) & 0xFFFF
        addr = rip
        for _ in range(64):
            try:
                insn = self.linear.read(base + addr, decode.MAX_INSN, fetch=True)
            except GuestFault:
                break
            try:
                access = decode.io_access(insn, bits)
                if (access.port if access.port is not None else dx) == port and (
                    access.size == size and access.is_in == is_in
                ):
                    return addr
            except decode.DecodeError:
                pass
            length = decode.length(insn, bits)
            if not length:
                break
            addr += length
        return rip

    # ------------------------------------------------------------------ after a stop
    def _after_error(self, error: UcError) -> None:
        self.linear.begin_event()
        if self._rollback is not None:
            snapshot, self._rollback = self._rollback, None
            self.ctx.restore_bytes(snapshot)
            self._flush_tlb()
            self._entry = self.rip()
            try:
                self._intercept_io()
            except _ExitNow:
                pass
            return
        pending = self.filler.pending
        if error.errno == UC_ERR_EXCEPTION and pending.__class__ is FormChange:
            self.filler.pending = None
            # Not a fault: the page changes form and the access is replayed.
            if pending.to_shared:
                self.memory.make_shared(pending.gpa)
            else:
                self.memory.make_private(pending.gpa)
            self.memory.flush_tlbs()
            self._entry = self.rip()
            return
        if error.errno == UC_ERR_EXCEPTION and pending is not None:
            self.filler.pending = None
            try:
                if isinstance(pending, PageFault):
                    cr2 = (
                        self._exact_fault_address(pending) if pending.vector == Vector.PF else None
                    )
                    self.deliver(
                        Event(pending.vector, EventKind.EXCEPTION, pending.error_code),
                        self.rip(),
                        cr2=cr2,
                    )
                else:
                    self._nested_fault(pending)
            except _ExitNow:
                pass
            return
        if self._exit is not None:
            return
        self._emulation_error(error)

    def _exact_fault_address(self, fault: PageFault | NestedFault) -> int:
        """The faulting linear address of a refused fill.

        The hook saw only the page; the faulting instruction's operands say
        which byte (CR2 for #PF, and with it EXITINFO2 of an NPF).
        """
        page = fault.vaddr & ~(PAGE_SIZE - 1)
        linear_rip = self.linear_rip()
        fetch = (
            fault.access is Access.FETCH
            if isinstance(fault, NestedFault)
            else bool(fault.error_code & PfErr.ID)
        )
        if fetch:
            # A fetch: the instruction's first byte, or the start of the next
            # page when the instruction straddles into it.
            return linear_rip if linear_rip >= page else page
        insn = self.fetch_insn()
        if not insn:
            return page
        ctx = self.ctx
        return decode.fault_address(
            insn,
            self.code_bits(),
            ctx.rip,
            ctx.gprs(),
            self._segment_base_by_capstone_id,
            page,
        )

    def _segment_base_by_capstone_id(self, reg: int) -> int:
        from capstone import x86_const as cx

        index = {
            cx.X86_REG_ES: C.SEG_ES,
            cx.X86_REG_CS: C.SEG_CS,
            cx.X86_REG_SS: C.SEG_SS,
            cx.X86_REG_FS: C.SEG_FS,
            cx.X86_REG_GS: C.SEG_GS,
        }.get(reg, C.SEG_DS)
        return self.ctx.segment(index).base

    def _emulation_error(self, exc: BaseException) -> None:
        try:
            self.ctx.invalidate()
            rip: int | None = self.rip()
        except Exception:  # the state itself may be what failed
            rip = None
        where = f" at RIP {rip:#x}" if rip is not None else ""
        detail = f"{type(exc).__name__}: {exc}{where}"
        self._trace("cpu", "emulation-error", detail, target="hv", rip=rip)
        self.status = VcpuState.DEAD
        self._exit = VmExit(
            self.index, SvmExit.SHUTDOWN, stop=StopReason.EMULATION_ERROR, detail=detail
        )

    # ------------------------------------------------------------------ intercepts
    def _on_intercept(self, code: int) -> None:
        if code == SvmExit.SWINT:
            insn = self.fetch_insn()
            vector, length = decode.software_interrupt(insn, self.code_bits())
            rip = self.rip()
            self.deliver(Event(vector, EventKind.SOFTWARE), rip + length, fault_rip=rip)
            return
        if code in (
            SvmExit.VMRUN,
            SvmExit.VMLOAD,
            SvmExit.VMSAVE,
            SvmExit.STGI,
            SvmExit.CLGI,
            SvmExit.SKINIT,
            SvmExit.INVLPGA,
        ):
            # sevx86 guests cannot nest SVM; the instruction is undefined to them.
            self.deliver(Event(Vector.UD), self.rip())
            return
        if code == SvmExit.SHUTDOWN:
            self._shutdown("the CPU reported a triple fault")
        if code == SvmExit.INVLPG and not self.vmcb.intercepts(Intercept.INVLPG):
            # Intercepted by the engine only to keep its own TLB honest.
            self._invalidate_tlbs()
            self._set_rip(self.rip() + decode.length(self.fetch_insn(), self.code_bits()))
            return
        if 0x10 <= code <= 0x1F:
            self._cr_write(code - 0x10)
            return
        insn = (
            self.fetch_insn() if code in (SvmExit.VMMCALL, SvmExit.RDTSC, SvmExit.WBINVD) else b""
        )
        code = resolve(code, insn)
        if code == SvmExit.MSR:
            self._msr()
            return
        if code == SvmExit.VMGEXIT and self.mode is not GuestMode.SEV_ES:
            code = SvmExit.VMMCALL  # REP VMMCALL is plain VMMCALL outside SEV-ES
        if code == SvmExit.VMMCALL and not self.vmcb.intercepts(Intercept.VMMCALL):
            self.deliver(Event(Vector.UD), self.rip())  # VMMCALL without intercept: #UD
            return
        rule = rule_for(code)
        if rule is None:
            raise RuntimeError(f"unexpected intercept {exit_name(code)}")
        if rule.handling is Handling.AE:
            # The bytes fetched for resolve() are the ones _ae_length needs
            # (RIP has not moved): do not fetch them twice per VMGEXIT.
            self._automatic_exit(code, advance=rule.advances_rip, insn=insn or None)
        else:
            self._non_automatic(code)

    def _non_automatic(self, code: int, info1: int = 0, info2: int = 0, **data) -> None:
        if self.mode is GuestMode.SEV_ES:
            self._inject_vc(code)
        else:
            self._exit_to_host(code, info1, info2, **data)

    def _inject_vc(self, code: int) -> None:
        rip = self.rip()
        self.vc_count += 1
        if self.tracer.enabled:
            self._trace(
                "cpu",
                "vc",
                f"#VC {exit_name(code)} at {rip:#x}",
                target="guest",
                code=code,
                name=exit_name(code),
                rip=rip,
            )
        self.deliver(Event(Vector.VC, EventKind.EXCEPTION, code), rip)

    # -- exits to the host -------------------------------------------------------
    def _exit_to_host(
        self, code: int, info1: int = 0, info2: int = 0, *, next_rip: int | None = None, **data
    ) -> None:
        """A plain #VMEXIT (modes none and sev): the host sees the registers."""
        page = self.capture()
        regs = state.RegisterFile(page)
        rip = regs.rip
        if next_rip is None:
            insn = self.fetch_insn()
            length = decode.length(insn, self.code_bits()) if insn else 0
            next_rip = rip + length
        self._record_exit(code, info1, info2, rip=rip, regs=regs, next_rip=next_rip, **data)

    def _record_exit(
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
        self._pending_regs = regs
        self._exit = VmExit(self.index, code, info1, info2, rip=rip, regs=regs, data=data)
        if self.tracer.enabled:  # once per exit: do not build the event for nobody
            self._trace(
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
        raise _ExitNow

    def _automatic_exit(
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
            self._exit_to_host(code, info1, info2)
        if advance:
            self._set_rip(self.rip() + self._ae_length(code, insn))
        self._save_vmsa()
        self._record_exit(code, info1, info2, rip=None, regs=None)

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
        if code == SvmExit.HLT and insn[:1] == b"\xf4":
            return 1
        return decode.length(insn, self.code_bits())

    def _save_vmsa(self) -> None:
        """Write all state into the encrypted VMSA and have the SP seal it."""
        assert self.vmsa_spa is not None
        page = state.capture(self.uc, self.ctx, self._scratch_page)
        self.memory.write_private(self.vmsa_spa, page)
        self._saved_vmsa = bytes(page)
        self.machine.vmsa_seal(self)
        if self.tracer.enabled:
            self._trace("cpu", "world-switch", "state saved to the VMSA and sealed", target="sp")

    def _shutdown(self, why: str) -> None:
        self.status = VcpuState.DEAD
        self._trace("cpu", "shutdown", f"shutdown: {why}", target="hv", reason=why)
        self.vmcb["exit_code"] = SvmExit.SHUTDOWN
        self._exit = VmExit(self.index, SvmExit.SHUTDOWN, detail=why)
        raise _ExitNow

    # -- control registers ----------------------------------------------------------
    def _cr_write(self, cr: int) -> None:
        insn = self.fetch_insn()
        w = decode.cr_write(insn, self.code_bits())
        if self.vmcb["intercept_cr_write"] >> cr & 1:
            self._non_automatic(0x10 + cr)
            return
        ctx = self.ctx.load()
        current = ctx.cr(cr) if cr != 8 else self.uc.reg_read(ux.UC_X86_REG_CR8)
        if w.kind == "mov":
            value = ctx.gpr(w.gpr)  # type: ignore[arg-type]
            if self.code_bits() != 64:
                value &= 0xFFFF_FFFF
        elif w.kind == "clts":
            value = current & ~Cr0.TS
        else:  # lmsw: only PE, MP, EM, TS, and PE cannot be cleared
            src = ctx.gpr(w.gpr) & 0xF  # type: ignore[arg-type]
            value = (current & ~0xE) | src | (current & 1)
        if cr == 0:
            value |= Cr0.ET  # hardwired to 1 on AMD64
        fault = self._check_cr(cr, value)
        if fault is not None:
            self.deliver(Event(Vector.GP, EventKind.EXCEPTION, 0), ctx.rip)
            return
        self.uc.reg_write(_UCREG_CR[cr], value)
        self.ctx.invalidate()
        self._set_rip(ctx.rip + w.length)
        if cr in (0, 3, 4):
            self.linear.flush()  # QEMU flushes its own TLB on these writes
        self._trace("guest", "cr-write", f"CR{cr} <- {value:#x}", target="cpu", cr=cr, value=value)
        if cr == 0 and value & Cr0.PG and not current & Cr0.PG and self.tracer.enabled:
            self._trace_paging_on()
        if self.mode is GuestMode.SEV_ES and self.vmcb.intercepts(Intercept.CR0_WRITE_TRAP + cr):
            self._automatic_exit(cr_write_trap(cr), info1=value)

    def _trace_paging_on(self) -> None:
        """The moment paging takes effect, and whether the tables carry the C-bit.

        Until now every access was private (APM vol 2, 15.34.5: with paging
        off the C-bit cannot be expressed); from here the leaf entries
        decide. One read walk of the code page tells which case the guest
        built: with the C-bit, its memory stays private and a page can be
        shared by clearing it (the GHCB).
        """
        st = self.paging_state(cpl=0)
        rip = self.linear_rip()
        res = self.mmu.walk(rip, Access.READ, st)
        c_bit = bool(self.config.c_bit) and isinstance(res, Translation) and res.private
        form = "long mode, 4-level" if st.long_mode else "PAE" if st.pae else "32-bit"
        if c_bit:
            what = f"C-bit {self.config.cbitpos} set at RIP {rip:#x}: memory stays private"
        elif not isinstance(res, Translation):
            what = f"RIP {rip:#x} is not mapped"
        else:
            what = "no C-bit in the tables"
        self._trace(
            "cpu",
            "paging",
            f"paging on ({form}, CR3 {st.cr3:#x}): {what}",
            target="guest",
            cr3=st.cr3,
            long_mode=st.long_mode,
            c_bit=c_bit,
            rip=rip,
        )

    def _check_cr(self, cr: int, value: int) -> str | None:
        """The architectural #GP checks QEMU's TCG leaves out (APM vol 2, 3.1.1, 3.1.3)."""
        if value >> 32 and cr in (0, 4):
            return "reserved bits"
        if cr == 0 and value & Cr0.PG and not value & Cr0.PE:
            return "PG without PE"
        if cr == 0 and value & Cr0.NW and not value & Cr0.CD:
            return "NW without CD"
        if cr == 4 and self.ctx.efer & Efer.LMA and not value & Cr4.PAE:
            return "clearing PAE in long mode"
        return None

    # -- MSRs ------------------------------------------------------------------------
    def _msr(self) -> None:
        ctx = self.ctx.load()
        msr = ctx.gpr(1) & 0xFFFF_FFFF
        write = ctx.error_code == 1
        rip = ctx.rip
        value = (ctx.gpr(0) & 0xFFFF_FFFF) | ((ctx.gpr(2) & 0xFFFF_FFFF) << 32)
        in_place = IN_PLACE_MSRS.get(msr)
        if in_place is not None and self._in_place_msr(msr, write, value, in_place):
            self._set_rip(rip + 2)
            return
        if self.vmcb.msr_intercepted(msr, write):
            self._non_automatic(SvmExit.MSR, int(write), 0, msr=msr)
            return
        # Not intercepted by the host: the hardware executes it.
        if write:
            self._native_wrmsr(msr, value)
        else:
            result = self._native_rdmsr(msr)
            ctx = self.ctx.load()
            ctx.set_gpr(0, result & 0xFFFF_FFFF)
            ctx.set_gpr(2, result >> 32)
            ctx.store()
        self._set_rip(rip + 2)
        if (
            write
            and msr == Msr.EFER
            and self.mode is GuestMode.SEV_ES
            and self.vmcb.intercepts(Intercept.EFER_WRITE_TRAP)
        ):
            self._automatic_exit(SvmExit.EFER_WRITE_TRAP, info1=self.ctx.load().efer)

    def _native_rdmsr(self, msr: int) -> int:
        from sevx86.arch.vmcb import msrpm_covers

        if not msrpm_covers(msr):
            raise GuestFault(Vector.GP, 0, reason=f"RDMSR {msr:#x}")
        return self.svm.read_msr(msr)

    def _native_wrmsr(self, msr: int, value: int) -> None:
        from sevx86.arch.vmcb import msrpm_covers

        if not msrpm_covers(msr):
            raise GuestFault(Vector.GP, 0, reason=f"WRMSR {msr:#x}")
        if msr == Msr.EFER:
            # LMA is read-only: hardware keeps it (APM vol 2, 3.1.7).
            value = (value & ~Efer.LMA) | (self.ctx.load().efer & Efer.LMA)
        self.svm.write_msr(msr, value)
        self.ctx.invalidate()

    def _in_place_msr(self, msr: int, write: bool, value: int, allowed: tuple[bool, bool]) -> bool:
        """The MSRs SEV hardware virtualizes itself; True if handled here."""
        if msr == Msr.SEV_STATUS and not write and self.mode.encrypted:
            status = SevStatus.SEV_ENABLED
            if self.mode is GuestMode.SEV_ES:
                status |= SevStatus.SEV_ES_ENABLED
            self._set_edx_eax(int(status))
            return True
        if msr == Msr.SEV_ES_GHCB and self.mode is GuestMode.SEV_ES:
            if write:
                self.ghcb_msr = value
                self._trace(
                    "guest", "ghcb-msr-write", f"GHCB MSR <- {value:#x}", target="cpu", value=value
                )
            else:
                self._set_edx_eax(self.ghcb_msr)
            return True
        if msr == Msr.SEV_STATUS and write and self.mode.encrypted:
            raise GuestFault(Vector.GP, 0, reason="SEV_STATUS is read-only")
        return False

    def _set_edx_eax(self, value: int) -> None:
        ctx = self.ctx.load()
        ctx.set_gpr(0, value & 0xFFFF_FFFF)
        ctx.set_gpr(2, (value >> 32) & 0xFFFF_FFFF)
        ctx.store()

    # -- I/O ---------------------------------------------------------------------------
    def _intercept_io(self) -> None:
        assert self._io is not None
        port, size, is_in = self._io
        self._io = None
        insn = self.fetch_insn()
        access = decode.io_access(insn, self.code_bits())
        ctx = self.ctx.load()
        info1 = access.exitinfo1(ctx.gpr(2))
        next_rip = ctx.rip + access.length
        if self.mode is GuestMode.SEV_ES:
            self._inject_vc(SvmExit.IOIO)
        else:
            self._exit_to_host(
                SvmExit.IOIO, info1, next_rip, next_rip=next_rip, port=port, size=size, is_in=is_in
            )

    # -- nested page faults (MMIO) --------------------------------------------------------
    def _nested_fault(self, fault: NestedFault) -> None:
        if self.mode is GuestMode.SEV_ES and not fault.readonly:
            self._inject_vc(SvmExit.NPF)
            return
        code = PfErr.US if self.ctx.load().cpl == 3 else 0
        if fault.access is Access.WRITE:
            code |= PfErr.WR
        if fault.access is Access.FETCH:
            code |= PfErr.ID
        if fault.readonly:
            code |= PfErr.P  # the nested entry is present, only not writable
        # EXITINFO2 is the faulting GPA to the byte (APM vol 2, 15.25.6).
        gpa = fault.gpa | (self._exact_fault_address(fault) & (PAGE_SIZE - 1))
        if self.mode is GuestMode.SEV_ES:
            # Only an NPF on a reserved-bit entry becomes #VC (MMIO); this one
            # is an automatic exit with the state sealed in the VMSA: the
            # host learns the GPA and the error code, never the instruction.
            self._automatic_exit(SvmExit.NPF, info1=int(code), info2=gpa)
            return
        # Decode assist: the host gets the instruction bytes (APM 15.33).
        self.vmcb.set_insn_bytes(self.fetch_insn())
        self._exit_to_host(
            SvmExit.NPF,
            int(code),
            gpa,
            gpa=gpa,
            access=fault.access.name.lower(),
            private=fault.private,
        )

    # ------------------------------------------------------------------ exceptions
    def _on_cpu_exception(self, vector: int) -> None:
        ctx = self.ctx.load()
        code = ctx.error_code if has_error_code(vector) else None
        self.deliver(Event(vector, EventKind.EXCEPTION, code), ctx.rip)

    def interrupt_context(self, return_rip: int) -> InterruptContext:
        ctx = self.ctx.load()
        rflags = self.uc.reg_read(ux.UC_X86_REG_RFLAGS)
        # Plain tuples straight into Segment: no SegmentState in between.
        fields = ctx.table_fields
        _, gdt_base, gdt_limit, _ = fields(C.GDT)
        _, idt_base, idt_limit, _ = fields(C.IDT)
        cs = ctx.segment_fields(C.SEG_CS)
        return InterruptContext(
            mode=self.cpu_mode(),
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
            code64=bool(cs[3] & 0x200),
        )

    def deliver(
        self, event: Event, return_rip: int, *, cr2: int | None = None, fault_rip: int | None = None
    ) -> None:
        """Deliver ``event`` through the guest's IVT/IDT, as the processor does."""
        ictx = self.interrupt_context(return_rip)
        try:
            plan, chain = deliver_with_escalation(ictx, event, self.linear, fault_rip=fault_rip)
        except TripleFault as exc:
            self._trace(
                "cpu",
                "exception",
                f"{event} -> triple fault",
                target="guest",
                vector=event.vector,
                error_code=event.error_code,
                rip=return_rip,
            )
            self._shutdown(f"triple fault: {exc}")
            return
        final = chain[-1]
        if plan.cr2 is not None:
            cr2 = plan.cr2
        elif final.vector != Vector.PF or len(chain) > 1 and chain[0].vector != Vector.PF:
            cr2 = cr2 if final is event else None
        self._apply(plan, cr2 if final.vector == Vector.PF else None)
        if event.vector != Vector.VC or len(chain) > 1:
            names = " -> ".join(str(e) for e in chain)
            self._trace(
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

    def _apply(self, plan: DeliveryPlan, cr2: int | None) -> None:
        user_stack = plan.cpl == 3
        for addr, data in plan.stack:
            self.linear.write(addr, data, user=user_stack)
        ctx = self.ctx.load()
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
        ctx.set_u32(C.OLD_EXCEPTION, 0xFFFF_FFFF)  # -1: no exception in flight
        ctx.recompute_hflags()
        ctx.store()
        self.uc.reg_write(ux.UC_X86_REG_RFLAGS, plan.rflags)
        self.ctx.invalidate()

    def _invalidate_tlbs(self) -> None:
        self.linear.flush()
        self._flush_tlb()

    def _flush_tlb(self) -> None:
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def _set_rip(self, rip: int) -> None:
        self.uc.reg_write(ux.UC_X86_REG_RIP, rip)
        self.ctx.invalidate()

    # ------------------------------------------------------------------ event injection
    def _inject_pending_event(self) -> None:
        self.linear.begin_event()
        value = self.vmcb["event_inj"] | (self.vmcb["event_inj_err"] << 32)
        if not value & EVENTINJ_V:
            return
        self.vmcb["event_inj"] = 0
        ev = decode_event(value)
        kind = {
            EventType.INTR: EventKind.EXTERNAL,
            EventType.NMI: EventKind.EXTERNAL,
            EventType.SOFT_INT: EventKind.SOFTWARE,
        }.get(ev.event_type, EventKind.EXCEPTION)
        self._trace(
            "hv",
            "inject",
            f"inject vector {ev.vector:#x}",
            target="cpu",
            vector=ev.vector,
            type=ev.event_type,
        )
        try:
            self.deliver(Event(ev.vector, kind, ev.error_code), self.rip())
        except _ExitNow:
            pass


class _Watchdog:
    """Stops a vCPU's Unicorn at a wall-clock deadline: one thread per vCPU, reused.

    A ``threading.Timer`` per VMRUN cost about 0.3 ms (a thread start and a
    join), more than a whole SEV-ES #VC round trip's worth of guest work.
    Here one daemon thread sleeps until the armed deadline; arming again
    with the same or a later deadline (the hypervisor's run loop passes what
    is left of one fixed deadline) wakes nobody. The thread holds only a weak
    reference to the vCPU and ends with it.
    """

    def __init__(self, vcpu: VCpu):
        self._vcpu = weakref.ref(vcpu)
        self._cond = threading.Condition()
        self._deadline = 0.0
        self._active = False
        self._sleeping_until: float | None = None  # None: waiting to be armed
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vcpu-watchdog", daemon=True)
        self._thread.start()
        weakref.finalize(vcpu, self.close)

    def arm(self, seconds: float) -> None:
        with self._cond:
            self._deadline = time.monotonic() + seconds
            self._active = True
            if self._sleeping_until is None or self._deadline < self._sleeping_until:
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._active = False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._active:
                    self._sleeping_until = None
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._sleeping_until = self._deadline
                    self._cond.wait(remaining)
                    continue
                self._active = False
                vcpu = self._vcpu()
                if vcpu is None:
                    return
                vcpu._on_timeout()
                del vcpu


class _ExitNow(Exception):
    """Internal: an exit was recorded; stop Unicorn and return it."""


__all__ = ["GuestLinear", "StopReason", "VCpu", "VcpuState", "VmExit"]
