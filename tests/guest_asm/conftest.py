"""Helpers for the guest_asm handler tests.

Each test runs one small guest program under SEV-ES through the
``sev_guest`` fixture (sevx86.testing.plugin) against a ``ScriptedHost``
that answers from values the test chose. ``nae_program`` wraps the
instruction under test: every general-purpose register gets a distinct
pattern (or a value the test asks for), the instruction runs, and the guest
halts; the registers then come from the VMSA saved at that HLT, so
``assert_only_changed`` can prove the handler left every other register
(and RSP, and the flags it does not own) as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

from sevx86.arch.vmsa import VMSA_GPR_NAMES
from sevx86.asm.guest_abi import GUEST_ASM_REASON_SET, VcReason
from sevx86.testing import GuestRun

# The plugin's fixture and report hook, for runs where the pytest11 entry
# point is not installed (a source checkout); harmless when it is.
from sevx86.testing.plugin import pytest_runtest_makereport, sev_guest  # noqa: F401

STACK_TOP = 0x80000  # sevx86.harness.STACK_TOP
GPRS = tuple(name for name in VMSA_GPR_NAMES if name != "rsp")


def pattern(name: str) -> int:
    """A value no handler would produce by accident, distinct per register."""
    i = VMSA_GPR_NAMES.index(name)
    return 0x5E5E_0000_0000_0000 | (i << 40) | (0x0101_0101 * (0x10 + i))


def nae_program(
    body: str,
    regs: Mapping[str, int] | None = None,
    *,
    setup: str = "",
    data: str = "",
    handler: str = '%include "vc_handler64.S"',
) -> str:
    """``setup``, then every GPR loaded, then ``body``, then HLT; ``data`` and
    the handler follow."""
    values = {name: pattern(name) for name in GPRS}
    values.update(regs or {})
    loads = "\n".join(f"    mov {name}, {value:#x}" for name, value in values.items())
    return f"""
start:
{setup}
{loads}
    ; -- the instruction(s) under test --
{body}
    ; -- end --
    hlt
{data}
{handler}
"""


def initial(regs: Mapping[str, int] | None = None) -> dict[str, int]:
    values = {name: pattern(name) for name in GPRS}
    values.update(regs or {})
    return values


def assert_halted(run: GuestRun) -> None:
    assert run.halted, run.describe()
    assert run.errors == [], run.describe()


def assert_only_changed(
    run: GuestRun, regs: Mapping[str, int] | None, changed: Iterable[str] = ()
) -> None:
    """Every GPR outside ``changed`` still holds its initial value; RSP too."""
    before = initial(regs)
    after = run.vmsa()
    skip = set(changed)
    wrong = {
        name: f"{before[name]:#x} -> {after[name]:#x}"
        for name in GPRS
        if name not in skip and after[name] != before[name]
    }
    assert wrong == {}, f"registers the handler should not touch changed: {wrong}"
    assert after["rsp"] == STACK_TOP


def assert_terminated(run: GuestRun, reason: VcReason) -> None:
    assert run.terminated is not None, run.describe()
    assert (run.terminated.reason_set, run.terminated.reason_code) == (
        GUEST_ASM_REASON_SET,
        int(reason),
    ), run.describe()


@pytest.fixture
def gp_handler_source() -> str:
    """A #GP handler recording its error code and faulting RIP, then skipping
    a 2-byte instruction (RDMSR/WRMSR) and returning."""
    return """
gp_handler:
    push rax
    mov rax, [rsp + 8]
    mov [gp_seen_error], rax
    mov rax, [rsp + 16]
    mov [gp_seen_rip], rax
    inc qword [gp_count]
    add qword [rsp + 16], 2
    pop rax
    add rsp, 8
    iretq
align 8
gp_seen_error: dq -1
gp_seen_rip: dq 0
gp_count: dq 0
"""
