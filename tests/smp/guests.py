"""SMP test guests: harness-built, several vCPUs, the per-vCPU #VC handler.

Every program is assembled with ``%define VC_PERCPU`` (each vCPU finds its
GHCB and #VC state after its own TSS) and includes vc_handler64.S and
smp.S. vCPU n's GHCB is ``ghcb(n)``: pages from 0x20000, mapped C=0.
"""

from __future__ import annotations

from sevx86.arch.vectors import Vector
from sevx86.config import GuestConfig, GuestMode
from sevx86.harness import GuestSpec, build_machine
from sevx86.hv import Hypervisor
from sevx86.hv.scheduler import DeterministicScheduler, ParallelScheduler, Scheduler
from sevx86.trace.events import Tracer

GHCB_BASE = 0x20000
CBIT_MASK = 1 << 51
TAIL = """
%include "vc_handler64.S"
%include "smp.S"
"""


def ghcb(index: int) -> int:
    return GHCB_BASE + index * 0x1000


def scheduler(kind: str, seed: int = 0, quantum: int = 2_000) -> Scheduler:
    if kind == "parallel":
        return ParallelScheduler()
    return DeterministicScheduler(seed, quantum=quantum)


def build(
    source: str,
    vcpus: int,
    *,
    sched: str | Scheduler = "deterministic",
    seed: int = 0,
    quantum: int = 2_000,
    ap_start: str = "run",
    preset_ghcbs: range | list[int] | None = None,
    shared: tuple[int, ...] = (),
    handlers: dict[int, str] | None = None,
    ap_entry: str | None = None,
    tracer: Tracer | None = None,
    mode: str = "sev-es",
    mmio: tuple[int, ...] = (),
) -> tuple[object, object, Hypervisor]:
    """(machine, program, hypervisor) for ``source`` on ``vcpus`` vCPUs.

    ``preset_ghcbs``: vCPUs whose GHCB the harness writes into their #VC
    block (default: all); the others register theirs (smp_register_ghcb).
    """
    preset = range(vcpus) if preset_ghcbs is None else preset_ghcbs
    spec = GuestSpec(
        source + TAIL,
        handlers={Vector.VC: "vc_handler", **(handlers or {})},
        ghcbs={i: ghcb(i) for i in preset},
        shared_pages=tuple(ghcb(i) for i in range(vcpus)) + shared,
        mmio=mmio,
        ap_entry=ap_entry,
        defines={"VC_PERCPU": 1, "VC_CBIT_MASK": CBIT_MASK},
        name="<smp test>",
    )
    config = GuestConfig(mode=GuestMode(mode), memory=8 << 20, vcpus=vcpus)
    machine, program = build_machine(spec, config, tracer=tracer)
    sch = scheduler(sched, seed, quantum) if isinstance(sched, str) else sched
    hv = Hypervisor(machine.host_view(), scheduler=sch, ap_start=ap_start)
    return machine, program, hv


# End the run: status in AL to the debug-exit port (through the #VC handler).
EXIT = """
exit_with:                      ; AL = status
    mov dx, 0xF4
    out dx, al
.spin:
    jmp .spin
"""
