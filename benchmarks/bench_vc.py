"""#VC round trips per second through the firmware's real handler, vs raw Unicorn.

sevx86 side: ``sevx86 run``'s path -- the firmware (``firmware/``) boots,
registers its GHCB and runs a payload doing N CPUIDs; each CPUID raises #VC,
``guest_asm/vc_handler64.S`` fills the GHCB, VMGEXIT reaches the Python
hypervisor, which answers, and the handler copies the result back and IRETQs.
The boot is timed too (a run with N = 0) and subtracted.

Raw side, in the same run: a bare Unicorn running the same CPUID loop, whose
UC_HOOK_INSN hook on CPUID stops emulation; Python then saves the context,
restores it and restarts -- the cheapest stop/restart Unicorn itself allows,
the ceiling for any engine that leaves emulation per exit.

Targets (issue 11): >= 20,000 round trips/s and >= 0.5 of the raw rate.

Run: python benchmarks/bench_vc.py [--n N] [--profile]
(``--profile`` prints the top functions of a cProfile of the sevx86 side;
for native frames use ``py-spy record --native -- python benchmarks/bench_vc.py``.)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, Uc  # noqa: E402
from unicorn import x86_const as ux  # noqa: E402

from benchmarks._common import report  # noqa: E402
from sevx86.asm import assemble  # noqa: E402
from sevx86.boot.firmware import boot_machine  # noqa: E402
from sevx86.config import GuestConfig, GuestMode  # noqa: E402
from sevx86.hv import Hypervisor  # noqa: E402

# The payload: N CPUIDs, then exit status 0 in RAX (firmware/README.md).
PAYLOAD = """
bits 64
    mov r15, {n}
    test r15, r15
    jz done
again:
    xor eax, eax
    xor ecx, ecx
    cpuid
    dec r15
    jnz again
done:
    xor eax, eax
    ret
"""
CODE_BASE = 0x1000


def sevx86_seconds(n: int, mode: str = "sev-es") -> tuple[float, int]:
    """Wall time of one ``sevx86 run`` of the payload, and the exits the run made."""
    program = assemble(PAYLOAD.replace("{n}", str(n)), base=0x100000)
    booted = boot_machine(program.code, GuestConfig(mode=GuestMode(mode)))
    hv = Hypervisor(booted.machine.host_view())
    start = time.perf_counter()
    result = hv.run(timeout=600)
    elapsed = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"sevx86 {mode}: {result.reason} {result.detail}")
    return elapsed, sum(v.exits for v in booted.machine.vcpus)


def sevx86_rate(n: int, repeat: int) -> tuple[float, float]:
    """Round trips/s with the boot subtracted (best of ``repeat``), and exits/s."""
    boot = min(sevx86_seconds(0)[0] for _ in range(repeat))
    best, exits_rate = 0.0, 0.0
    for _ in range(repeat):
        elapsed, exits = sevx86_seconds(n)
        rate = n / max(elapsed - boot, 1e-9)
        if rate > best:
            best, exits_rate = rate, exits / elapsed
    return best, exits_rate


def _stop_at_cpuid(uc: Uc, stopped: list[bool]) -> int:
    stopped.append(True)
    uc.emu_stop()
    return 1  # Unicorn emulates CPUID itself; the stop is what costs


def raw_rate(n: int, repeat: int) -> float:
    """Bare Unicorn: the same CPUID loop, a stop and a Python save/restore per CPUID."""
    code = assemble(PAYLOAD.replace("{n}", str(n)).replace("ret", "hlt"), base=CODE_BASE).code
    best = 0.0
    for _ in range(repeat):
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0, 0x10000)
        uc.mem_write(CODE_BASE, code)
        ctx = uc.context_save()
        stopped: list[bool] = []
        uc.hook_add(UC_HOOK_INSN, _stop_at_cpuid, stopped, 1, 0, ux.UC_X86_INS_CPUID)
        rip, trips = CODE_BASE, 0
        start = time.perf_counter()
        while trips < n:
            stopped.clear()
            uc.emu_start(rip, 0)
            if not stopped:
                break
            trips += 1
            uc.context_update(ctx)  # what an exit saves ...
            uc.context_restore(ctx)  # ... and what the next entry loads
            rip = uc.reg_read(ux.UC_X86_REG_RIP)
        best = max(best, trips / (time.perf_counter() - start))
    return best


def profile(n: int) -> str:
    program = assemble(PAYLOAD.replace("{n}", str(n)), base=0x100000)
    booted = boot_machine(program.code, GuestConfig(mode=GuestMode.SEV_ES))
    hv = Hypervisor(booted.machine.host_view())
    prof = cProfile.Profile()
    prof.enable()
    hv.run(timeout=600)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="CPUIDs per run (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--profile", action="store_true", help="cProfile the sevx86 side")
    args = parser.parse_args()
    sevx86_seconds(200)  # warm up: capstone, keystone, the firmware build cache
    es, exits_per_s = sevx86_rate(args.n, args.repeat)
    raw = raw_rate(args.n, args.repeat)
    report(
        "#VC round trips: CPUID via vc_handler64.S under sev-es vs raw Unicorn stop/restart",
        [
            {
                "sev_es_per_s": es,
                "raw_unicorn_per_s": raw,
                "ratio_of_raw": es / raw,
                "exits_per_s": exits_per_s,
                "target_per_s": 20_000,
                "target_ratio": 0.5,
                "n": args.n,
            }
        ],
    )
    if args.profile:
        print(profile(min(args.n, 5000)))


if __name__ == "__main__":
    main()
