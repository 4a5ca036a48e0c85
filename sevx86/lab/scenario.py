"""A lab scenario: a name, the modes it runs in, and a function that runs it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sevx86.lab.report import Report


@dataclass(frozen=True)
class Scenario:
    """One published attack, reproduced: a guest program, a hostile host, a report."""

    name: str  # the CLI name, e.g. "cipherleaks"
    title: str
    modes: tuple[str, ...]  # the modes it means something in; all run by default
    run: Callable[[Sequence[str], int], Report]  # (modes, seed) -> Report
    doc: str  # its page, e.g. "docs/lab/cipherleaks.md"
