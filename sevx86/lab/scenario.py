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
    run: Callable[..., Report]  # (modes, seed) -> Report; also cases=N if it samples
    doc: str  # its page, e.g. "docs/lab/cipherleaks.md"
    cases: int | None = None  # a sampling scenario's default number of cases; None: not one

    def report(self, modes: Sequence[str], seed: int, cases: int | None = None) -> Report:
        """Run it; ``cases`` only for a sampling scenario (``ValueError`` otherwise)."""
        if cases is None:
            return self.run(modes, seed)
        if self.cases is None:
            raise ValueError(f"{self.name} has no cases to count: it runs the same attack once")
        if cases < 1:
            raise ValueError(f"--cases is at least 1, not {cases}")
        return self.run(modes, seed, cases=cases)
