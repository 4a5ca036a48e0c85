"""Preprocessed lines -> statements (labels, directives, data, instructions).

Statements are parsed once; their addresses and expression values are
worked out by the assembler, pass after pass, until the layout settles.

Directives (case-insensitive; ``[bits 32]`` with brackets works too):

- ``bits 16|32|64`` (or ``use16``/``use32``/``use64``): mode of what follows.
- ``org ADDR``: place what follows at ADDR. Before any output it sets the
  program's start address; later it pads with zero bytes up to ADDR.
- ``align N[, FILL]``: pad to a multiple of N (a power of two) with FILL
  (default 0x90, a NOP, so code may fall through the padding).
- ``pad_to ADDR[, FILL]`` (alias ``fill_to``): pad with FILL (default 0) up
  to ADDR; an error if the program is already past it. ``pad_to 0x100000000``
  ends a flash image exactly at 4 GiB.
- ``NAME equ EXPR``: a constant (may use labels, ``$`` and ``$$``).
- ``db``/``dw``/``dd``/``dq`` items, strings allowed (padded to the item
  width); ``resb``/``resw``/``resd``/``resq N``: N zeroed items.
- ``times N statement``: repeat a data directive or an instruction.
- ``incbin "file"``: the file's bytes (searched like ``%include``).
- ``global``/``default rel`` are accepted and ignored (flat binary only).

Labels: ``name:``, or ``name`` right before ``db``/``dw``/... or ``equ``.
A label starting with one dot (``.loop``) is local to the last label without
one and is known everywhere as ``outer.loop``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from sevx86.asm.expr import (
    IDENT,
    RESERVED,
    ExprError,
    is_expression,
    map_identifiers,
    split_top_level,
    string_bytes,
)
from sevx86.asm.preprocess import SourceLine

DATA_WIDTHS = {"db": 1, "dw": 2, "dd": 4, "dq": 8}
RESERVE_WIDTHS = {"resb": 1, "resw": 2, "resd": 4, "resq": 8}
PREFIXES = frozenset("lock rep repe repz repne repnz o16 o32 a16 a32".split())
_DIRECTIVE_WORDS = (
    set(DATA_WIDTHS)
    | set(RESERVE_WIDTHS)
    | {"bits", "use16", "use32", "use64", "org", "align", "pad_to", "fill_to", "times"}
    | {"equ", "incbin", "global", "default", "section", "segment", "extern", "cpu"}
)


@dataclass
class Statement:
    line: SourceLine


@dataclass
class LabelDef(Statement):
    name: str


@dataclass
class Bits(Statement):
    bits: int


@dataclass
class Org(Statement):
    address: str


@dataclass
class Align(Statement):
    boundary: str
    fill: str | None


@dataclass
class PadTo(Statement):
    address: str
    fill: str | None


@dataclass
class Equ(Statement):
    name: str
    value: str


@dataclass
class Data(Statement):
    width: int
    items: list[str | bytes]


@dataclass
class Reserve(Statement):
    width: int
    count: str


@dataclass
class Blob(Statement):
    data: bytes


@dataclass
class Times(Statement):
    count: str
    body: Statement


@dataclass
class Instruction(Statement):
    prefixes: tuple[str, ...]
    mnemonic: str
    operands: str
    operand_list: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.operand_list = split_top_level(self.operands) if self.operands.strip() else []


class StatementParser:
    def __init__(self, include_paths: list[Path]) -> None:
        self.scope = ""  # last label without a leading dot
        self.include_paths = include_paths

    def parse(self, lines: list[SourceLine]) -> list[Statement]:
        out: list[Statement] = []
        for line in lines:
            out.extend(self._line(line))
        return out

    def qualify(self, name: str) -> str:
        if name.startswith(".") and not name.startswith("..@"):
            return self.scope + name
        return name

    def qualify_text(self, text: str) -> str:
        """Rewrite local-label references (``.loop``) in ``text`` to full names."""
        return map_identifiers(text, self.qualify)

    def _define(self, line: SourceLine, name: str) -> LabelDef:
        if name.lower() in RESERVED:
            raise line.error(f"'{name}' is a register or keyword and cannot be a label")
        if not (name.startswith(".") or name.startswith("..@")):
            self.scope = name
        return LabelDef(line, self.qualify(name))

    def _line(self, line: SourceLine) -> list[Statement]:
        text = line.text.strip()
        bracketed = re.fullmatch(r"\[\s*(\w+)\s+([^\]]*)\]", text)
        if bracketed and bracketed.group(1).lower() in ("bits", "org", "default", "section"):
            text = f"{bracketed.group(1)} {bracketed.group(2)}"
        m = re.match(rf"({IDENT}):(?!:)\s*(.*)$", text)
        if m and m.group(1).lower() not in ("cs", "ds", "es", "fs", "gs", "ss"):
            rest = m.group(2)
            if re.match(r"equ\b", rest, re.IGNORECASE):
                return [self._equ(line, m.group(1), rest[3:])]
            label = self._define(line, m.group(1))
            return [label, *(self._statement(line, rest) if rest else [])]
        words = text.split(None, 2)
        if len(words) >= 2 and words[0].lower() not in _DIRECTIVE_WORDS:
            second = words[1].lower()
            if second == "equ":
                return [self._equ(line, words[0], words[2] if len(words) > 2 else "")]
            if second in DATA_WIDTHS or second in RESERVE_WIDTHS:
                label = self._define(line, words[0])
                return [label, self._statement(line, text[len(words[0]) :].strip())[0]]
        return self._statement(line, text)

    def _equ(self, line: SourceLine, name: str, value: str) -> Equ:
        if name.lower() in RESERVED:
            raise line.error(f"'{name}' is a register or keyword and cannot be a constant")
        if not value.strip():
            raise line.error(f"'{name} equ' needs a value")
        return Equ(line, self.qualify(name), self.qualify_text(value.strip()))

    def _statement(self, line: SourceLine, text: str) -> list[Statement]:
        word, _, rest = text.partition(" ")
        word_l = word.lower()
        rest = self.qualify_text(rest.strip())
        if word_l == "bits" or word_l in ("use16", "use32", "use64"):
            value = rest if word_l == "bits" else word_l[3:]
            if value not in ("16", "32", "64"):
                raise line.error(f"bits must be 16, 32 or 64, not '{value}'")
            return [Bits(line, int(value))]
        if word_l == "org":
            return [Org(line, self._need(line, rest, "org ADDRESS"))]
        if word_l == "align":
            parts = split_top_level(self._need(line, rest, "align N"))
            return [Align(line, parts[0], parts[1] if len(parts) > 1 else None)]
        if word_l in ("pad_to", "fill_to"):
            parts = split_top_level(self._need(line, rest, f"{word_l} ADDRESS"))
            return [PadTo(line, parts[0], parts[1] if len(parts) > 1 else None)]
        if word_l in DATA_WIDTHS:
            return [
                self._data(line, DATA_WIDTHS[word_l], self._need(line, rest, f"{word_l} VALUE"))
            ]
        if word_l in RESERVE_WIDTHS:
            return [
                Reserve(line, RESERVE_WIDTHS[word_l], self._need(line, rest, f"{word_l} COUNT"))
            ]
        if word_l == "times":
            return [self._times(line, rest)]
        if word_l == "incbin":
            return [self._incbin(line, rest)]
        if word_l in ("global", "cpu") or (word_l == "default" and rest.lower() == "rel"):
            return []
        if word_l in ("section", "segment", "extern", "default", "equ"):
            raise line.error(f"'{word_l} {rest}' is not supported: the output is one flat binary")
        return [self._instruction(line, text)]

    @staticmethod
    def _need(line: SourceLine, rest: str, form: str) -> str:
        if not rest:
            raise line.error(f"expected '{form}'")
        return rest

    def _data(self, line: SourceLine, width: int, rest: str) -> Data:
        items: list[str | bytes] = []
        for item in split_top_level(rest):
            if not item:
                raise line.error("empty item in data directive")
            if item[0] in "'\"`" and item[-1] == item[0] and len(item) >= 2:
                try:
                    raw = string_bytes(item)
                except ExprError as exc:
                    raise line.error(str(exc)) from None
                # A string in dw/dd/dq fills whole items, zero-padded (as NASM does).
                items.append(raw + bytes(-len(raw) % width))
            else:
                items.append(item)
        return Data(line, width, items)

    def _times(self, line: SourceLine, rest: str) -> Times:
        for m in re.finditer(r"\s+", rest):
            count, body = rest[: m.start()], rest[m.end() :]
            if re.match(r"[A-Za-z_]", body) and is_expression(count):
                inner = self._statement(line, body)
                if len(inner) != 1 or not isinstance(inner[0], Data | Instruction | Reserve):
                    raise line.error("times repeats one data directive or instruction")
                return Times(line, count, inner[0])
        raise line.error("expected 'times COUNT statement'")

    def _incbin(self, line: SourceLine, rest: str) -> Blob:
        name = rest.strip()
        if len(name) < 2 or name[0] not in "'\"" or name[-1] != name[0]:
            raise line.error('expected incbin "file"')
        name = name[1:-1]
        here = Path(line.location.file).parent if not line.location.file.startswith("<") else None
        for folder in ([here] if here else []) + self.include_paths:
            if (folder / name).is_file():
                return Blob(line, (folder / name).read_bytes())
        raise line.error(f"incbin file '{name}' not found")

    def _instruction(self, line: SourceLine, text: str) -> Instruction:
        prefixes: list[str] = []
        rest = text
        while True:
            word, _, after = rest.partition(" ")
            if word.lower() in PREFIXES and after.strip():
                prefixes.append(word.lower())
                rest = after.strip()
                continue
            break
        word, _, operands = rest.partition(" ")
        if not re.fullmatch(r"[A-Za-z][\w.]*", word):
            raise line.error(f"cannot parse '{text}'")
        return Instruction(line, tuple(prefixes), word.lower(), self.qualify_text(operands.strip()))
