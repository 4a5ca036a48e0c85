"""The engine side of a debugger: breakpoints, single step, watchpoints, stops.

A debugger (``sevx86.gdb``) never touches Unicorn. It talks to one
``VcpuDebug`` per vCPU, and the engine calls it at two places of its run loop.

Interface with the engine (``sevx86.cpu.vcpu.VCpu``)::

    vcpu.debug = VcpuDebug(vcpu, listener)   # registration: hooks on vcpu.uc
    # in the run loop, in the vCPU's thread, outside emu_start:
    vcpu.debug.before_entry()                # first thing of each iteration (before the
                                             # kick/timeout checks): report a pending stop,
                                             # apply changes; then re-read RIP, which the
                                             # debugger may have changed
    vcpu.debug.take_restart() -> bool        # after emu_start returned without an exit:
                                             # a debug stop, so re-enter at RIP (no exit
                                             # for the host)

It uses only public names of the vCPU: ``add_code_hook``/``remove_hook`` (the
engine's extension hooks, docs/engine.md), ``uc`` (memory hooks for watchpoints,
the TB flush), ``flush_tlb()``, ``ctx``, ``mode``, ``index``, ``status``,
``tracer``, ``switch`` (``save_vmsa``/``reload_vmsa``: the world switch's VMSA
write, seal and checked load), ``capture()``, ``linear_rip()``.

Interface with the debugger (any thread; changes take effect at the next entry)::

    add_breakpoint(addr) / remove_breakpoint(addr)    linear addresses (hardware and
                                                      software alike: no guest byte
                                                      is patched, the measured image
                                                      and the guest's view stay intact)
    add_watchpoint(addr, length, kind, gpa=...) / remove_watchpoint(addr, length, kind)
                                                      ``addr`` as the debugger names it,
                                                      ``gpa`` the guest-physical address
                                                      it translates to (one page at most)
    resume(step=False)                                when the stop returns; step: stop
                                                      again after one instruction
    request_stop() / cancel_stop()                    Ctrl-C: stop at the next instruction
    clear()                                           the debugger left: nothing set
    registers() -> bytes                              VMSA-layout plaintext, none/sev only
    write_registers(page)                             none/sev: loaded before the guest goes on
    (SEV-ES: the debugger writes the VMSA with DBG_ENCRYPT; the stop reloads it)

``listener.on_stop(stop)`` is called in the vCPU's thread while the vCPU is
stopped between two instructions, and the vCPU goes on when it returns.

Under SEV-ES the registers are in the encrypted VMSA only (APM vol 2
15.35.1): at a stop the engine writes the state into the VMSA and has the
Secure Processor seal it, exactly as at an automatic exit, so a debugger
reads them with DBG_DECRYPT of the VMSA page (SEV API 55766, DBG_DECRYPT)
and the guest owner's NODBG policy decides. ``registers()`` refuses there.

Unicorn facts this relies on (measured on unicorn 2.1.4; tests/cpu/test_debug.py fails
without them):

* a code hook sees the linear address of the instruction before it runs, and
  ``emu_stop`` inside it stops *before* that instruction;
* a hook added while translated blocks exist is not called from them: hook
  changes are made outside ``emu_start`` and followed by a TB flush;
* memory hooks see Unicorn *physical* addresses under ``UC_TLB_VIRTUAL`` (code
  hooks see the linear PC): a watchpoint hooks every view of its guest-physical
  range (private, the C=0 alias, the shared-form shadow; sevx86.memory.dram);
* ``emu_stop`` inside a memory hook leaves RIP on the instruction although
  its store is done, so a watchpoint hit only records itself and the stop is
  taken at the next instruction's code hook (after the access, as gdb expects).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from unicorn import (
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    Uc,
)

from sevx86.arch.vmsa import VMSA_SIZE
from sevx86.config import PAGE_SIZE, GuestMode
from sevx86.cpu import state
from sevx86.cpu.svm import STUB
from sevx86.memory.dram import SHADOW_BASE, SHARED_ALIAS_BASE
from sevx86.trace.events import TraceKind

if TYPE_CHECKING:
    from sevx86.cpu.vcpu import VCpu

_STUB_PAGE = STUB & ~(PAGE_SIZE - 1)
# Where Unicorn can see one guest-physical byte (sevx86.memory.dram): the
# private view, the C=0 alias, the shared-form shadow.
_VIEWS = (0, SHARED_ALIAS_BASE, SHADOW_BASE)


class StopKind(Enum):
    """Why a vCPU stopped for the debugger."""

    START = "start"  # before the first guest instruction
    BREAKPOINT = "breakpoint"
    STEP = "step"
    WATCHPOINT = "watchpoint"
    INTERRUPT = "interrupt"  # the debugger asked (Ctrl-C)


class WatchKind(Enum):
    """gdb's Z2/Z3/Z4 kinds."""

    WRITE = 2
    READ = 3
    ACCESS = 4


