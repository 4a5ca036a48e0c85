"""pytest plugin: the ``sev_guest`` fixture (entry point ``pytest11: sevx86``).

``sev_guest(source, **options)`` assembles and runs a guest program the way
sevx86's own handler tests do and returns a ``GuestRun``; options are those
of ``sevx86.testing.run_guest`` (``host=``, ``bits=``, ``memory=``,
``handlers=``, ``defines=``, ...). When a test fails, the last runs'
endings and trace tails are added to the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def sev_guest(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Factory: ``sev_guest(source, host=ScriptedHost(...), ...) -> GuestRun``."""
    from sevx86.asm import AsmError
    from sevx86.testing.guest import GuestRun, run_guest

    runs: list[GuestRun] = []

    def factory(source: str, **options: Any) -> GuestRun:
        options.setdefault("name", request.node.name)
        try:
            run = run_guest(source, **options)
        except AsmError as exc:
            # The user's source is wrong: its file:line message is the whole
            # story, not a traceback through the assembler.
            pytest.fail(str(exc), pytrace=False)
        runs.append(run)
        return run

    yield factory
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for i, run in enumerate(runs):
            report.sections.append((f"sev_guest run {i}", run.describe()))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
