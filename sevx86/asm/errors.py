"""Where an assembly error happened, and the one exception the front end raises."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class SourceLocation:
    """A line of a user's source file (1-based), as printed in ``file:line`` form."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class MacroCall:
    """One level of macro expansion: which macro, invoked where."""

    name: str
    site: SourceLocation


class AsmError(Exception):
    """Bad assembly input. ``str()`` is ``file:line: message``.

    ``file``/``line`` point at the line of the user's source that holds the
    offending text (inside a macro body for code a macro produced);
    ``expansion`` lists the macro calls that produced it, outermost first,
    so a caller can point at the invocation too (the message already names
    the innermost one).
    """

    def __init__(
        self,
        where: SourceLocation | None,
        message: str,
        expansion: tuple[MacroCall, ...] = (),
    ) -> None:
        self.location = where or SourceLocation("<unknown>", 0)
        self.file = self.location.file
        self.line = self.location.line
        self.expansion = expansion
        if expansion:
            call = expansion[-1]
            message = f"{message} (in macro '{call.name}' called at {call.site})"
        self.message = message
        super().__init__(f"{self.location}: {message}")
