"""Integer expressions of the assembly language, and the lexical pieces shared
by the preprocessor, the statement parser and the keystone driver.

Numbers: ``0x1F``, ``1Fh`` (must start with a digit), ``0b101``, ``0o17``,
decimal, character constants (``'AB'`` is 0x4241, little-endian as in
NASM). Operators, loosest first: ``|``, ``^``, ``&``, ``<< >>``, ``+ -``,
``* / %``, unary ``- + ~``. ``$`` is the address of the current statement,
``$$`` the start address of the program.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

# Names that are never symbols: keystone would read them as registers or
# operand keywords, so a label of that name could not be referenced.
_GPR64 = "rax rbx rcx rdx rsi rdi rbp rsp".split() + [f"r{n}" for n in range(8, 16)]
_GPR32 = "eax ebx ecx edx esi edi ebp esp".split() + [f"r{n}d" for n in range(8, 16)]
_GPR16 = "ax bx cx dx si di bp sp".split() + [f"r{n}w" for n in range(8, 16)]
_GPR8 = "al bl cl dl ah bh ch dh sil dil bpl spl".split() + [f"r{n}b" for n in range(8, 16)]
_OTHER = (
    "cs ds es fs gs ss rip eip ip".split()
    + [f"cr{n}" for n in range(16)]
    + [f"dr{n}" for n in range(16)]
    + [f"xmm{n}" for n in range(32)]
    + [f"ymm{n}" for n in range(32)]
    + [f"zmm{n}" for n in range(32)]
    + [f"mm{n}" for n in range(8)]
    + [f"st{n}" for n in range(8)]
    + [f"k{n}" for n in range(8)]
    + ["st"]
)
REGISTERS: frozenset[str] = frozenset(_GPR64 + _GPR32 + _GPR16 + _GPR8 + _OTHER)
ADDRESS_REGISTERS_32: frozenset[str] = frozenset(_GPR32)
SEGMENT_REGISTERS: frozenset[str] = frozenset("cs ds es fs gs ss".split())
SIZE_KEYWORDS: frozenset[str] = frozenset(
    "byte word dword fword qword tbyte tword oword xmmword ymmword zmmword".split()
)
OPERAND_KEYWORDS: frozenset[str] = SIZE_KEYWORDS | frozenset("ptr short near far rel abs".split())
RESERVED: frozenset[str] = REGISTERS | OPERAND_KEYWORDS

# NASM identifier characters; "..@" starts the names the preprocessor makes
# for macro-local labels (%%name).
IDENT = r"(?:\.\.@)?[A-Za-z_.?][\w.?@$#~]*"
_NUMBER = (
    r"0[xX][0-9a-fA-F_]+\b|0[bB][01_]+\b|0[oO][0-7_]+\b"
    r"|[0-9][0-9a-fA-F_]*[hH]\b|[0-9][0-9_]*\b"
)
_STRING = r"'[^']*'|\"[^\"]*\"|`(?:\\.|[^`\\])*`"

_TOKEN = re.compile(
    rf"\s*(?:(?P<num>{_NUMBER})|(?P<str>{_STRING})|(?P<ident>{IDENT})"
    rf"|(?P<dollar>\$\$|\$)|(?P<op><<|>>|[-+*/%&|^~()]))"
)


class ExprError(ValueError):
    """An expression that does not parse or cannot be evaluated (no location)."""


class EvaluationError(ExprError):
    """A well-formed expression without a value (division by zero, ...)."""


class UndefinedSymbol(ExprError):
    def __init__(self, name: str) -> None:
        super().__init__(undefined_symbol_message(name))
        self.name = name


def undefined_symbol_message(name: str) -> str:
    """The undefined-symbol message, with where the payload library's names come from."""
    text = f"undefined symbol '{name}'"
    if name.startswith("pl_"):
        text += (
            ' (pl_* are the payload library\'s routines: put %include "payload.S" '
            "at the end of your program, see guest_asm/README.md)"
        )
    return text


def parse_number(text: str) -> int:
    """One numeric literal in any supported notation."""
    t = text.replace("_", "")
    low = t.lower()
    if low.startswith("0x"):
        return int(t[2:], 16)
    if low.startswith("0b"):
        return int(t[2:], 2)
    if low.startswith("0o"):
        return int(t[2:], 8)
    if low.endswith("h"):
        return int(t[:-1], 16)
    if not t.isdigit():
        raise ExprError(f"bad number '{text}'")
    return int(t, 10)


def string_bytes(literal: str) -> bytes:
    """The bytes of a quoted string: '...' and "..." literally, `...` with C escapes."""
    quote, body = literal[0], literal[1:-1]
    if quote != "`":
        return body.encode("latin-1")
    out = bytearray()
    i = 0
    simple = {"n": 10, "t": 9, "r": 13, "0": 0, "\\": 92, "`": 96, "'": 39, '"': 34, "a": 7}
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[i + 2 : i + 4]):
                out.append(int(body[i + 2 : i + 4], 16))
                i += 4
                continue
            if nxt in simple:
                out.append(simple[nxt])
                i += 2
                continue
            raise ExprError(f"unknown escape '\\{nxt}' in {literal}")
        out += ch.encode("latin-1")
        i += 1
    return bytes(out)


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExprError(f"unexpected '{text[pos:].strip()[:20]}' in expression '{text}'")
        kind = m.lastgroup
        assert kind is not None
        yield kind, m.group(kind)
        pos = m.end()


