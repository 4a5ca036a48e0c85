"""#VC round trips per second: a CPUID loop under SEV-ES vs the same loop in mode none.

SEV-ES: each CPUID raises #VC; a minimal inline handler (in the program
below) fills the GHCB with RAX, RCX, the exit code and the valid bits,
issues VMGEXIT, copies RAX..RDX back, advances RIP by 2 and IRETQs; the
Python hypervisor serves the VMGEXIT. Mode none: each CPUID is a plain exit
the hypervisor serves directly. Both run through ``Hypervisor.run`` with a
timeout, as the CLI drives it. Targets: >= 5,000 SEV-ES round trips/s and a
SEV-ES / none cost ratio <= 5.

Run: python benchmarks/bench_vc.py [--profile]
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import report  # noqa: E402
from sevx86.config import GuestConfig  # noqa: E402
from sevx86.harness import GuestSpec, build_machine  # noqa: E402
from sevx86.hv import Hypervisor  # noqa: E402

GHCB = 0x5000
N = 3000

LOOP = """
    mov r15, {n}
cpuid_loop:
    xor eax, eax
    xor ecx, ecx
    cpuid
    dec r15
    jnz cpuid_loop
"""

SEV_ES = f"""
start:
    mov ecx, 0xC0010130
    mov eax, {GHCB | 0x012:#x}
    xor edx, edx
    wrmsr
    vmgexit
    mov ecx, 0xC0010130
    mov eax, {GHCB:#x}
    xor edx, edx
    wrmsr
    mov rdi, {GHCB:#x}
    mov word ptr [rdi + 0xFFA], 2
    mov dword ptr [rdi + 0xFFC], 0
{LOOP}
    mov rdi, {GHCB:#x}
    mov qword ptr [rdi + 0x390], 0x7B
    mov rax, 0x00F40010
    mov [rdi + 0x398], rax
    mov qword ptr [rdi + 0x3A0], 0
    xor eax, eax
    mov [rdi + 0x1F8], rax
    mov rax, 0x8000000000000000
    mov [rdi + 0x3F0], rax
    mov rax, 0x001C000000000000
    mov [rdi + 0x3F8], rax
    vmgexit
    hlt

vc_handler:
    push rdi
    mov rdi, {GHCB:#x}
    mov [rdi + 0x1F8], rax
    mov [rdi + 0x308], rcx
    mov qword ptr [rdi + 0x390], 0x72
    mov qword ptr [rdi + 0x398], 0
    mov qword ptr [rdi + 0x3A0], 0
    mov rax, 0x8000000000000000
    mov [rdi + 0x3F0], rax
    mov rax, 0x001C000200000000
    mov [rdi + 0x3F8], rax
    vmgexit
    mov rax, [rdi + 0x1F8]
    mov rbx, [rdi + 0x318]
    mov rcx, [rdi + 0x308]
    mov rdx, [rdi + 0x310]
    pop rdi
    add qword ptr [rsp + 8], 2
    add rsp, 8
    iretq
"""

NONE = f"""
start:
{LOOP}
    mov dx, 0xF4
    xor eax, eax
    out dx, al
    hlt
vc_handler:
    hlt
"""


def machine(mode: str, n: int) -> Hypervisor:
    source = (SEV_ES if mode == "sev-es" else NONE).replace("{n}", str(n))
    spec = GuestSpec(source, handlers={29: "vc_handler"}, shared_pages=[GHCB])
    m, _ = build_machine(spec, GuestConfig(mode=mode))
    return Hypervisor(m.host_view())


def rate(mode: str, n: int = N, repeat: int = 3) -> tuple[float, dict[str, int]]:
    """Best of ``repeat`` fresh machines (the least disturbed run)."""
    best, counters = 0.0, {}
    for _ in range(repeat):
        hv = machine(mode, n)
        start = time.perf_counter()
        result = hv.run(timeout=120)
        elapsed = time.perf_counter() - start
        if not result.ok:
            raise SystemExit(f"{mode}: {result.reason} {result.detail}")
        best, counters = max(best, n / elapsed), result.counters
    return best, counters


def profile(n: int = 1500) -> str:
    hv = machine("sev-es", n)
    prof = cProfile.Profile()
    prof.enable()
    hv.run(timeout=120)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


def main() -> None:
    rate("sev-es", 200, 1)  # warm up: capstone, keystone, Unicorn's translation cache
    es, es_counters = rate("sev-es")
    plain, _ = rate("none")
    report(
        "#VC round trips: CPUID loop, sev-es (#VC + GHCB + VMGEXIT) vs none (direct exit)",
        [
            {
                "sev_es_per_s": es,
                "none_per_s": plain,
                "cost_ratio_es_over_none": plain / es,
                "target_es_per_s": 5000,
                "target_ratio": 5,
                "vmgexits": es_counters.get("vmgexit:CPUID", 0),
            }
        ],
    )
    if "--profile" in sys.argv:
        print(profile())


if __name__ == "__main__":
    main()
