"""Assemble preprocessed statements into a flat binary with keystone.

How it works, and why:

- Every instruction is assembled on its own, at its own address, in the mode
  (16/32/64-bit) in force on its line, so ``bits`` may change anywhere and
  every byte is known to come from one source line.
- keystone never sees a symbol: we substitute every label and ``equ`` with
  its number first. keystone's symbol-resolver callback is unusable (0.9.2
  drops the addend of ``label+4``, places PC-relative targets off by the
  size of the displacement field, and closing an engine that had one
  switches keystone to hex numbers process-wide), so it is never set.
- Addresses depend on instruction sizes, which depend on addresses (short or
  near jumps), so the whole program is laid out pass after pass until labels
  and sizes stop changing (first passes assume forward labels are near).
  From pass ``DAMP_AFTER`` on an instruction may only grow (a shorter
  encoding is padded with NOPs), which guarantees the passes settle. A
  final pass with every value known reports the errors.
- In 64-bit code a memory operand that names a label (``[my_label]``,
  ``[rip + my_label]``, ``[rel my_label]``) is encoded RIP-relative with
  the displacement that reaches the label; a plain number (``[0x200000]``)
  is left to keystone, and ``checks`` refuses the RIP-relative encoding it
  produces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from keystone import (
    KS_ARCH_X86,
    KS_ERR_ASM_MNEMONICFAIL,
    KS_ERR_ASM_SYMBOL_MISSING,
    KS_MODE_16,
    KS_MODE_32,
    KS_MODE_64,
    Ks,
    KsError,
)

from sevx86.asm import checks, quirks
from sevx86.asm.errors import AsmError, SourceLocation
from sevx86.asm.expr import (
    ADDRESS_REGISTERS_32,
    REGISTERS,
    RESERVED,
    SIZE_KEYWORDS,
    ExprError,
    UndefinedSymbol,
    evaluate,
    identifiers,
    is_expression,
    rewrite,
    split_top_level,
    undefined_symbol_message,
)
from sevx86.asm.parse import (
    Align,
    Bits,
    Blob,
    Data,
    Equ,
    Instruction,
    LabelDef,
    Org,
    PadTo,
    Reserve,
    Statement,
    StatementParser,
    Times,
)
from sevx86.asm.preprocess import Preprocessor, SourceLine, guest_asm_dir
from sevx86.asm.program import Chunk, Program

MAX_PASSES = 50
DAMP_AFTER = 8
NOP = 0x90

_KS_MODES = {16: KS_MODE_16, 32: KS_MODE_32, 64: KS_MODE_64}
_BRANCH_MNEMONICS = quirks.RELATIVE_BRANCHES | frozenset(
    "loop loope loopz loopne loopnz jcxz jecxz jrcxz xbegin".split()
)
_SIZE_WITHOUT_PTR = re.compile(
    rf"\b({'|'.join(sorted(SIZE_KEYWORDS))})\s+(?!ptr\b)(?=\[|(?:cs|ds|es|fs|gs|ss)\s*:)",
    re.IGNORECASE,
)
_SEGMENT_INSIDE = re.compile(r"\[\s*(cs|ds|es|fs|gs|ss)\s*:", re.IGNORECASE)
_OPERAND_KEYWORDS = re.compile(
    rf"^\s*(?:(?:{'|'.join(sorted(SIZE_KEYWORDS))}|short|near|far)\s+)+", re.IGNORECASE
)


def _nasm_to_keystone(operand: str) -> str:
    """NASM spellings keystone gets wrong: ``dword [x]`` (keystone silently
    emits nothing without ``ptr``), ``[fs:x]`` (rejected), ``tword``."""
    operand = _SEGMENT_INSIDE.sub(lambda m: f"{m.group(1)}:[", operand)
    operand = _SIZE_WITHOUT_PTR.sub(lambda m: f"{m.group(1)} ptr ", operand)
    operand = re.sub(r"\btword\b", "tbyte", operand, flags=re.IGNORECASE)
    operand = re.sub(r"\boword\b", "xmmword", operand, flags=re.IGNORECASE)
    return operand


def _number(value: int) -> str:
    return f"({value:#x})" if value >= 0 else f"(-{-value:#x})"


# Process-wide cache of position-independent encodings (see _keystone).
_PORTABLE: dict[tuple[int, str, str], bytes | Exception] = {}
_PORTABLE_LIMIT = 1 << 16
_ADDRESS_DEPENDENT_PREFIXES = ("loop", "jcxz", "jecxz", "jrcxz", "xbegin")


@dataclass
class _OperandPlan:
    """keystone text of one instruction, with slots for RIP displacements."""

    pieces: list[str]
    rip_slots: list[tuple[int, int]]  # (index into pieces, target address)
    expect: checks.Expectations

    def text(self, next_ip: int | None) -> str:
        pieces = list(self.pieces)
        for index, target in self.rip_slots:
            disp = 0 if next_ip is None else target - next_ip
            pieces[index] = f"[rip + {_number(disp)}]"
        return "".join(pieces)


class _Assembler:
    def __init__(self, statements: list[Statement], base: int, bits: int) -> None:
        self.statements = statements
        self.base = base
        self.initial_bits = bits
        self.values: dict[str, int] = {}
        self.is_address: dict[str, bool] = {}
        self.kinds: dict[str, str] = {}  # name -> "label" | "equ"
        self.defined_at: dict[str, SourceLine] = {}
        self.sizes: dict[tuple[int, int], int] = {}
        self._ks_cache: dict[tuple[int, str, int], bytes | KsError] = {}
        self._insn_cache: dict[tuple[object, ...], bytes] = {}
        self._portable_ids: set[int] = set()  # instructions whose bytes ignore the address
        self._encoded_portably = False
        self._refs: dict[int, tuple[str, ...]] = {}
        self._engines = {b: self._engine(b) for b in (16, 32, 64)}
        self._collect_definitions()
        self.leading_org = self._find_leading_org()

    # -- set-up --------------------------------------------------------------

    @staticmethod
    def _engine(bits: int) -> Ks:
        # No sym_resolver: besides its wrong answers, closing a Ks that had
        # one makes every later Ks in the process read decimal numbers as
        # hex (keystone 0.9.2; tests/asm/test_quirks.py pins it).
        return Ks(KS_ARCH_X86, _KS_MODES[bits])

    def _collect_definitions(self) -> None:
        for stmt in self.statements:
            if isinstance(stmt, LabelDef | Equ):
                name = stmt.name
                if name in self.defined_at:
                    first = self.defined_at[name]
                    raise stmt.line.error(f"'{name}' is already defined at {first.location}")
                self.defined_at[name] = stmt.line
                self.kinds[name] = "label" if isinstance(stmt, LabelDef) else "equ"
                self.is_address[name] = isinstance(stmt, LabelDef)

    def _find_leading_org(self) -> Org | None:
        for stmt in self.statements:
            if isinstance(stmt, Org):
                return stmt
            if not isinstance(stmt, LabelDef | Equ | Bits):
                return None
        return None

    # -- passes --------------------------------------------------------------

    def run(self) -> Program:
        previous: tuple[object, ...] | None = None
        for number in range(1, MAX_PASSES + 1):
            self._pass(strict=False, number=number)
            state = (dict(self.values), dict(self.sizes), dict(self.is_address))
            if state == previous:
                break
            previous = state
        else:
            raise AsmError(
                self.statements[0].line.location if self.statements else None,
                f"the layout did not settle after {MAX_PASSES} passes",
            )
        chunks = self._pass(strict=True, number=MAX_PASSES + 1)
        return self._program(chunks)

    def _program(self, chunks: list[Chunk]) -> Program:
        code = bytearray()
        for chunk in chunks:
            code += chunk.data
        symbols = {n: v for n, v in self.values.items() if self.kinds.get(n) == "label"}
        constants = {n: v for n, v in self.values.items() if self.kinds.get(n) == "equ"}
        return Program(bytes(code), self.start, symbols, constants, chunks, self.initial_bits)

    def _pass(self, *, strict: bool, number: int) -> list[Chunk]:
        self.strict = strict
        self.damp = number > DAMP_AFTER
        self.bits = self.initial_bits
        self.start = self.base
        if self.leading_org is not None:
            self.address = self.base
            self.start = self._value(self.leading_org.address, self.leading_org.line)
        self.address = self.start
        self.chunks: list[Chunk] = []
        for index, stmt in enumerate(self.statements):
            try:
                self._statement(index, stmt)
            except AsmError:
                if strict:
                    raise
                # A value-dependent failure in an early pass (a forward label
                # not known yet): keep the previous size, report it at the end.
                size = self.sizes.get((index, 0), 0)
                self._emit(bytes([NOP]) * size, stmt.line)
        return self.chunks

    def _statement(self, index: int, stmt: Statement) -> None:
        line = stmt.line
        if isinstance(stmt, LabelDef):
            self.values[stmt.name] = self.address
        elif isinstance(stmt, Equ):
            self.values[stmt.name] = self._value(stmt.value, line)
            self.is_address[stmt.name] = self._mentions_address(stmt.value)
        elif isinstance(stmt, Bits):
            self.bits = stmt.bits
        elif isinstance(stmt, Org):
            if stmt is not self.leading_org:
                self._pad(self._value(stmt.address, line), 0, line, "org")
        elif isinstance(stmt, PadTo):
            fill = self._byte(stmt.fill, line, 0)
            self._pad(self._value(stmt.address, line), fill, line, "pad_to")
        elif isinstance(stmt, Align):
            boundary = self._value(stmt.boundary, line)
            if boundary <= 0 or boundary & (boundary - 1):
                raise line.error(f"align needs a power of two, not {boundary}")
            fill = self._byte(stmt.fill, line, NOP)
            self._emit(bytes([fill]) * (-self.address % boundary), line)
        elif isinstance(stmt, Data):
            self._emit(self._data(stmt), line)
        elif isinstance(stmt, Reserve):
            self._emit(bytes(stmt.width * self._count(stmt.count, line)), line)
        elif isinstance(stmt, Blob):
            self._emit(stmt.data, line)
        elif isinstance(stmt, Times):
            self._times(index, stmt)
        elif isinstance(stmt, Instruction):
            self._emit(self._sized(index, 0, self._instruction(stmt)), line)
        else:  # pragma: no cover - the parser makes no other kind
            raise line.error(f"internal: unknown statement {type(stmt).__name__}")

    def _times(self, index: int, stmt: Times) -> None:
        count = self._count(stmt.count, stmt.line)
        body = stmt.body
        if isinstance(body, Data) and not any(isinstance(i, str) and "$" in i for i in body.items):
            self._emit(self._data(body) * count, stmt.line)
            return
        for k in range(count):
            if isinstance(body, Instruction):
                self._emit(self._sized(index, k, self._instruction(body)), stmt.line)
            elif isinstance(body, Data):
                self._emit(self._data(body), stmt.line)
            else:
                assert isinstance(body, Reserve)
                self._emit(bytes(body.width * self._count(body.count, stmt.line)), stmt.line)

    def _sized(self, index: int, k: int, code: bytes) -> bytes:
        previous = self.sizes.get((index, k))
        if self.damp and previous is not None and len(code) < previous:
            code = code + bytes([NOP]) * (previous - len(code))
        self.sizes[(index, k)] = len(code)
        return code

    def _emit(self, data: bytes, line: SourceLine) -> None:
        self.chunks.append(Chunk(self.address, data, line.location, line.text, line.expansion))
        self.address += len(data)

    def _pad(self, target: int, fill: int, line: SourceLine, what: str) -> None:
        if target < self.address:
            if not self.strict:
                return
            raise line.error(
                f"{what} {target:#x}: the program is already at {self.address:#x} "
                f"({self.address - target} bytes too much before this line)"
            )
        self._emit(bytes([fill]) * (target - self.address), line)

    # -- values --------------------------------------------------------------

    def _lookup(self, name: str) -> int:
        if name in self.values:
            return self.values[name]
        if name in self.defined_at and not self.strict:
            return self.address  # forward reference in an early pass: assume near
        raise UndefinedSymbol(name)

    def _value(self, text: str, line: SourceLine) -> int:
        try:
            return evaluate(text, self._lookup, here=self.address, start=self.start)
        except ExprError as exc:
            raise line.error(str(exc)) from None

    def _count(self, text: str, line: SourceLine) -> int:
        count = self._value(text, line)
        if count < 0:
            if not self.strict:
                return 0
            raise line.error(f"negative count {count}")
        return count

    def _byte(self, text: str | None, line: SourceLine, default: int) -> int:
        if text is None:
            return default
        value = self._value(text, line)
        if not -128 <= value <= 255:
            raise line.error(f"fill value {value:#x} is not a byte")
        return value & 0xFF

    def _mentions_address(self, text: str) -> bool:
        if "$" in text:
            return True
        return any(self.is_address.get(name, False) for name in identifiers(text))

    def _data(self, stmt: Data) -> bytes:
        out = bytearray()
        limit = 1 << (8 * stmt.width)
        for item in stmt.items:
            if isinstance(item, bytes):
                out += item
                continue
            value = self._value(item, stmt.line)
            if not -(limit >> 1) <= value < limit:
                if self.strict:
                    raise stmt.line.error(f"value {value:#x} does not fit in {stmt.width} byte(s)")
                value = 0
            out += (value % limit).to_bytes(stmt.width, "little")
        return bytes(out)

    # -- instructions --------------------------------------------------------

    def _instruction(self, insn: Instruction) -> bytes:
        """Bytes of ``insn`` here; reused while its address, mode and the
        symbols it names are unchanged (later passes are mostly repeats)."""
        refs = self._refs.get(id(insn))
        if refs is None:
            names = identifiers(insn.operands)
            refs = self._refs[id(insn)] = tuple(n for n in names if n in self.defined_at)
        symbols = tuple((self.values.get(n), self.is_address.get(n)) for n in refs)
        if id(insn) in self._portable_ids:
            # Position-independent (see _keystone): the address is not part of it.
            key: tuple = (id(insn), self.strict, self.bits, symbols)
        else:
            key = (
                id(insn),
                self.strict,  # early passes tolerate out-of-range values; the last may not
                self.bits,
                self.address,
                self.start,
                symbols,
            )
        code = self._insn_cache.get(key)
        if code is None:
            self._encoded_portably = False
            code = self._encode(insn)
            if self._encoded_portably and not insn.prefixes:
                self._portable_ids.add(id(insn))
                key = (id(insn), self.strict, self.bits, symbols)
            self._insn_cache[key] = code
        return code

    def _encode(self, insn: Instruction) -> bytes:
        line = insn.line
        ctx = quirks.Context(
            self.bits, self.address, lambda text: self._value(text, line), self.strict
        )
        try:
            result = quirks.apply_quirks(insn, ctx)
            if isinstance(result, quirks.Encoded):
                # Not decoded back: capstone 5 does not know PVALIDATE,
                # SERIALIZE and friends; tests/asm/test_quirks.py pins these bytes.
                code = result.data
            else:
                mnemonic, operands, fix = insn.mnemonic, insn.operands, None
                if isinstance(result, quirks.Rewritten):
                    mnemonic, operands, fix = result.mnemonic, result.operands, result.fix
                code = self._keystone(insn, mnemonic, operands, fix)
            if insn.mnemonic not in quirks.RELATIVE_BRANCHES:
                code = self._size_prefixes(insn, code)
        except (quirks.QuirkError, checks.CheckError) as exc:
            raise line.error(str(exc)) from None
        return code

    def _size_prefixes(self, insn: Instruction, code: bytes) -> bytes:
        """``o16``/``o32``/``a16``/``a32``: add the 0x66/0x67 the mode needs."""
        p = insn.prefixes
        wanted = []
        if ("o32" in p and self.bits == 16) or ("o16" in p and self.bits != 16):
            wanted.append(0x66)
        if ("a32" in p and self.bits != 32) or ("a16" in p and self.bits == 32):
            if "a16" in p and self.bits == 64:
                raise quirks.QuirkError("a16 does not exist in 64-bit mode")
            wanted.append(0x67)
        present = set()
        for b in code:
            if b not in quirks.LEGACY_PREFIXES:
                break
            present.add(b)
        extra = bytes(b for b in wanted if b not in present)
        if extra:
            code = extra + code
            if len(checks.decode(code, self.address, self.bits)) != 1:
                raise quirks.QuirkError("this instruction cannot take an o16/o32/a16/a32 prefix")
        return code

    def _keystone(self, insn: Instruction, mnemonic: str, operands: str, fix: object) -> bytes:
        plan = self._plan(insn, mnemonic, operands)
        portable = (
            fix is None
            and not plan.rip_slots
            and plan.expect.branch_target is None
            and insn.mnemonic not in quirks.RELATIVE_BRANCHES
            and not insn.mnemonic.startswith(_ADDRESS_DEPENDENT_PREFIXES)
        )
        if portable:
            # The encoding (and its check) of an instruction that names no
            # relative target is the same at every address: remember it for
            # the whole process, so a handler included by many programs is
            # handed to keystone and capstone once.
            key = (self.bits, plan.text(None), repr(plan.expect))
            cached = _PORTABLE.get(key)
            if cached is None:
                try:
                    code = self._ks(insn, key[1])
                    checks.verify(code, self.address, self.bits, plan.expect)
                    cached = code
                except (quirks.QuirkError, checks.CheckError) as exc:
                    cached = exc
                if len(_PORTABLE) > _PORTABLE_LIMIT:
                    _PORTABLE.clear()
                _PORTABLE[key] = cached
            if isinstance(cached, Exception):
                raise cached
            self._encoded_portably = True
            return cached
        code = self._ks(insn, plan.text(None))
        if fix is not None:
            code = fix(code)  # type: ignore[operator]
        if plan.rip_slots:
            length = len(code)
            code = self._ks(insn, plan.text(self.address + length))
            if fix is not None:
                code = fix(code)  # type: ignore[operator]
            if len(code) != length:
                raise quirks.QuirkError("internal: RIP-relative encoding changed length")
        checks.verify(code, self.address, self.bits, plan.expect)
        return code

    def _ks(self, insn: Instruction, text: str) -> bytes:
        key = (self.bits, text, self.address)
        cached = self._ks_cache.get(key)
        if cached is None:
            try:
                encoding, _ = self._engines[self.bits].asm(text, self.address, as_bytes=True)
                cached = encoding or b""
            except KsError as exc:
                cached = exc
            self._ks_cache[key] = cached
        if isinstance(cached, KsError):
            if cached.errno == KS_ERR_ASM_SYMBOL_MISSING:
                unknown = [
                    n
                    for n in identifiers(insn.operands)
                    if n.lower() not in RESERVED and n not in self.defined_at
                ]
                if unknown:
                    raise quirks.QuirkError(undefined_symbol_message(unknown[0]))
            hint = ""
            if cached.errno == KS_ERR_ASM_MNEMONICFAIL:
                # keystone lacks some newer instructions (VPDPBUSD, ...): the
                # bytes can always be written out.
                hint = (
                    f"; keystone does not know '{insn.mnemonic}': write its encoding "
                    "with db (e.g. db 0x0f, 0x01, 0xd9), see guest_asm/README.md"
                )
            raise quirks.QuirkError(
                f"keystone cannot assemble '{insn.line.text}' in {self.bits}-bit mode: "
                f"{_ks_reason(cached)}{hint}"
            )
        return cached

    def _plan(self, insn: Instruction, mnemonic: str, operands: str) -> _OperandPlan:
        """keystone text for ``mnemonic operands``, and what its bytes must mean."""
        expect = checks.Expectations()
        pieces: list[str] = [
            " ".join([p for p in insn.prefixes if p in quirks.LEGACY_PREFIX_BYTES] + [mnemonic])
        ]
        rip_slots: list[tuple[int, int]] = []
        memory_registers: set[str] | None = None
        expressions: list[int] = []
        ops = split_top_level(operands) if operands.strip() else []
        for n, raw in enumerate(ops):
            pieces.append(" " if n == 0 else ", ")
            op = _nasm_to_keystone(raw)
            bracket = re.search(r"\[(.*)\]", op, re.DOTALL)
            if bracket is None:
                bare = _OPERAND_KEYWORDS.sub("", op)
                if bare.strip() and is_expression(bare):
                    # Our value, not keystone's: it lacks '%' and has its own
                    # ideas about operator precedence.
                    value = self._value(bare, insn.line)
                    expressions.append(value)
                    keywords = _OPERAND_KEYWORDS.match(op)
                    shown = f"{value:#x}" if value >= 0 else f"-{-value:#x}"
                    pieces.append((keywords.group(0) if keywords else "") + shown)
                else:
                    pieces.append(self._substitute(op, insn.line))
                continue
            memory_registers = memory_registers or set()
            inner, target, registers = self._memory_operand(bracket.group(1), insn.line)
            memory_registers |= registers
            pieces.append(self._substitute(op[: bracket.start()], insn.line))
            if target is not None:
                rip_slots.append((len(pieces), target))
                pieces.append("")
                expect.rip_allowed = True
                expect.rip_targets.append(target)
            else:
                if "rip" in registers:
                    expect.rip_allowed = True
                if not registers and is_expression(inner):
                    value = self._value(inner, insn.line)
                    expect.absolute_operands.append(raw.strip())
                    expect.absolute_addresses.append(value)
                    pieces.append(f"[{_number(value)}]")
                else:
                    pieces.append(f"[{self._substitute(inner, insn.line)}]")
            pieces.append(self._substitute(op[bracket.end() :], insn.line))
        if mnemonic in _BRANCH_MNEMONICS and len(expressions) == 1 and len(ops) == 1:
            expect.branch_target = expressions[0]
        else:
            expect.immediates = expressions
        expect.memory_registers = memory_registers
        if self.bits == 16:
            expect.address_size_prefix_ok = "a32" in insn.prefixes or bool(
                memory_registers and memory_registers & ADDRESS_REGISTERS_32
            )
        return _OperandPlan(pieces, rip_slots, expect)

    def _memory_operand(self, inner: str, line: SourceLine) -> tuple[str, int | None, set[str]]:
        """(inner text, RIP target or None, registers) of one ``[...]``."""
        rel = re.match(r"\s*rel\s+", inner, re.IGNORECASE)
        if rel:
            inner = "rip + " + inner[rel.end() :]
        if re.match(r"\s*abs\s+", inner, re.IGNORECASE):
            raise line.error("'abs' is not supported: use a base register for absolute addresses")
        names = identifiers(inner)
        registers = {n.lower() for n in names if n.lower() in REGISTERS}
        if self.bits != 64 or registers - {"rip"}:
            return inner, None, registers
        names_address = "$" in inner or any(
            self.is_address.get(n, False) for n in names if n.lower() not in RESERVED
        )
        if not names_address and not rel:
            return inner, None, registers
        if rel:
            # [rel X] always means "RIP-relative to address X", for an equ
            # constant too (NASM); never X as a displacement.
            inner = inner.split("+", 1)[1]
        elif "rip" in registers:
            m = re.fullmatch(r"\s*rip\s*\+(.*)", inner, re.IGNORECASE | re.DOTALL) or re.fullmatch(
                r"(.*)\+\s*rip\s*", inner, re.IGNORECASE | re.DOTALL
            )
            if m is None:
                raise line.error("write a RIP-relative label operand as [rip + label]")
            inner = m.group(1)
        return inner, self._value(inner, line), {"rip"}

    def _substitute(self, text: str, line: SourceLine) -> str:
        def ident(name: str) -> str:
            if name.lower() in RESERVED or name not in self.defined_at:
                return name  # registers and keywords; keystone reports undefined names
            try:
                return _number(self._lookup(name))
            except ExprError as exc:
                raise line.error(str(exc)) from None

        def dollar(token: str) -> str:
            return _number(self.address if token == "$" else self.start)

        return rewrite(text, ident, dollar)


def _ks_reason(exc: KsError) -> str:
    text = str(exc)
    return re.sub(r"\s*\(KS_ERR_\w+\)", "", text) or text


def _read_source(path: Path) -> str:
    """The text of a source file; a binary or unreadable file is a one-line error."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        where = SourceLocation(str(path), 1)
        raise AsmError(where, f"cannot read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise AsmError(
            SourceLocation(str(path), line),
            f"not a text file (byte {raw[exc.start]:#04x} at offset {exc.start:#x} is not "
            "UTF-8): a binary? Run a flat binary under a name that is not .S/.s/.asm/.nasm",
        ) from None