Lookup = Callable[[str], int]

_BINARY_LEVELS: tuple[tuple[str, ...], ...] = (
    ("|",),
    ("^",),
    ("&",),
    ("<<", ">>"),
    ("+", "-"),
    ("*", "/", "%"),
)


class _Parser:
    def __init__(self, text: str, lookup: Lookup, here: int | None, start: int | None) -> None:
        self.text = text
        self.toks = list(_tokens(text))
        self.i = 0
        self.lookup = lookup
        self.here = here
        self.start = start

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ExprError(f"expression '{self.text}' ends too early")
        self.i += 1
        return tok

    def parse(self) -> int:
        if not self.toks:
            raise ExprError("empty expression")
        value = self.binary(0)
        if self.peek() is not None:
            raise ExprError(f"unexpected '{self.peek()[1]}' in expression '{self.text}'")
        return value

    def binary(self, level: int) -> int:
        if level == len(_BINARY_LEVELS):
            return self.unary()
        value = self.binary(level + 1)
        while (tok := self.peek()) and tok[0] == "op" and tok[1] in _BINARY_LEVELS[level]:
            self.take()
            value = _apply(tok[1], value, self.binary(level + 1))
        return value

    def unary(self) -> int:
        kind, text = self.take()
        if kind == "op" and text in "-+~":
            operand = self.unary()
            return {"-": -operand, "+": operand, "~": ~operand}[text]
        if kind == "op" and text == "(":
            value = self.binary(0)
            if self.take() != ("op", ")"):
                raise ExprError(f"missing ')' in '{self.text}'")
            return value
        if kind == "num":
            return parse_number(text)
        if kind == "str":
            raw = string_bytes(text)
            if len(raw) > 8:
                raise ExprError(f"character constant {text} is longer than 8 bytes")
            return int.from_bytes(raw, "little")
        if kind == "dollar":
            value = self.here if text == "$" else self.start
            if value is None:
                raise ExprError(f"'{text}' has no meaning here")
            return value
        if kind == "ident":
            if text.lower() in RESERVED:
                raise ExprError(f"register or keyword '{text}' in a constant expression")
            return self.lookup(text)
        raise ExprError(f"unexpected '{text}' in expression '{self.text}'")


def _apply(op: str, a: int, b: int) -> int:
    if op in "/%" and b == 0:
        raise EvaluationError("division by zero")
    if op in ("<<", ">>") and b < 0:
        raise EvaluationError("negative shift count")
    if op == "/":
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q
    if op == "%":
        return a - b * _apply("/", a, b)
    if op == "<<":
        return a << b
    if op == ">>":
        return a >> b
    return {"|": a | b, "^": a ^ b, "&": a & b, "+": a + b, "-": a - b, "*": a * b}[op]


def evaluate(
    text: str, lookup: Lookup, *, here: int | None = None, start: int | None = None
) -> int:
    """Value of ``text``; ``lookup`` maps a symbol name to its value or raises."""
    return _Parser(text, lookup, here, start).parse()


def identifiers(text: str) -> list[str]:
    """Identifier tokens of ``text`` outside string literals (registers included)."""
    return [m.group("ident") for m in _SCAN.finditer(text) if m.group("ident")]


# A lenient scanner for operand text (brackets, commas, colons, '*' of
# scaled indexes): it only needs to find strings, numbers and names.
_SCAN = re.compile(
    rf"(?P<str>{_STRING})|(?<![\w.?@$#~])(?P<num>{_NUMBER})"
    rf"|(?<![\w.?@$#~])(?P<ident>{IDENT})|(?P<dollar>\$\$|\$)"
)


def rewrite(text: str, ident: Callable[[str], str], dollar: Callable[[str], str]) -> str:
    """Rewrite operand text for keystone: numbers become plain hex (keystone
    rejects the ``1Fh`` form), every name goes through ``ident``, ``$``/``$$``
    through ``dollar``. Strings are left alone."""

    def one(m: re.Match[str]) -> str:
        if m.group("num"):
            return hex(parse_number(m.group("num")))
        if m.group("ident"):
            return ident(m.group("ident"))
        if m.group("dollar"):
            return dollar(m.group("dollar"))
        return m.group(0)

    return _SCAN.sub(one, text)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside quotes and (), [], {} nesting; parts are stripped."""
    parts: list[str] = []
    depth = 0
    quote = ""
    current: list[str] = []
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def strip_comment(line: str) -> str:
    """``line`` without its ``;`` comment (a ``;`` inside quotes is text)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch == ";":
            return line[:i]
    return line


def is_expression(text: str) -> bool:
    """Whether ``text`` parses as an expression (symbols are not looked up)."""
    try:
        _Parser(text, lambda _name: 0, 0, 0).parse()
    except EvaluationError:
        return True
    except ExprError:
        return False
    return True


def map_identifiers(text: str, rename: Callable[[str], str]) -> str:
    """``text`` with every name (outside strings) replaced by ``rename(name)``."""

    def one(m: re.Match[str]) -> str:
        ident = m.group("ident")
        return rename(ident) if ident else m.group(0)

    return _SCAN.sub(one, text)
