"""Issue 15 item 13: the OVMF boots are bounded in exits, not in seconds.

A wall-clock limit fails a good boot on a slow or busy machine (the 900 s one
did). ``tests.ovmf.ExitBudget`` counts the guest's exits instead: the same
guest stops at the same point whatever the machine's speed.
"""

from __future__ import annotations

import ast
from pathlib import Path

from sevx86.hv import RunReason
from sevx86.trace.events import Tracer
from tests.hv.guests import build
from tests.ovmf import ExitBudget

OVMF_TESTS = sorted(Path(__file__).parent.glob("test_ovmf*.py"))

# A guest that never ends and exits on every iteration (a port the host ignores).
SPIN_WITH_EXITS = """
.loop:
    mov dx, 0x80
    out dx, al
    jmp .loop
"""


def test_item13_an_exit_budget_stops_a_runaway_guest_after_exactly_that_many_exits():
    budget = ExitBudget(500)
    tracer = Tracer([budget], keep=False)
    _, _, hv = build(SPIN_WITH_EXITS, "none", tracer=tracer)
    budget.hv = hv
    result = hv.run()  # no wall clock at all
    assert result.reason is RunReason.STOPPED, result
    assert result.detail == "exit budget of 500 spent"
    assert result.exits == budget.exits == 500


def test_item13_no_ovmf_boot_test_has_a_wall_clock_limit():
    assert OVMF_TESTS, "the OVMF boot tests moved"
    for path in OVMF_TESTS:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "run":
                    names = [k.arg for k in node.keywords]
                    assert "timeout" not in names, f"{path.name}:{node.lineno}: run(timeout=...)"