def assemble(
    source: str | None = None,
    *,
    path: Path | None = None,
    base: int = 0,
    bits: int = 64,
    include_paths: Sequence[Path] = (),
    defines: Mapping[str, int | str] = {},  # noqa: B006 - read only
    name: str | None = None,
) -> Program:
    """Assemble ``source`` (or the file at ``path``) into a flat binary.

    ``base`` is the address of the first byte unless the source starts with
    ``org``; ``bits`` the mode until the first ``bits`` directive. Includes
    are searched next to the including file, then in ``include_paths``, then
    in the packaged guest_asm folder. ``defines`` act as ``%define``\\s.
    ``name`` is the file name errors show for a string source (default
    ``<string>``, or ``path``). Raises ``AsmError`` (``file:line: message``).
    """
    if bits not in (16, 32, 64):
        raise ValueError(f"bits must be 16, 32 or 64, not {bits}")
    if source is None:
        if path is None:
            raise ValueError("assemble() needs a source string or a path")
        source = _read_source(Path(path))
    shown = name or (str(path) if path is not None else "<string>")
    lines = Preprocessor(include_paths, defines).run(
        source, shown, Path(path) if path is not None else None
    )
    search = [Path(p) for p in include_paths]
    packaged = guest_asm_dir()
    if packaged is not None:
        search.append(packaged)
    statements = StatementParser(search).parse(lines)
    return _Assembler(statements, base, bits).run()
