"""The result of assembling: bytes, where they go, symbols, and which source
line made each byte."""

from __future__ import annotations

import bisect
import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from sevx86.asm.errors import MacroCall, SourceLocation


class UnknownSymbolError(KeyError):
    """``Program.symbol`` of a name the program does not define."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


@dataclass(frozen=True)
class Chunk:
    """Bytes one statement put at ``address`` (a padding directive included)."""

    address: int
    data: bytes
    location: SourceLocation
    text: str
    expansion: tuple[MacroCall, ...] = ()

    @property
    def end(self) -> int:
        return self.address + len(self.data)


class LineMap(Mapping[range, SourceLocation]):
    """Address ranges -> source location; ``at(address)`` finds the line of one byte.

    Keys are ``range(start, end)`` objects, in address order. For code a
    macro produced, the location is the line of the macro body.
    """

    def __init__(self, chunks: list[Chunk]) -> None:
        spans = sorted((c.address, c.end, c.location) for c in chunks if c.data)
        self._starts = [s for s, _, _ in spans]
        self._spans = spans
        self._by_range = {range(s, e): loc for s, e, loc in spans}

    def at(self, address: int) -> SourceLocation | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0:
            start, end, loc = self._spans[i]
            if start <= address < end:
                return loc
        return None

    def __getitem__(self, key: range) -> SourceLocation:
        return self._by_range[key]

    def __iter__(self) -> Iterator[range]:
        return (range(s, e) for s, e, _ in self._spans)

    def __len__(self) -> int:
        return len(self._spans)


@dataclass
class Program:
    """An assembled flat binary.

    ``code`` is loaded at ``base``; ``symbols`` maps each label to its
    absolute address and ``constants`` each ``equ`` name to its value;
    ``lines`` maps address ranges to source lines (for traces and error
    messages); ``chunks`` keeps each statement's bytes for listings.
    """

    code: bytes
    base: int
    symbols: dict[str, int]
    constants: dict[str, int] = field(default_factory=dict)
    chunks: list[Chunk] = field(default_factory=list)
    bits: int = 64

    def __post_init__(self) -> None:
        self.lines = LineMap(self.chunks)

    @property
    def end(self) -> int:
        """First address after the program."""
        return self.base + len(self.code)

    def symbol(self, name: str) -> int:
        """Address of label ``name`` (or value of an ``equ``); a clear error if missing."""
        if name in self.symbols:
            return self.symbols[name]
        if name in self.constants:
            return self.constants[name]
        known = list(self.symbols) + list(self.constants)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownSymbolError(f"the program defines no symbol '{name}'{hint}")

    def listing(self) -> str:
        """One line per statement that made bytes: address, bytes, file:line, source."""
        out = []
        for chunk in self.chunks:
            shown = chunk.data[:16].hex(" ")
            if len(chunk.data) > 16:
                shown += f" ... ({len(chunk.data)} bytes)"
            out.append(f"{chunk.address:#010x}  {shown:<48}  {chunk.location}  {chunk.text}")
        return "\n".join(out) + ("\n" if out else "")

    def to_json(self) -> dict[str, object]:
        return {
            "base": self.base,
            "size": len(self.code),
            "end": self.end,
            "symbols": dict(sorted(self.symbols.items(), key=lambda kv: (kv[1], kv[0]))),
            "constants": dict(sorted(self.constants.items())),
        }
