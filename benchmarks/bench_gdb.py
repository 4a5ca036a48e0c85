"""What a debugger costs the guest: bench_vc's SEV-ES CPUID loop with and without --gdb's hooks.

Four runs of the same guest, back to back, through ``Hypervisor.run``: no
debugger; the debug hooks attached but nothing set (what ``--gdb`` costs
after ``continue``); one breakpoint the guest never reaches (a ranged code
hook); one watchpoint (which needs a code hook on every instruction while it
is set, sevx86/cpu/debug.py). Printed as round trips/s and as the ratio to
the run without a debugger.

Run: python benchmarks/bench_gdb.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import report  # noqa: E402
from benchmarks.bench_vc import GHCB, SEV_ES  # noqa: E402
from sevx86.config import GuestConfig  # noqa: E402
from sevx86.cpu.debug import VcpuDebug, WatchKind  # noqa: E402
from sevx86.harness import GuestSpec, build_machine  # noqa: E402
from sevx86.hv import Hypervisor  # noqa: E402

N = 2000
UNUSED = 0x7_0000  # a page the CPUID loop never touches


class Resume:
    def on_stop(self, stop) -> None:
        pass  # go on at once


def _run(setup) -> float:
    source = SEV_ES.replace("{n}", str(N))
    spec = GuestSpec(source, handlers={29: "vc_handler"}, shared_pages=[GHCB])
    m, _ = build_machine(spec, GuestConfig(mode="sev-es"))
    if setup is not None:
        vcpu = m.vcpus[0]  # the trusted vCPU, as sevx86.gdb attaches to it
        vcpu.debug = VcpuDebug(vcpu, Resume(), stop_at_start=False)
        setup(vcpu.debug)
    hv = Hypervisor(m.host_view())
    start = time.perf_counter()
    result = hv.run(timeout=300)
    elapsed = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"{result.reason} {result.detail}")
    return N / elapsed


CASES = {
    "no debugger": None,
    "hooks, nothing set": lambda d: None,
    "1 breakpoint (not hit)": lambda d: d.add_breakpoint(UNUSED),
    "1 watchpoint (not hit)": lambda d: d.add_watchpoint(UNUSED, 8, WatchKind.WRITE),
}


def main() -> None:
    _run(None)  # warm up
    rates = {name: max(_run(setup) for _ in range(3)) for name, setup in CASES.items()}
    base = rates["no debugger"]
    rows = [
        {"case": name, "round_trips_per_s": r, "ratio_to_no_debugger": r / base}
        for name, r in rates.items()
    ]
    report("gdb debug-hook cost on SEV-ES CPUID round trips", rows)


if __name__ == "__main__":
    main()
