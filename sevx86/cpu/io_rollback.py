"""The IN/OUT rollback: turning Unicorn's mid-instruction I/O hook into an intercept.

Unicorn never raises the IOIO intercept (APM vol 2, 15.10.2): it only calls
``UC_HOOK_INSN`` from inside the I/O helper, with the instruction half done
and QEMU's copy of RIP possibly stale (a chained translation block does not
store RIP). The architecture wants the intercept *before* the instruction,
with RIP on it. So, from the hook:

1. ``begin``: find the instruction, put RIP on it, snapshot the whole CPU
   state, flush Unicorn's TLB and ask the run loop to stop. Until the loop
   has restored the snapshot, every fill is refused (``active``), so the rest
   of the translation block cannot store anything, and every other hook
   stops Unicorn at once.
2. ``finish`` (the run loop, however Unicorn stopped -- a refused fill, the
   stop request, or an intercept later in the same block): restore the
   snapshot and hand back the access, which the engine then treats as the
   IOIO intercept (#VC under SEV-ES, an exit otherwise).

docs/engine.md ("The IN/OUT rollback") records the Unicorn facts behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sevx86.arch.layout import U32_MASK, U64_MASK
from sevx86.cpu import context as C
from sevx86.cpu import decode
from sevx86.cpu.context import CpuContext
from sevx86.cpu.exceptions import GuestFault


@dataclass(frozen=True)
class PendingIo:
    """The access an intercepted IN/OUT made (what the IOIO intercept reports)."""

    port: int
    size: int
    is_in: bool


class CodeReader(Protocol):
    """What the rollback needs of the vCPU: the code size and guest-linear fetches."""

    def code_bits(self) -> int: ...

    def fetch(self, linear: int, size: int) -> bytes: ...


# How far to decode forward from a stale RIP: a translation block is at most
# a page of straight-line code with a few branches in it.
_MAX_STEPS = 64


class IoRollback:
    """One pending rollback at a time; ``active`` while a snapshot waits."""

    __slots__ = ("_ctx", "_code", "_snapshot", "_access")

    def __init__(self, ctx: CpuContext, code: CodeReader):
        self._ctx = ctx
        self._code = code
        self._snapshot: bytes | None = None
        self._access: PendingIo | None = None

    @property
    def active(self) -> bool:
        return self._snapshot is not None

    def begin(self, port: int, size: int, is_in: bool) -> None:
        ctx = self._ctx.load()
        ctx.set_u64(C.EIP, self.instruction_address(ctx.rip, port, size, is_in))
        self._snapshot = ctx.copy_bytes()
        self._access = PendingIo(port, size, is_in)

    def finish(self) -> PendingIo:
        """Restore the state before the I/O instruction; the access it made."""
        snapshot, access = self._snapshot, self._access
        assert snapshot is not None and access is not None
        self._snapshot = self._access = None
        self._ctx.restore_bytes(snapshot)
        return access

    def instruction_address(self, rip: int, port: int, size: int, is_in: bool) -> int:
        """The I/O instruction reachable from ``rip`` that matches this access.

        ``rip`` is the last value QEMU stored, at or before the start of the
        running translation block in execution order -- but not necessarily
        before it in memory: a block entered through a chained backward jump
        leaves RIP wherever it was last stored. So the search follows the
        code as it can run: straight on, and to the target of every direct
        JMP/Jcc/LOOP, breadth first, the nearest match winning.
        """
        bits = self._code.code_bits()
        base = 0 if bits == 64 else self._ctx.segment(C.SEG_CS).base
        ip_mask = (1 << bits) - 1  # RIP/EIP/IP wrap at the code size
        linear_mask = U64_MASK if bits == 64 else U32_MASK  # CS.base + IP, outside 64-bit
        dx = self._ctx.gpr(2) & 0xFFFF
        frontier = [rip]
        seen: set[int] = set()
        steps = 0
        while frontier and steps < _MAX_STEPS:
            addr = frontier.pop(0)
            if addr in seen:
                continue
            seen.add(addr)
            steps += 1
            try:
                insn = self._code.fetch((base + addr) & linear_mask, decode.MAX_INSN)
            except GuestFault:
                continue
            try:
                access = decode.io_access(insn, bits)
                if (access.port if access.port is not None else dx) == port and (
                    access.size == size and access.is_in == is_in
                ):
                    return addr
            except decode.DecodeError:
                pass
            flow = decode.control_flow(insn, bits, addr)
            if flow is None:
                continue
            fall_through, target = flow
            if fall_through is not None:
                frontier.append(fall_through & ip_mask)
            if target is not None:
                frontier.append(target & ip_mask)
        return rip
