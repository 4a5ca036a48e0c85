"""Run a guest program (with its #VC handler) against a host, and look at the result.

``run_guest`` is what the ``sev_guest`` pytest fixture calls: it assembles
the program with the harness environment (``sevx86.harness``), shares the
GHCB page, tells the program where that page is and what the C-bit is
(``%define VC_GHCB_GPA`` / ``VC_CBIT_MASK``, which guest_asm/vc_handler64.S
picks up), lets the host set its intercepts, and runs until the guest
halts, asks to terminate, or something else stops it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sevx86.arch.vectors import Vector
from sevx86.arch.vmsa import VMSA, VMSA_SIZE
from sevx86.asm import Program
from sevx86.config import GuestConfig, GuestMode, MiB
from sevx86.harness import GuestSpec, build_machine
from sevx86.machine import HostView, Machine
from sevx86.testing.scripted_host import GhcbExit, HostResult, ScriptedHost, Termination
from sevx86.trace.events import TraceEvent, Tracer

# Where the fixture puts the GHCB page: a 4 KiB page below the harness page
# tables (0x10000), above its TSS (0x3000), inside the 4 KiB-mapped first 2 MiB.
DEFAULT_GHCB_GPA = 0xF000


class GuestHost(Protocol):
    """What ``run_guest`` needs from a host: set intercepts, then run to the end."""

    def attach(self, host: HostView) -> None: ...

    def run(self, host: HostView, *, timeout: float) -> HostResult: ...


@dataclass
class GuestRun:
    """The outcome of ``run_guest``: the machine, what the host saw, the trace."""

    machine: Machine
    program: Program
    host: GuestHost
    result: HostResult
    tracer: Tracer
    ghcb_gpa: int | None = None
    _vmsa: dict[str, int] | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        # Short: pytest prints it in every failed ``assert run.halted``; the
        # machine and the trace would fill a screen (describe() has the tail).
        return f"GuestRun({self.result.stopped}, {len(self.result.exits)} exits)"

    # -- how it ended ---------------------------------------------------------------
    @property
    def halted(self) -> bool:
        return self.result.halted

    @property
    def terminated(self) -> Termination | None:
        return self.result.terminated

    @property
    def exits(self) -> list[GhcbExit]:
        return self.result.exits

    @property
    def errors(self) -> list[str]:
        return self.result.errors

    def exits_named(self, name: str) -> list[GhcbExit]:
        return [e for e in self.result.exits if e.name == name]

    # -- guest memory (the private view: tests may look, the host may not) ------------
    def addr(self, where: str | int) -> int:
        return self.program.symbol(where) if isinstance(where, str) else where

    def read(self, where: str | int, size: int) -> bytes:
        return self.machine.memory.read_private(self.addr(where), size)

    def u8(self, where: str | int, index: int = 0) -> int:
        return self.read(self.addr(where) + index, 1)[0]

    def u16(self, where: str | int, index: int = 0) -> int:
        return int.from_bytes(self.read(self.addr(where) + 2 * index, 2), "little")

    def u32(self, where: str | int, index: int = 0) -> int:
        return int.from_bytes(self.read(self.addr(where) + 4 * index, 4), "little")

    def u64(self, where: str | int, index: int = 0) -> int:
        return int.from_bytes(self.read(self.addr(where) + 8 * index, 8), "little")

    # -- registers ----------------------------------------------------------------------
    def vmsa(self) -> dict[str, int]:
        """Registers saved at the last automatic exit (HLT, VMGEXIT) under SEV-ES,
        or the host-visible registers of the last exit in the other modes."""
        if self._vmsa is None:
            vcpu = self.machine.vcpus[0]
            if self.machine.mode is GuestMode.SEV_ES and vcpu.vmsa_spa is not None:
                page = self.machine.memory.read_private(vcpu.vmsa_spa, VMSA_SIZE)
                self._vmsa = {f.name: f.read(page) for f in VMSA}
            else:
                regs = self.result.last_exit.regs if self.result.last_exit else None
                if regs is None:
                    raise RuntimeError("no register state available for this exit")
                self._vmsa = {f.name: f.read(regs.raw()) for f in VMSA}
        return self._vmsa

    def reg(self, name: str) -> int:
        return self.vmsa()[name]

    # -- the trace -------------------------------------------------------------------
    def events(self, *kinds: str) -> list[TraceEvent]:
        return self.tracer.of_kind(*kinds)

    @property
    def vc_count(self) -> int:
        return len(self.tracer.of_kind("vc"))

    def describe(self) -> str:
        """A few lines for assertion messages: how it stopped, errors, last events."""
        lines = [f"stopped: {self.result.stopped}"]
        if self.result.last_exit is not None and self.result.last_exit.detail:
            lines.append(f"detail: {self.result.last_exit.detail}")
        if self.terminated is not None:
            lines.append(f"terminated: {self.terminated}")
        lines += [f"host error: {e}" for e in self.errors]
        lines += [f"  {e.actor}/{e.kind}: {e.summary}" for e in self.tracer.events[-12:]]
        return "\n".join(lines)


def run_guest(
    source: str,
    *,
    host: GuestHost | None = None,
    bits: int = 64,
    mode: GuestMode | str = GuestMode.SEV_ES,
    memory: int = 8 * MiB,
    handlers: Mapping[int, str] | None = None,
    ist: Mapping[int, int] | None = None,
    user_gates: Iterable[int] = (),
    ghcb_gpa: int | None = DEFAULT_GHCB_GPA,
    shared_pages: Iterable[int] = (),
    mmio: Iterable[int] = (),
    defines: Mapping[str, int | str] | None = None,
    include_paths: Iterable[Path] = (),
    timeout: float = 20.0,
    name: str = "<guest>",
    config: GuestConfig | None = None,
) -> GuestRun:
    """Assemble ``source``, launch it in a harness guest, run it against ``host``.

    ``handlers`` maps vectors to labels (default: #VC -> ``vc_handler``, or
    ``vc_early32`` for ``bits=32``); ``ist`` gives vectors an IST stack
    (64-bit, index 1 is the harness' IST1) and ``user_gates`` the vectors
    ring 3 may raise with INT n. In 64-bit guests the page at
    ``ghcb_gpa`` is mapped with C=0 and the program sees ``VC_GHCB_GPA``;
    every program sees ``VC_CBIT_MASK``; ``mmio`` GPAs get 2 MiB device
    windows mapped with C=0. ``host`` defaults to a
    ``ScriptedHost`` with empty tables.
    """
    config = config or GuestConfig(mode=GuestMode(mode), memory=memory)
    host = host if host is not None else ScriptedHost()
    vc_label = "vc_handler" if bits == 64 else "vc_early32"
    wired = {int(Vector.VC): vc_label} if handlers is None else dict(handlers)
    all_defines: dict[str, int | str] = {"VC_CBIT_MASK": config.c_bit}
    shared = list(shared_pages)
    if bits == 64 and ghcb_gpa is not None:
        all_defines["VC_GHCB_GPA"] = ghcb_gpa
        shared.append(ghcb_gpa)
    all_defines.update(defines or {})
    tracer = Tracer()
    spec = GuestSpec(
        source,
        bits=bits,
        handlers=wired,
        ist=dict(ist or {}),
        user_gates=tuple(user_gates),
        shared_pages=shared,
        mmio=tuple(mmio),
        name=name,
        include_paths=tuple(Path(p) for p in include_paths),
        defines=all_defines,
    )
    machine, program = build_machine(spec, config, tracer=tracer)
    view = machine.host_view()
    host.attach(view)
    result = host.run(view, timeout=timeout)
    return GuestRun(machine, program, host, result, tracer, ghcb_gpa if bits == 64 else None)
