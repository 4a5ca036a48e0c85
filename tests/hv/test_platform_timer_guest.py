"""A guest sleeps on the PIT: HLT, IRQ0 through the 8259, its own IDT handler, EOI -- five times.

This is the whole platform path in one guest (modes none and sev, where
interrupts are injected at VMRUN): the PIT programmed for a 10 ms rate
(count 11932 at 1.193182 MHz), the 8259 initialized as Linux's
``init_8259A`` does with vector base 0x20 and only IRQ0 unmasked, and the
deterministic clock's idle warp waking each HLT at the next PIT edge. The
expected guest time is the PIT's: five periods of 11932 clocks.
"""

from __future__ import annotations

import pytest

from sevx86.arch.pit import PIT_HZ
from sevx86.hv.clock import VirtualClock
from sevx86.hv.machines import QemuPc
from sevx86.trace.events import Tracer
from tests.hv.guests import build, exit_direct

COUNT = 0x300000
PERIOD = 11932
TICKS = 5

GUEST = f"""
    mov rdi, {COUNT:#x}
    mov qword ptr [rdi], 0
    mov al, 0x11
    out 0x20, al
    out 0xA0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xA1, al
    mov al, 0x04
    out 0x21, al
    mov al, 0x02
    out 0xA1, al
    mov al, 0x01
    out 0x21, al
    out 0xA1, al
    mov al, 0xFE
    out 0x21, al
    mov al, 0xFF
    out 0xA1, al
    mov al, 0x34
    out 0x43, al
    mov al, {PERIOD & 0xFF}
    out 0x40, al
    mov al, {PERIOD >> 8}
    out 0x40, al
wait:
    sti
    hlt
    cli
    mov rdi, {COUNT:#x}
    cmp qword ptr [rdi], {TICKS}
    jb wait
""" + exit_direct(0)

DATA = f"""
timer_irq:
    push rax
    push rdi
    mov rdi, {COUNT:#x}
    inc qword ptr [rdi]
    mov al, 0x20
    out 0x20, al
    pop rdi
    pop rax
    iretq
"""


def boot(mode: str, tracer: Tracer | None = None):
    m, _, hv = build(GUEST, mode, data=DATA, handlers={0x20: "timer_irq"}, tracer=tracer)
    pc = QemuPc(hv, clock=VirtualClock())
    return m, hv, pc


@pytest.mark.parametrize("mode", ["none", "sev"])
def test_a_guest_halts_until_each_pit_interrupt(mode):
    m, hv, pc = boot(mode)
    result = hv.run(timeout=120)
    assert result.ok, result
    assert int.from_bytes(m.memory.read_private(COUNT, 8), "little") == TICKS
    # Guest time is the PIT's: five periods, reached by warping over the halts.
    five_periods_ns = TICKS * PERIOD * 1_000_000_000 // PIT_HZ
    assert five_periods_ns <= pc.clock.now_ns() < five_periods_ns + 1_000_000
    assert pc.clock.warped_ns > 0.9 * five_periods_ns


def test_the_same_guest_gives_the_same_trace_with_the_timers_running():
    def trace() -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        tracer = Tracer([lambda e: events.append((e.kind, e.summary))], keep=False)
        _, hv, _ = boot("none", tracer)
        assert hv.run(timeout=120).ok
        return events

    first = trace()
    assert any(kind == "clock" for kind, _ in first)
    assert first == trace()
