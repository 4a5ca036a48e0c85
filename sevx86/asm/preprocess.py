"""The NASM-flavoured preprocessor: %include, %define, %macro, %ifdef, %error.

It turns a source file into a flat list of ``SourceLine``s, each remembering
the file and line it was written on and the macro calls that produced it, so
that every later error can point at the user's own text.

Supported (names of macros and defines are case-sensitive, directives are not):

- ``%include "file"``: searched next to the including file, then in the
  include paths, then in the packaged ``guest_asm`` folder.
- ``%define NAME [value]`` / ``%undef NAME``: whole-word text substitution;
  the caller's ``defines`` act as ``%define``\\s before the first line.
- ``%macro NAME N`` ... ``%endmacro``: ``%1``..``%9`` are the arguments,
  ``%0`` their count, ``%%label`` a label private to one expansion. Arguments
  are separated by commas; wrap one in braces ``{a, b}`` to pass a comma.
- ``%ifdef``/``%ifndef``/``%elifdef``/``%elifndef``/``%else``/``%endif``.
- ``%error "message"``: stop with that message at that line.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sevx86.asm.errors import AsmError, MacroCall, SourceLocation
from sevx86.asm.expr import IDENT, split_top_level, strip_comment

MAX_MACRO_DEPTH = 64
MAX_DEFINE_ROUNDS = 32


@dataclass(frozen=True)
class SourceLine:
    """One statement line after preprocessing (comment removed, macros expanded)."""

    text: str
    location: SourceLocation
    expansion: tuple[MacroCall, ...] = ()

    def error(self, message: str) -> AsmError:
        return AsmError(self.location, message, self.expansion)


def guest_asm_dir() -> Path | None:
    """The folder of the packaged guest assembly (``sevx86.guest_asm``).

    Installed, it is a package; in a source checkout that package is not
    importable (pyproject maps it from the top-level ``guest_asm/``), so fall
    back to the repository layout.
    """
    # Installed: package data at sevx86/guest_asm (a namespace package, for
    # which importlib.resources.files() gives a MultiplexedPath, not a Path).
    installed = Path(__file__).resolve().parents[1] / "guest_asm"
    if installed.is_dir():
        return installed
    in_repo = Path(__file__).resolve().parents[2] / "guest_asm"
    return in_repo if in_repo.is_dir() else None


@dataclass
class _Macro:
    name: str
    nargs: int
    body: list[tuple[str, SourceLocation]]
    folder: Path | None


@dataclass
class _Frame:
    """A stream of raw lines being processed: a file or one macro expansion."""

    lines: list[tuple[str, SourceLocation]]
    folder: Path | None
    expansion: tuple[MacroCall, ...] = ()
    args: list[str] | None = None
    expansion_id: int = 0
    conditions: list[_Condition] = field(default_factory=list)


@dataclass
class _Condition:
    active: bool
    taken: bool  # some branch of this %if chain was already active
    parent_active: bool
    seen_else: bool
    where: SourceLocation


_DIRECTIVE = re.compile(r"^\s*%(\w+)\b\s*(.*)$")
_LABEL_PREFIX = re.compile(rf"^\s*({IDENT}):\s*")
_DEFINE_WORD = re.compile(rf"'[^']*'|\"[^\"]*\"|`(?:\\.|[^`\\])*`|(?<![\w.?@$#~%])({IDENT})")
_MACRO_PARAM = re.compile(rf"%%({IDENT})|%([0-9])")


class Preprocessor:
    def __init__(
        self,
        include_paths: Sequence[Path] = (),
        defines: Mapping[str, int | str] = {},  # noqa: B006 - read only
    ) -> None:
        self.include_paths = [Path(p) for p in include_paths]
        packaged = guest_asm_dir()
        if packaged is not None:
            self.include_paths.append(packaged)
        self.defines: dict[str, str] = {k: str(v) for k, v in defines.items()}
        self.macros: dict[str, _Macro] = {}
        self.output: list[SourceLine] = []
        self._including: list[Path] = []
        self._expansions = itertools.count(1)

    # -- entry point ---------------------------------------------------------

    def run(self, text: str, name: str, path: Path | None = None) -> list[SourceLine]:
        if path is not None:
            self._including.append(path.resolve())
        folder = path.resolve().parent if path is not None else None
        self._process(_Frame(_numbered(text, name), folder))
        return self.output

    # -- the line loop -------------------------------------------------------

    def _process(self, frame: _Frame) -> None:
        collecting: _Macro | None = None
        collecting_at: SourceLocation | None = None
        for raw, where in frame.lines:
            text = strip_comment(raw).rstrip()
            directive = _DIRECTIVE.match(text)
            name = directive.group(1).lower() if directive else ""
            if collecting is not None:
                if name == "endmacro":
                    self.macros[collecting.name] = collecting
                    collecting = None
                elif name in ("macro", "imacro"):
                    raise AsmError(
                        where, "a %macro cannot be defined inside another", frame.expansion
                    )
                else:
                    collecting.body.append((text, where))
                continue
            if not text.strip():
                continue
            if frame.args is not None:
                text = self._substitute_params(text, frame, where)
                directive = _DIRECTIVE.match(text)
                name = directive.group(1).lower() if directive else ""
            if directive and self._conditional(name, directive.group(2).strip(), frame, where):
                continue
            if frame.conditions and not frame.conditions[-1].active:
                continue
            if directive:
                started = self._directive(name, directive.group(2).strip(), frame, where)
                if started is not None:
                    collecting, collecting_at = started, where
                continue
            self._statement(text, frame, where)
        if collecting is not None:
            raise AsmError(
                collecting_at, f"%macro {collecting.name} has no %endmacro", frame.expansion
            )
        if frame.conditions:
            raise AsmError(frame.conditions[-1].where, "%if without %endif", frame.expansion)

    def _conditional(self, name: str, arg: str, frame: _Frame, where: SourceLocation) -> bool:
        """Handle a conditional directive; False when ``name`` is not one."""
        stack = frame.conditions
        enclosing = not stack or stack[-1].active
        if name in ("ifdef", "ifndef"):
            truth = self._defined(arg, where, frame) == (name == "ifdef")
            stack.append(_Condition(enclosing and truth, truth, enclosing, False, where))
            return True
        if name in ("elifdef", "elifndef", "else", "endif"):
            if not stack:
                raise AsmError(where, f"%{name} without %ifdef", frame.expansion)
            top = stack[-1]
            if name == "endif":
                stack.pop()
            elif top.seen_else:
                raise AsmError(where, f"%{name} after %else", frame.expansion)
            elif name == "else":
                top.seen_else = True
                top.active = top.parent_active and not top.taken
                top.taken = True
            else:
                truth = self._defined(arg, where, frame) == (name == "elifdef")
                top.active = top.parent_active and not top.taken and truth
                top.taken = top.taken or truth
            return True
        if name in ("if", "elif", "ifidn", "ifmacro", "ifnum", "ifstr"):
            raise AsmError(where, f"%{name} is not supported; use %ifdef/%ifndef", frame.expansion)
        return False

    def _defined(self, arg: str, where: SourceLocation, frame: _Frame) -> bool:
        if not re.fullmatch(IDENT, arg):
            raise AsmError(where, f"expected one name after %ifdef, got '{arg}'", frame.expansion)
        return arg in self.defines

    def _directive(
        self, name: str, arg: str, frame: _Frame, where: SourceLocation
    ) -> _Macro | None:
        if name == "include":
            self._include(arg, frame, where)
        elif name in ("define", "xdefine", "assign"):
            m = re.fullmatch(rf"({IDENT})(?:\s+(.*))?", arg)
            if not m:
                raise AsmError(
                    where, f"expected '%define NAME value', got '{arg}'", frame.expansion
                )
            value = m.group(2) or ""
            if name != "define":  # expanded once, now
                value = self._expand_defines(value, where, frame)
            self.defines[m.group(1)] = value.strip()
        elif name == "undef":
            self.defines.pop(arg, None)
        elif name in ("macro", "imacro"):
            m = re.fullmatch(rf"({IDENT})\s+([0-9])", arg)
            if not m:
                raise AsmError(
                    where,
                    f"expected '%macro NAME N' (N = 0..9 arguments), got '{arg}'",
                    frame.expansion,
                )
            return _Macro(m.group(1), int(m.group(2)), [], frame.folder)
        elif name == "endmacro":
            raise AsmError(where, "%endmacro without %macro", frame.expansion)
        elif name == "error":
            raise AsmError(where, _unquote(arg) or "%error", frame.expansion)
        else:
            raise AsmError(where, f"unknown preprocessor directive %{name}", frame.expansion)
        return None

    def _statement(self, text: str, frame: _Frame, where: SourceLocation) -> None:
        text = self._expand_defines(text, where, frame)
        label = _LABEL_PREFIX.match(text)
        rest = text[label.end() :] if label else text
        words = rest.split(None, 1)
        macro = self.macros.get(words[0]) if words else None
        if macro is None:
            self.output.append(SourceLine(text.strip(), where, frame.expansion))
            return
        if label:
            self.output.append(SourceLine(label.group(1) + ":", where, frame.expansion))
        args = [] if len(words) < 2 else split_top_level(words[1])
        args = [a[1:-1].strip() if a.startswith("{") and a.endswith("}") else a for a in args]
        if len(args) != macro.nargs:
            raise AsmError(
                where,
                f"macro '{macro.name}' takes {macro.nargs} argument(s), got {len(args)}",
                frame.expansion,
            )
        if len(frame.expansion) >= MAX_MACRO_DEPTH:
            raise AsmError(
                where, f"macro '{macro.name}' nests too deep (recursive?)", frame.expansion
            )
        call = MacroCall(macro.name, where)
        self._process(
            _Frame(
                list(macro.body),
                macro.folder,
                frame.expansion + (call,),
                args,
                next(self._expansions),
            )
        )

    # -- helpers -------------------------------------------------------------

    def _substitute_params(self, text: str, frame: _Frame, where: SourceLocation) -> str:
        args = frame.args or []

        def one(m: re.Match[str]) -> str:
            if m.group(1):
                return f"..@{frame.expansion_id}.{m.group(1)}"
            n = int(m.group(2))
            if n == 0:
                return str(len(args))
            if n > len(args):
                raise AsmError(
                    where, f"%{n} used but the macro has {len(args)} argument(s)", frame.expansion
                )
            return args[n - 1]

        return _MACRO_PARAM.sub(one, text)

    def _expand_defines(self, text: str, where: SourceLocation, frame: _Frame) -> str:
        if not self.defines:
            return text
        for _ in range(MAX_DEFINE_ROUNDS):
            changed = False

            def one(m: re.Match[str]) -> str:
                nonlocal changed
                word = m.group(1)
                if word is not None and word in self.defines:
                    changed = True
                    return self.defines[word]
                return m.group(0)

            text = _DEFINE_WORD.sub(one, text)
            if not changed:
                return text
        raise AsmError(where, "a %define expands forever (it refers to itself)", frame.expansion)

    def _include(self, arg: str, frame: _Frame, where: SourceLocation) -> None:
        name = _unquote(arg)
        if not name:
            raise AsmError(where, f"expected %include \"file\", got '{arg}'", frame.expansion)
        folders = ([frame.folder] if frame.folder is not None else []) + self.include_paths
        for folder in folders:
            candidate = folder / name
            if candidate.is_file():
                break
        else:
            searched = ", ".join(str(f) for f in folders) or "nowhere (no include paths)"
            raise AsmError(
                where, f"%include file '{name}' not found (searched {searched})", frame.expansion
            )
        resolved = candidate.resolve()
        if resolved in self._including:
            chain = " -> ".join(p.name for p in self._including[self._including.index(resolved) :])
            raise AsmError(where, f"%include cycle: {chain} -> {resolved.name}", frame.expansion)
        try:
            text = candidate.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AsmError(where, f"cannot read '{candidate}': {exc}", frame.expansion) from None
        self._including.append(resolved)
        try:
            self._process(_Frame(_numbered(text, str(candidate)), resolved.parent, frame.expansion))
        finally:
            self._including.pop()


def _numbered(text: str, name: str) -> list[tuple[str, SourceLocation]]:
    return [(line, SourceLocation(name, n)) for n, line in enumerate(text.splitlines(), 1)]


def _unquote(arg: str) -> str:
    arg = arg.strip()
    if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "'\"`":
        return arg[1:-1]
    if len(arg) >= 2 and arg[0] == "<" and arg[-1] == ">":
        return arg[1:-1]
    return arg if arg and arg[0] not in "'\"`<" else ""


def preprocess(
    text: str,
    name: str = "<string>",
    *,
    path: Path | None = None,
    include_paths: Sequence[Path] = (),
    defines: Mapping[str, int | str] = {},  # noqa: B006 - read only
) -> list[SourceLine]:
    """Preprocess ``text`` (read from ``path`` if given, named ``name`` in errors)."""
    return Preprocessor(include_paths, defines).run(text, name, path)
