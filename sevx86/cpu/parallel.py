"""Running vCPUs in parallel host threads: what must be serialized, and how.

Each vCPU is its own Unicorn instance over the same guest RAM and
``Uc.emu_start`` releases the GIL, so vCPUs in separate threads run guest
code at the same time. ``World`` is the stop-the-world gate: an exclusive
section (a cross-vCPU invalidation from ``PhysicalMemory``, or an atomic
instruction) runs with every other engine stopped at an instruction
boundary. ``AtomicWatch`` puts a code hook before and after each LOCK /
XCHG-with-memory / MFENCE instruction of the pages a vCPU executes, because
Unicorn 2.1 emits LOCK RMWs as plain load-op-store.

Why, the measurements, the known holes (LOCK atomicity is not guaranteed
yet) and what was ruled out are in docs/parallel.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol, TypeVar

from capstone import CS_ARCH_X86, CS_MODE_32, CS_MODE_64, Cs
from capstone import x86_const as cx
from unicorn import UC_HOOK_CODE

from sevx86.arch.paging import PAGE_SIZE

if TYPE_CHECKING:
    from unicorn import Uc

    from sevx86.memory.dram import PhysicalMemory


class Engine(Protocol):
    """What the world needs of a vCPU: a way to make it leave ``emu_start``."""

    def stop_for_world(self) -> None: ...


T = TypeVar("T")

_LOCK = 0xF0
_LEGACY_PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf2\xf3\xf0")
_MAX_PREFIXES = 4
_MFENCE = b"\x0f\xae\xf0"


class World:
    """The set of running engines, and stop-the-world for exclusive sections."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: set[Engine] = set()
        self._owner: object | None = None  # a vCPU, or a host thread
        self._depth = 0
        self._local = threading.local()
        self.sections = 0  # exclusive sections so far (for tests and benchmarks)

    # -- engines around emu_start ----------------------------------------------------------
    def enter(self, vcpu: Engine) -> None:
        """Before ``emu_start``: wait while another vCPU is alone."""
        with self._cond:
            while self._owner is not None and self._owner is not vcpu:
                self._cond.wait()
            self._running.add(vcpu)
            self._local.vcpu = vcpu

    def leave(self, vcpu: Engine) -> None:
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

    def __init__(self, memory: PhysicalMemory, uc: Uc, world: World):
        self._memory = memory
        self._uc = uc
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
        data = self._memory.read_private(gpa & ~(PAGE_SIZE - 1), PAGE_SIZE)
        uc = self._uc
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


__all__ = ["AtomicWatch", "Engine", "World", "atomic_instructions"]
