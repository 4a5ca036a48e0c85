"""Waiting for guest time: 5 s on a timer interrupt (HLT) and 5 s polling the ACPI PM timer.

Two guests (mode none, the QemuPc devices), each run with the realtime clock
and with the deterministic (icount) clock:

1. hlt-wait: the PIT at 100 Hz (count 11932) through the 8259, ``sti; hlt``
   until 500 interrupts have arrived -- 5 s of guest time. With the virtual
   clock every HLT warps to the next PIT edge, so the wait costs almost no
   wall time; with the realtime clock the host sleeps until each edge.
2. pm-poll: reads the PM timer (3.579545 MHz, 24 bits) until 5 s of its
   ticks have passed. Realtime: about 5 s of wall time. Virtual: each read is
   an exit of 10 us, so 5 s takes 500,000 exits.

Reported per case and clock: wall seconds, guest seconds (the platform
clock at the end), wall / guest. Targets (issue 13): realtime <= 1.2x;
virtual HLT wait < 1 s.

The local APIC timer is the local APIC model's (not wired to interrupts yet),
so the HLT case uses the PIT.

Run: python benchmarks/bench_wait.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import report  # noqa: E402
from sevx86.hv.clock import RealtimeClock, VirtualClock  # noqa: E402
from sevx86.hv.machines import QemuPc  # noqa: E402
from tests.hv.guests import build, exit_direct  # noqa: E402
from tests.hv.test_platform_timer_guest import DATA  # noqa: E402
from tests.hv.test_platform_timer_guest import GUEST as PIT_GUEST  # noqa: E402

GUEST_SECONDS = 5
PM_BASE = 0xB000
PM_TICKS = 3_579_545 * GUEST_SECONDS

# The tests' guest takes 5 PIT interrupts at 100 Hz; this one waits for 500 of them.
HLT_WAIT = PIT_GUEST.replace(
    "cmp qword ptr [rdi], 5", f"cmp qword ptr [rdi], {100 * GUEST_SECONDS}"
)
assert HLT_WAIT != PIT_GUEST

PM_POLL = f"""
    mov dx, 0xCF8
    mov eax, 0x8000_0B40
    out dx, eax
    mov dx, 0xCFC
    mov eax, {PM_BASE:#x}
    out dx, eax
    mov dx, 0xCF8
    mov eax, 0x8000_0B80
    out dx, eax
    mov dx, 0xCFC
    mov al, 1
    out dx, al
    mov dx, {PM_BASE + 8:#x}
    in eax, dx
    mov ebx, eax            ; last reading
    xor r8, r8              ; ticks so far
poll:
    in eax, dx
    mov ecx, eax
    sub ecx, ebx
    and ecx, 0xFFFFFF       ; 24-bit wrap
    add r8, rcx
    mov ebx, eax
    cmp r8, {PM_TICKS}
    jb poll
""" + exit_direct(0)


def run(source: str, clock: VirtualClock | RealtimeClock, **kw: object) -> tuple[float, float]:
    _, _, hv = build(source, "none", **kw)  # type: ignore[arg-type]
    pc = QemuPc(hv, clock=clock)
    start = time.perf_counter()
    result = hv.run(timeout=600)
    wall = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"benchmark guest failed: {result.reason.value} {result.detail}")
    return wall, pc.clock.now_ns() / 1e9


def main() -> None:
    rows = []
    for case, source, kw in (
        ("hlt-wait", HLT_WAIT, {"data": DATA, "handlers": {0x20: "timer_irq"}}),
        ("pm-poll", PM_POLL, {}),
    ):
        for name, make in (("realtime", RealtimeClock), ("icount", VirtualClock)):
            wall, guest = run(source, make(), **kw)
            row = {"case": case, "clock": name, "wall_s": wall, "guest_s": guest}
            rows.append({**row, "ratio": wall / guest})
    report("waiting for 5 s of guest time", rows)


if __name__ == "__main__":
    main()