@dataclass(frozen=True)
class DebugStop:
    """A stop as the debugger learns it."""

    vcpu: int
    kind: StopKind
    pc: int  # linear address of the next instruction
    watch: tuple[WatchKind, int] | None = None  # the kind and address that hit


class DebugListener(Protocol):
    def on_stop(self, stop: DebugStop) -> None: ...


class VcpuDebug:
    """Breakpoints, single step and watchpoints of one vCPU."""

    def __init__(self, vcpu: VCpu, listener: DebugListener, *, stop_at_start: bool = True):
        self._vcpu = vcpu
        self._uc: Uc = vcpu.uc
        self._listener = listener
        self._lock = threading.Lock()
        self._breakpoints: set[int] = set()
        self._watchpoints: dict[tuple[int, int, WatchKind], int] = {}  # -> its gpa
        self._stepping = False
        self._stop_requested = False
        self._first = stop_at_start
        self._dirty = True  # hooks to (re)build at the next entry
        self._hooks: list[int] = []
        self._full_range = False
        self._pending: DebugStop | None = None
        self._watch_hit: tuple[WatchKind, int] | None = None
        self._skip: int | None = None  # resume here without stopping again
        self._restart = False
        self._pending_regs: bytes | None = None
        self._in_stop = False  # inside listener.on_stop for this vCPU

    @property
    def index(self) -> int:
        return self._vcpu.index

    # -- the debugger's calls ----------------------------------------------------------
    def add_breakpoint(self, addr: int) -> None:
        with self._lock:
            self._breakpoints.add(addr)
            self._dirty = True

    def remove_breakpoint(self, addr: int) -> bool:
        with self._lock:
            if addr not in self._breakpoints:
                return False
            self._breakpoints.discard(addr)
            self._dirty = True
            return True

    def add_watchpoint(
        self, addr: int, length: int, kind: WatchKind, *, gpa: int | None = None
    ) -> None:
        with self._lock:
            self._watchpoints[(addr, length, kind)] = addr if gpa is None else gpa
            self._dirty = True

    def remove_watchpoint(self, addr: int, length: int, kind: WatchKind) -> bool:
        with self._lock:
            if self._watchpoints.pop((addr, length, kind), None) is None:
                return False
            self._dirty = True
            return True

    def clear(self) -> None:
        """The debugger left: no breakpoint, watchpoint, step or stop request remains."""
        with self._lock:
            self._breakpoints.clear()
            self._watchpoints.clear()
            self._stepping = self._stop_requested = self._first = False
            self._dirty = True

    def resume(self, *, step: bool = False) -> None:
        """Let the vCPU go on when the stop returns; ``step``: stop after one instruction."""
        with self._lock:
            if step != self._stepping:
                self._dirty = True
            self._stepping = step
            self._stop_requested = False

    def request_stop(self) -> None:
        """Stop at the next guest instruction (thread-safe; Ctrl-C)."""
        with self._lock:
            self._stop_requested = True
            self._dirty = True
        self._uc.emu_stop()

    def cancel_stop(self) -> None:
        with self._lock:
            self._stop_requested = False

    def registers(self) -> bytes:
        """The registers at the stop as a VMSA-layout page (plaintext): none and sev only."""
        if self._vcpu.mode is GuestMode.SEV_ES:
            raise PermissionError("under SEV-ES the registers are in the VMSA (DBG_DECRYPT)")
        if self._pending_regs is not None:
            return self._pending_regs
        return bytes(self._vcpu.capture())

    def write_registers(self, page: bytes) -> None:
        """New registers (VMSA layout), loaded before the vCPU goes on: none and sev only.

        The vCPU that stopped loads them when the stop returns; another one, parked
        at an exit while the stopped one holds the debugger, at once. A vCPU never
        entered has no live state yet (its first VMRUN loads its initial state).
        """
        vcpu = self._vcpu
        if vcpu.mode is GuestMode.SEV_ES:
            raise PermissionError("under SEV-ES the registers are in the VMSA (DBG_ENCRYPT)")
        if len(page) != VMSA_SIZE:
            raise ValueError(f"a register page is {VMSA_SIZE} bytes")
        if self._in_stop:
            self._pending_regs = bytes(page)
        elif vcpu.status.value == "running":
            state.apply(vcpu.uc, vcpu.ctx, page)
        else:
            raise PermissionError(f"vCPU {vcpu.index} has not run yet (or is dead)")

    # -- the engine's calls -------------------------------------------------------------
    def before_entry(self) -> None:
        """At the top of the run loop: report a pending stop, then apply changes."""
        stop, self._pending = self._pending, None
        if stop is not None:
            self._report(stop)
        if self._dirty:
            self._rebuild_hooks()

    def take_restart(self) -> bool:
        """Did emu_start return because of the debugger (re-enter at RIP)?"""
        restart, self._restart = self._restart, False
        with self._lock:
            if self._stop_requested and not self._full_range:
                restart = True  # Ctrl-C: rebuild the hooks with a full-range one
        return restart

    # -- inside ------------------------------------------------------------------------
    def _report(self, stop: DebugStop) -> None:
        vcpu = self._vcpu
        if vcpu.mode is GuestMode.SEV_ES:
            self._publish_vmsa()
        self._pending_regs = None
        if vcpu.tracer.enabled:
            detail = f" ({stop.watch[0].name.lower()} {stop.watch[1]:#x})" if stop.watch else ""
            vcpu.tracer.emit(
                "cpu",
                TraceKind.DEBUG_STOP,
                f"stopped for the debugger: {stop.kind.value} at {stop.pc:#x}{detail}",
                vcpu=vcpu.index,
                reason=stop.kind.value,
                pc=stop.pc,
            )
        self._in_stop = True
        try:
            self._listener.on_stop(stop)
        finally:
            self._in_stop = False
        if vcpu.mode is GuestMode.SEV_ES:
            self._reload_if_written()
        elif self._pending_regs is not None:
            state.apply(vcpu.uc, vcpu.ctx, self._pending_regs)
            self._pending_regs = None
        self._skip = vcpu.linear_rip()

    def _publish_vmsa(self) -> None:
        """Write the state into the VMSA and seal it, as the CPU does at an automatic exit."""
        self._vcpu.switch.save_vmsa()

    def _reload_if_written(self) -> None:
        """A debugger wrote the VMSA (DBG_ENCRYPT): load it, checked as VMRUN checks it."""
        # Not a sealed write: nothing is loaded, and the next VMRUN refuses it
        # as it refuses any host write.
        self._vcpu.switch.reload_vmsa()

    def _rebuild_hooks(self) -> None:
        uc = self._uc
        vcpu = self._vcpu
        for h in self._hooks:
            vcpu.remove_hook(h)
        self._hooks = []
        with self._lock:
            self._dirty = False
            breakpoints = sorted(self._breakpoints)
            watchpoints = list(self._watchpoints.items())
            full = self._first or self._stepping or self._stop_requested or bool(watchpoints)
        self._full_range = full
        if full:
            self._hooks.append(vcpu.add_code_hook(self._on_code))
        else:
            for addr in breakpoints:
                self._hooks.append(vcpu.add_code_hook(self._on_code, addr, addr))
        for (addr, length, kind), gpa in watchpoints:
            for view in _VIEWS:
                start = view + gpa
                end = start + max(length, 1) - 1
                data = (kind, addr, start)
                if kind in (WatchKind.WRITE, WatchKind.ACCESS):
                    self._hooks.append(
                        uc.hook_add(UC_HOOK_MEM_WRITE, self._on_mem, data, start, end)
                    )
                if kind in (WatchKind.READ, WatchKind.ACCESS):
                    self._hooks.append(
                        uc.hook_add(UC_HOOK_MEM_READ, self._on_mem, data, start, end)
                    )
        # Blocks translated, and TLB entries filled, before carry the old hook set
        # (see the module docstring); the engine's fill hook refills the TLB.
        uc.ctl_flush_tb()
        vcpu.flush_tlb()

    def _on_code(self, uc: Uc, addr: int, _size: int, _data: object) -> None:
        if addr & ~(PAGE_SIZE - 1) == _STUB_PAGE:
            return  # the VMRUN stub is host mode, not the guest
        skip, self._skip = self._skip, None
        if skip == addr:
            return
        kind = None
        watch, self._watch_hit = self._watch_hit, None
        if watch is not None:
            kind = StopKind.WATCHPOINT
        elif self._first:
            self._first = False
            self._dirty = True
            kind = StopKind.START
        elif self._stop_requested:
            kind = StopKind.INTERRUPT
        elif self._stepping:
            kind = StopKind.STEP
        elif addr in self._breakpoints:
            kind = StopKind.BREAKPOINT
        if kind is None:
            return
        with self._lock:
            self._stop_requested = False
            if self._stepping:
                self._stepping = False
                self._dirty = True
        self._pending = DebugStop(self._vcpu.index, kind, addr, watch)
        self._restart = True
        uc.emu_stop()

    def _on_mem(
        self, uc: Uc, _access: int, addr: int, _size: int, _value: int, data: tuple
    ) -> None:
        kind, reported, start = data
        if self._watch_hit is None:
            self._watch_hit = (kind, reported + max(addr - start, 0))
