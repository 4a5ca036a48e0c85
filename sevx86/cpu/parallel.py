"""Running vCPUs in parallel host threads: what must be serialized, and how.

Each vCPU is its own Unicorn instance over the same guest RAM, and
``Uc.emu_start`` releases the GIL (ctypes), so vCPUs in separate threads run
guest code at the same time. Three things are then not safe by themselves:

1. **LOCK-prefixed instructions are not atomic.** QEMU's TCG emits atomic
   host operations for LOCK ADD/XADD/CMPXCHG/... only for translation blocks
   flagged ``CF_PARALLEL``; Unicorn 2.1 hard-wires ``curr_cflags()`` to 0
   (qemu/include/exec/exec-all.h), so every LOCK RMW becomes a plain load,
   op and store (qemu/tcg/tcg-op.c ``do_nonatomic_op_*``), and MFENCE emits
   nothing (``tcg_gen_mb`` checks the same flag). There is no Unicorn
   setting for it. Measured: 2 threads doing LOCK XADD 5M times each on one
   counter lost a third of the increments.

   Fix here: an instruction that must be atomic runs with every other vCPU
   stopped. When a page is first filled for execution, ``AtomicWatch``
   scans it for instructions with a LOCK prefix, XCHG with a memory operand
   (locked implicitly) and MFENCE, and puts a Unicorn code hook on each (a
   hook on one address costs nothing elsewhere) and one on the instruction
   after it. The first hook stops the world (``World.exclusive``: every
   other vCPU leaves ``emu_start`` at an instruction boundary and waits),
   the instruction runs alone, the second hook restarts the others. So a
   locked instruction is atomic with respect to every access of every other
   vCPU, and is a full barrier, as on hardware; it just costs a few tens of
   microseconds.

   Limits, stated honestly: a page is scanned when this vCPU first fills its
   translation for execution; code written into that page afterwards (by
   this or another vCPU) while the translation stays cached is not rescanned,
   so a LOCK instruction written there later would run unserialized. And a
   LOCK RMW on data that shares a 4 KiB page with code this vCPU executes
   was seen to take effect twice in about 1 run in 30 (QEMU restarts an
   instruction whose store hits translated code; the interplay with a stop
   request from another vCPU is not understood yet): keep shared data off
   code pages in parallel mode. tests/smp/test_counter.py does.
   Worse, open: in about 1 run in 10 of that test, one vCPU's hooks stopped
   firing after a few iterations (counted by ``AtomicWatch.hits``), i.e. its
   later LOCK XADDs ran unserialized; the total still came out exact in 100
   runs of 4 x 1500 increments, but that is luck under low contention, not a
   guarantee. Narrowed down since (Unicorn 2.1.4, 40 processes x 2 runs:
   2 bad; one process of 100 runs: 0 bad): per ``emu_start``, the loop count
   (RCX) against ``hits`` shows the bad runs are single runs that restart
   at the LOCK XADD right after one ``stop_for_world`` landed on that vCPU,
   then execute every remaining iteration (1482 in one case) with no hook
   call at all until the run ends. The hooks did fire earlier in the same
   loop, so the translations do carry them (ruling out a translation made
   before the scan, or hooks added mid-translation). What matches is
   Unicorn's stop path: ``helper_uc_tracecode`` (uc.c) returns without
   calling any code hook while ``uc->stop_request`` is set, and
   ``uc_emu_stop`` from another thread sets that flag *before* its
   ``cpu_exit`` and not atomically with it. If the exit request is lost
   (e.g. it lands while ``uc_emu_start`` is starting, whose
   ``resume_all_vcpus`` clears ``cpu->exit_request``), the engine runs on with
   every code hook skipped until something else stops it (upstream
   unicorn#1153, #1355 describe the same cross-thread race). A standalone
   repro of that exact window (one thread restarting ``emu_start``, another
   stopping it on each start) has not fired in ~300k tries, so this is the
   leading explanation, not a proven one.
   Until that is settled, parallel mode does not guarantee atomicity.

2. **Cross-vCPU invalidation.** A host-side write into a page some vCPU
   executed must drop that vCPU's translated code (``Uc.mem_write`` on each
   engine), and a page-form change must flush every vCPU's TLB; neither may
   touch an engine that is running in another thread. ``PhysicalMemory``
   calls ``World.exclusive`` around both. In parallel mode memory shadowing is
   off (C=0 accesses go through the callback alias), so form changes do not
   happen at all.

3. **Plain accesses.** Guest loads and stores are host loads and stores in
   program order on an x86-64 host (TCG does not reorder guest memory
   operations within a block), so ordinary accesses keep x86's TSO ordering;
   LOCKed instructions and MFENCE are full barriers by (1).

Translations (TBs) and TLBs are per engine: a guest store from vCPU A into
code vCPU B has already translated is not seen by B until B's TB for it is
dropped. This matches neither hardware nor QEMU; guests that write code and
then start other CPUs on it (AP trampolines) are fine, cross-modifying code
that B already ran is not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from capstone import CS_ARCH_X86, CS_MODE_32, CS_MODE_64, Cs
from capstone import x86_const as cx
from unicorn import UC_HOOK_CODE

from sevx86.config import PAGE_SIZE

if TYPE_CHECKING:
    from sevx86.cpu.vcpu import VCpu

T = TypeVar("T")

_LOCK = 0xF0
_LEGACY_PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf2\xf3\xf0")
_MAX_PREFIXES = 4
_MFENCE = b"\x0f\xae\xf0"


class World:
    """The set of running engines, and stop-the-world for exclusive sections."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: set[VCpu] = set()
        self._owner: object | None = None  # a vCPU, or a host thread
        self._depth = 0
        self._local = threading.local()
        self.sections = 0  # exclusive sections so far (for tests and benchmarks)

    # -- engines around emu_start ----------------------------------------------------------
    def enter(self, vcpu: VCpu) -> None:
        """Before ``emu_start``: wait while another vCPU is alone."""
        with self._cond:
            while self._owner is not None and self._owner is not vcpu:
                self._cond.wait()
            self._running.add(vcpu)
            self._local.vcpu = vcpu

    def leave(self, vcpu: VCpu) -> None:
        """After ``emu_start``: an exclusive section of this vCPU ends with it."""
        with self._cond:
            self._running.discard(vcpu)
            if self._owner is vcpu:
                self._owner, self._depth = None, 0
            self._cond.notify_all()

    # -- exclusive sections ----------------------------------------------------------------
    def acquire(self) -> None:
        """Stop every other vCPU (at an instruction boundary) and keep them stopped."""
        me = getattr(self._local, "vcpu", None)
        me = me if me in self._running else None
        owner: object = me if me is not None else threading.current_thread()
        with self._cond:
            if self._owner is owner:
                self._depth += 1
                return
            # While we wait our own engine is parked in a hook: not "running".
            self._running.discard(me)  # type: ignore[arg-type]
            while self._owner is not None:
                self._cond.wait()
            self._owner, self._depth = owner, 1
            while self._running:
                for other in list(self._running):
                    other.stop_for_world()
                self._cond.wait(0.001)  # a stop can land before emu_start: resend
            if me is not None:
                self._running.add(me)
            self.sections += 1

    def release(self) -> None:
        me = getattr(self._local, "vcpu", None)
        with self._cond:
            if self._owner is None or (
                self._owner is not me and self._owner is not threading.current_thread()
            ):
                return
            self._depth -= 1
            if self._depth <= 0:
                self._owner, self._depth = None, 0
                self._cond.notify_all()

    def owns(self) -> bool:
        me = getattr(self._local, "vcpu", None)
        return self._owner is not None and self._owner in (me, threading.current_thread())

    def exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` with every other vCPU stopped."""
        self.acquire()
        try:
            return fn()
        finally:
            self.release()


class AtomicWatch:
    """Code hooks around the atomic instructions of the pages a vCPU executes."""

    def __init__(self, vcpu: VCpu, world: World):
        self.vcpu = vcpu
        self.world = world
        self._scanned: set[int] = set()
        self._pre: set[int] = set()
        self._post: set[int] = set()
        self._cs = {64: Cs(CS_ARCH_X86, CS_MODE_64), 32: Cs(CS_ARCH_X86, CS_MODE_32)}
        self.hits = 0

    def on_fill(self, vaddr: int, gpa: int, bits: int) -> None:
        """A translation of an executable page: hook its atomics (once per page)."""
        page = vaddr & ~(PAGE_SIZE - 1)
        if page in self._scanned:
            return
        self._scanned.add(page)
        data = self.vcpu.memory.read_private(gpa & ~(PAGE_SIZE - 1), PAGE_SIZE)
        uc = self.vcpu.uc
        for offset, length in atomic_instructions(data, self._cs[64 if bits == 64 else 32]):
            start = page + offset
            if start not in self._pre:
                self._pre.add(start)
                uc.hook_add(UC_HOOK_CODE, self._before, None, start, start)
            after = start + length
            if after not in self._post:
                self._post.add(after)
                uc.hook_add(UC_HOOK_CODE, self._after, None, after, after)

    def _before(self, uc: object, address: int, size: int, _data: object) -> None:
        self.hits += 1
        # QEMU may restart the instruction (a store into a page holding
        # translated code re-executes it alone): the hook fires again while
        # this vCPU is already alone; one release must still end it.
        if not self.world.owns():
            self.world.acquire()

    def _after(self, uc: object, address: int, size: int, _data: object) -> None:
        if self.world.owns():
            self.world.release()


def atomic_instructions(data: bytes, cs: Cs) -> Iterator[tuple[int, int]]:
    """(offset, length) of instructions in ``data`` that must run atomically.

    Candidates are found by their bytes (a LOCK prefix 0xF0, an XCHG opcode
    0x86/0x87, MFENCE 0F AE F0) and confirmed by decoding from each possible
    start (up to four prefixes earlier). A candidate that is not where an
    instruction really starts is harmless: its hook never fires.
    """
    seen: set[int] = set()
    for opcode in (_LOCK, 0x86, 0x87):
        pos = data.find(bytes([opcode]))
        while pos != -1:
            for start in range(pos, max(-1, pos - _MAX_PREFIXES - 1), -1):
                if start != pos and not _prefix_or_rex(data[start], cs):
                    break
                if start in seen:
                    continue
                length = _atomic_length(data, start, cs)
                if length:
                    seen.add(start)
                    yield start, length
            pos = data.find(bytes([opcode]), pos + 1)
    pos = data.find(_MFENCE)
    while pos != -1:
        if pos not in seen:
            seen.add(pos)
            yield pos, len(_MFENCE)
        pos = data.find(_MFENCE, pos + 1)


def _prefix_or_rex(byte: int, cs: Cs) -> bool:
    return byte in _LEGACY_PREFIXES or (cs.mode == CS_MODE_64 and 0x40 <= byte <= 0x4F)


def _atomic_length(data: bytes, start: int, cs: Cs) -> int:
    insn = next(cs.disasm(data[start : start + 15], 0, 1), None)
    if insn is None:
        return 0
    cs.detail = True
    try:
        insn = next(cs.disasm(data[start : start + 15], 0, 1))
        if insn.prefix[0] == _LOCK:
            return insn.size
        if insn.id == cx.X86_INS_XCHG and any(op.type == cx.X86_OP_MEM for op in insn.operands):
            return insn.size
    finally:
        cs.detail = False
    return 0


__all__ = ["AtomicWatch", "World", "atomic_instructions"]
