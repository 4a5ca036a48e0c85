"""What a lab scenario hands back: figures per mode, a table, JSON.

A ``Report`` says what the hostile host tried, what it learned or changed,
whether the guest noticed, and the figures (numbers a test can check
against the mechanism). It is plain data: the CLI renders it as a table or
as JSON, tests read the figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Figure = int | float | str | bool | None | list[Any] | dict[str, Any]
WIDE_CELL = 40  # longer cells make the table a list


@dataclass
class ModeOutcome:
    """One mode's answer: the figures, and a sentence for the reader."""

    mode: str
    figures: dict[str, Figure] = field(default_factory=dict)
    verdict: str = ""

    def __getitem__(self, name: str) -> Figure:
        return self.figures[name]


@dataclass
class Report:
    """The outcome of one scenario run, in every mode it ran."""

    scenario: str
    title: str
    attempted: str  # what the host tried, one paragraph
    seed: int
    outcomes: list[ModeOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def mode(self, name: str) -> ModeOutcome:
        for outcome in self.outcomes:
            if outcome.mode == name:
                return outcome
        raise KeyError(f"{self.scenario} did not run in mode {name}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "title": self.title,
            "attempted": self.attempted,
            "seed": self.seed,
            "modes": {o.mode: {"figures": o.figures, "verdict": o.verdict} for o in self.outcomes},
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def render(self) -> str:
        """A text table, one row per figure and one column per mode, then the verdicts.

        Figures too long for a column are listed instead, one line per mode.
        """
        lines = [f"{self.scenario}: {self.title}", "", _wrap(self.attempted), ""]
        names: list[str] = []
        for outcome in self.outcomes:
            names += [n for n in outcome.figures if n not in names]
        cells = {n: [_cell(o.figures.get(n, "-")) for o in self.outcomes] for n in names}
        if len(self.outcomes) == 1:
            lines.append(f"mode {self.outcomes[0].mode}:")
            lines += [f"  {name}: {cells[name][0]}" for name in names]
        elif max((len(c) for row in cells.values() for c in row), default=0) > WIDE_CELL:
            width = max(len(o.mode) for o in self.outcomes) + 1
            for name in names:
                lines.append(name)
                for outcome, cell in zip(self.outcomes, cells[name], strict=True):
                    lines.append(f"  {(outcome.mode + ':').ljust(width)} {cell}")
        else:
            rows = [["figure"] + [o.mode for o in self.outcomes]]
            rows += [[name] + cells[name] for name in names]
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for index, row in enumerate(rows):
                lines.append(
                    "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                )
                if index == 0:
                    lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        lines += [f"{o.mode}: {o.verdict}" for o in self.outcomes if o.verdict]
        lines += self.notes
        return "\n".join(lines)


def _cell(value: Figure) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) if value else "none"
    if value is None:
        return "-"
    return str(value)


def _wrap(text: str, width: int = 100) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return "\n".join(lines)
