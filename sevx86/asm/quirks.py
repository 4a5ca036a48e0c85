"""Every instruction keystone 0.9.2 gets wrong or refuses, fixed in one table.

Found by assembling guest-relevant instructions in 16-, 32- and 64-bit mode
and comparing with GNU as and with what the CPU needs (see
tests/asm/test_quirks.py, which pins each entry). Each ``Quirk`` says what
keystone does and how it is handled: either our own encoding (``Encoded``),
or a rewritten instruction for keystone plus a fix-up of its bytes
(``Rewritten``).

Things keystone gets wrong for *every* instruction (its symbol resolver,
``$``, ``1Fh`` numbers, NASM's ``dword [x]`` and ``[fs:x]`` spellings, the
RIP-relative trap, silent truncation) are handled in ``assembler`` and
``checks`` instead; this table is per mnemonic.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sevx86.asm.expr import is_expression, split_top_level
from sevx86.asm.parse import Instruction


class QuirkError(ValueError):
    """The instruction cannot be encoded as written (message is user advice)."""


@dataclass(frozen=True)
class Encoded:
    """Final bytes, made here (keystone never sees the instruction)."""

    data: bytes


@dataclass(frozen=True)
class Rewritten:
    """Give keystone ``mnemonic operands`` instead, then pass its bytes to ``fix``."""

    mnemonic: str
    operands: str
    fix: Callable[[bytes], bytes] | None = None


Encoding = Encoded | Rewritten | None


@dataclass
class Context:
    """What an encoder may ask about the statement being assembled."""

    bits: int
    address: int
    value: Callable[[str], int]  # evaluate an expression at this statement
    strict: bool  # final pass: range errors are real errors


Handler = Callable[[Instruction, Context], Encoding]


@dataclass(frozen=True)
class Quirk:
    mnemonics: tuple[str, ...]
    modes: tuple[int, ...]
    keystone_does: str
    handler: Handler


LEGACY_PREFIX_BYTES = {
    "lock": 0xF0,
    "rep": 0xF3,
    "repe": 0xF3,
    "repz": 0xF3,
    "repne": 0xF2,
    "repnz": 0xF2,
}
LEGACY_PREFIXES = frozenset({0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67})


def prefix_bytes(insn: Instruction) -> bytes:
    return bytes(LEGACY_PREFIX_BYTES[p] for p in insn.prefixes if p in LEGACY_PREFIX_BYTES)


def strip_operand_size_prefix(code: bytes) -> bytes:
    """Drop the 0x66 keystone put among the legacy prefixes."""
    i = 0
    while i < len(code) and code[i] in LEGACY_PREFIXES:
        if code[i] == 0x66:
            return code[:i] + code[i + 1 :]
        i += 1
    return code


# These name their implicit rAX operand in some assemblers' syntax; accept it.
_IMPLICIT_RAX = frozenset({"vmrun", "vmload", "vmsave", "skinit"})


def _fixed(table: dict[tuple[str, int], bytes | str]) -> Handler:
    """A handler for operand-less instructions with one encoding per mode; a
    ``str`` entry is a refusal with that advice."""

    def handle(insn: Instruction, ctx: Context) -> Encoding:
        entry = table.get((insn.mnemonic, ctx.bits))
        if entry is None:
            raise QuirkError(f"'{insn.mnemonic}' does not exist in {ctx.bits}-bit mode")
        if isinstance(entry, str):
            raise QuirkError(entry)
        implicit = insn.mnemonic in _IMPLICIT_RAX
        if insn.operands and not (
            implicit and re.fullmatch(r"[er]?ax", insn.operands.strip().lower())
        ):
            raise QuirkError(f"'{insn.mnemonic}' takes no operands")
        return Encoded(prefix_bytes(insn) + entry)

    return handle


def _all_modes(mapping: dict[str, bytes]) -> dict[tuple[str, int], bytes | str]:
    return {(m, b): code for m, code in mapping.items() for b in (16, 32, 64)}


# -- missing mnemonics ---------------------------------------------------------

_SVM_AND_SEV = _all_modes(
    {
        "vmgexit": bytes.fromhex("f30f01d9"),
        "vmrun": bytes.fromhex("0f01d8"),
        "vmload": bytes.fromhex("0f01da"),
        "vmsave": bytes.fromhex("0f01db"),
        "skinit": bytes.fromhex("0f01de"),
        "invlpga": bytes.fromhex("0f01df"),
        "pvalidate": bytes.fromhex("f20f01ff"),
        "rmpadjust": bytes.fromhex("f30f01fe"),
        "rmpupdate": bytes.fromhex("f20f01fe"),
        "psmash": bytes.fromhex("f30f01ff"),
        "wbnoinvd": bytes.fromhex("f30f09"),
        "serialize": bytes.fromhex("0f01e8"),
        "endbr64": bytes.fromhex("f30f1efa"),
        "endbr32": bytes.fromhex("f30f1efb"),
    }
)


def _invlpga(insn: Instruction, ctx: Context) -> Encoding:
    # keystone wants "invlpga rax, ecx"; the operand-less form is what
    # most code writes. Both name the same implicit registers.
    if insn.operands and not re.fullmatch(r"[er]?ax\s*,\s*ecx", insn.operands.strip().lower()):
        raise QuirkError("invlpga takes no operands (or 'rax, ecx')")
    return Encoded(prefix_bytes(insn) + bytes.fromhex("0f01df"))


_GPR_NUMBERS = {
    **{r: n for n, r in enumerate("rax rcx rdx rbx rsp rbp rsi rdi".split())},
    **{f"r{n}": n for n in range(8, 16)},
}
_GPR32_NUMBERS = {
    **{r: n for n, r in enumerate("eax ecx edx ebx esp ebp esi edi".split())},
    **{f"r{n}d": n for n in range(8, 16)},
}


def _rdpid(insn: Instruction, ctx: Context) -> Encoding:
    reg = insn.operands.strip().lower()
    numbers = _GPR_NUMBERS if ctx.bits == 64 else _GPR32_NUMBERS
    if reg not in numbers or (ctx.bits != 64 and numbers[reg] > 7):
        want = "a 64-bit register" if ctx.bits == 64 else "a 32-bit register"
        raise QuirkError(f"rdpid takes {want} in {ctx.bits}-bit mode")
    n = numbers[reg]
    rex = b"\x41" if n > 7 else b""
    return Encoded(prefix_bytes(insn) + b"\xf3" + rex + bytes([0x0F, 0xC7, 0xF8 | (n & 7)]))


# -- operand-size slips --------------------------------------------------------

_RETURNS: dict[tuple[str, int], bytes | str] = {}
for _bits in (16, 32, 64):
    _native = b"" if _bits == 16 else b"\x66"  # prefix for a 16-bit frame
    _dword = b"\x66" if _bits == 16 else b""  # prefix for a 32-bit frame
    for _name in ("retf", "lret"):
        _RETURNS[(_name, _bits)] = b""
    for _name in ("retfw", "lretw"):
        _RETURNS[(_name, _bits)] = _native
    for _name in ("retfd", "lretd"):
        _RETURNS[(_name, _bits)] = _dword
for _name in ("retfq", "lretq"):
    _RETURNS[(_name, 64)] = b"\x48"


def _far_return(insn: Instruction, ctx: Context) -> Encoding:
    prefix = _RETURNS.get((insn.mnemonic, ctx.bits))
    if not isinstance(prefix, bytes):
        raise QuirkError(f"'{insn.mnemonic}' does not exist in {ctx.bits}-bit mode")
    if not insn.operands:
        return Encoded(prefix_bytes(insn) + prefix + b"\xcb")
    return Encoded(prefix_bytes(insn) + prefix + b"\xca" + _imm(ctx, insn.operands, 2))


def _near_return16(insn: Instruction, ctx: Context) -> Encoding:
    if not insn.operands:
        return Encoded(prefix_bytes(insn) + b"\xc3")
    return Encoded(prefix_bytes(insn) + b"\xc2" + _imm(ctx, insn.operands, 2))


def _imm(ctx: Context, text: str, size: int) -> bytes:
    """``text``'s value as a little-endian field of ``size`` bytes (either signedness)."""
    value = ctx.value(text)
    if not -(1 << (8 * size - 1)) <= value < (1 << (8 * size)):
        if ctx.strict:
            raise QuirkError(f"value {value:#x} does not fit in {size} byte(s)")
        value = 0
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _push16(insn: Instruction, ctx: Context) -> Encoding:
    words = insn.operands.split(None, 1)
    size = 4 if "o32" in insn.prefixes else 2
    operand = insn.operands
    if words and words[0].lower() in ("word", "dword"):
        size = 2 if words[0].lower() == "word" else 4
        operand = words[1] if len(words) > 1 else ""
    if not _is_plain_expression(operand):
        return None  # a register or memory operand: keystone gets it right
    value = ctx.value(operand)
    # A 0x66 here is ours: the o32 prefix is not added again after us.
    prefix = prefix_bytes(insn) + (b"\x66" if size == 4 else b"")
    if -128 <= value <= 127:
        return Encoded(prefix + b"\x6a" + (value & 0xFF).to_bytes(1, "little"))
    return Encoded(prefix + b"\x68" + _imm(ctx, operand, size))


_FLAGS: dict[tuple[str, int], bytes | str] = {
    ("pushf", 16): b"\x9c",
    ("popf", 16): b"\x9d",
    ("pushf", 32): b"\x9c",
    ("popf", 32): b"\x9d",
    ("pushf", 64): b"\x9c",
    ("popf", 64): b"\x9d",
}

_SEGMENT_PUSH_POP_32: dict[tuple[str, int], bytes | str] = {}
for _seg, _push in (("es", 0x06), ("cs", 0x0E), ("ss", 0x16), ("ds", 0x1E)):
    _SEGMENT_PUSH_POP_32[(f"push {_seg}", 32)] = bytes([_push])
    if _seg != "cs":
        _SEGMENT_PUSH_POP_32[(f"pop {_seg}", 32)] = bytes([_push + 1])


def _segment_push_pop(insn: Instruction, ctx: Context) -> Encoding:
    key = (f"{insn.mnemonic} {insn.operands.strip().lower()}", ctx.bits)
    code = _SEGMENT_PUSH_POP_32.get(key)
    return Encoded(prefix_bytes(insn) + code) if isinstance(code, bytes) else None


_IRETS: dict[tuple[str, int], bytes | str] = {
    ("iret", 16): b"\xcf",
    ("iretw", 16): b"\xcf",
    ("iretd", 16): b"\x66\xcf",
    ("iret", 32): b"\xcf",
    ("iretd", 32): b"\xcf",
    ("iretw", 32): b"\x66\xcf",
    ("iret", 64): (
        "'iret' in 64-bit code is ambiguous (keystone makes it a 16-bit IRET, NASM a "
        "32-bit one): write 'iretq' to return from a 64-bit interrupt frame"
    ),
    ("iretd", 64): b"\xcf",
    ("iretw", 64): b"\x66\xcf",
    ("iretq", 64): b"\x48\xcf",
}

_SYSCALL_RETURNS: dict[tuple[str, int], bytes | str] = {
    ("sysretq", 64): b"\x48\x0f\x07",
    ("sysretd", 64): b"\x0f\x07",
    ("sysretl", 64): b"\x0f\x07",
    ("sysret", 64): (
        "'sysret' is ambiguous (keystone emits the 64-bit form, NASM the 32-bit "
        "one): write 'sysretq' (to 64-bit code) or 'sysretd' (to 32-bit code)"
    ),
    ("sysexitq", 64): b"\x48\x0f\x35",
}


def _descriptor_table_32(insn: Instruction, ctx: Context) -> Encoding:
    # keystone puts 0x66 in front of LGDT/LIDT/SGDT/SIDT in 32-bit mode,
    # which makes the CPU load only 24 bits of the table base.
    return Rewritten(insn.mnemonic, insn.operands, strip_operand_size_prefix)


def _string_movsd(insn: Instruction, ctx: Context) -> Encoding:
    # keystone only knows the SSE2 movsd; the string move has no operands.
    if insn.operands:
        return None
    size = b"\x66" if ctx.bits == 16 else b""
    return Encoded(prefix_bytes(insn) + size + b"\xa5")


# -- branches ------------------------------------------------------------------

JCC_CODES = {
    "jo": 0, "jno": 1, "jb": 2, "jc": 2, "jnae": 2, "jnb": 3, "jae": 3, "jnc": 3,
    "je": 4, "jz": 4, "jne": 5, "jnz": 5, "jbe": 6, "jna": 6, "ja": 7, "jnbe": 7,
    "js": 8, "jns": 9, "jp": 10, "jpe": 10, "jnp": 11, "jpo": 11, "jl": 12, "jnge": 12,
    "jge": 13, "jnl": 13, "jle": 14, "jng": 14, "jg": 15, "jnle": 15,
}  # fmt: skip
RELATIVE_BRANCHES = frozenset(JCC_CODES) | {"jmp", "call"}


def _is_plain_expression(text: str) -> bool:
    return bool(text.strip()) and "[" not in text and is_expression(text)


def _distance_keyword(operands: str) -> tuple[str, str]:
    m = re.match(r"\s*(short|near)\s+(.*)$", operands, re.IGNORECASE | re.DOTALL)
    return (m.group(1).lower(), m.group(2)) if m else ("", operands)


def _far_pointer(operands: str) -> tuple[str, str, str] | None:
    """``[far] [word|dword] SEL:OFF`` -> (size keyword, selector, offset)."""
    text = re.sub(r"^\s*far\s+", "", operands, flags=re.IGNORECASE)
    size = ""
    m = re.match(r"\s*(word|dword)\s+(.*)$", text, re.IGNORECASE)
    if m:
        size, text = m.group(1).lower(), m.group(2)
    parts = split_top_level(text, ":")
    if len(parts) == 2 and "[" not in text and all(_is_plain_expression(p) for p in parts):
        return size, parts[0], parts[1]
    return None


def _branch(insn: Instruction, ctx: Context) -> Encoding:
    """jmp/call/jcc: far pointers, far indirect, 16-bit near, short/near keywords."""
    far = _far_pointer(insn.operands) if insn.mnemonic in ("jmp", "call") else None
    if far is not None:
        return _far_direct(insn, ctx, *far)
    far_indirect = re.match(
        r"\s*(?:far\s+(?:(?:fword|dword|word)\s+(?:ptr\s+)?)?|fword\s+(?:ptr\s+)?)(.*\[.*)$",
        insn.operands,
        re.IGNORECASE,
    )
    if far_indirect and insn.mnemonic in ("jmp", "call"):
        # keystone rejects "jmp far [x]" and "jmp fword ptr [x]" but knows ljmp/lcall.
        return Rewritten("l" + insn.mnemonic, far_indirect.group(1))
    distance, target = _distance_keyword(insn.operands)
    if not _is_plain_expression(target):
        return None  # register or memory operand: an indirect branch
    if ctx.bits == 16:
        return _relative_branch(insn, ctx, distance, target)
    if "o16" in insn.prefixes:
        raise QuirkError("o16 on a relative branch is not supported in 32/64-bit code")
    if distance:
        # keystone rejects the keyword; without it, it would choose the size itself.
        return _relative_branch(insn, ctx, distance, target)
    return None


def _relative_branch(insn: Instruction, ctx: Context, distance: str, target_text: str) -> Encoded:
    """jmp/call/jcc with a displacement: rel8 when it reaches (or ``short``
    demands it), else the mode's near form (rel16 in 16-bit code, where
    ``o32`` asks for the 0x66-prefixed rel32 one; rel32 otherwise)."""
    target = ctx.value(target_text)
    wide16 = ctx.bits == 16 and "o32" in insn.prefixes
    prefix = prefix_bytes(insn) + (b"\x66" if wide16 else b"")
    disp_size = 2 if ctx.bits == 16 and not wide16 else 4
    if insn.mnemonic == "call":
        near, short = b"\xe8", None
    elif insn.mnemonic == "jmp":
        near, short = b"\xe9", b"\xeb"
    else:
        code = JCC_CODES[insn.mnemonic]
        near, short = bytes([0x0F, 0x80 | code]), bytes([0x70 | code])
    if short is not None and distance != "near":
        disp = target - (ctx.address + len(prefix) + 2)
        if -128 <= disp <= 127 or distance == "short":
            if not -128 <= disp <= 127:
                if ctx.strict:
                    raise QuirkError(f"short jump target out of range ({disp:+d} bytes)")
                disp = 0
            return Encoded(prefix + short + (disp & 0xFF).to_bytes(1, "little"))
    disp = target - (ctx.address + len(prefix) + len(near) + disp_size)
    limit = 1 << (8 * disp_size)
    # 16-bit IP wraps inside its segment, so any 16-bit difference reaches;
    # a rel32 is signed.
    reach = limit if disp_size == 2 else limit >> 1
    if not -reach <= disp < reach:
        if ctx.strict:
            raise QuirkError(
                f"branch target {target:#x} is out of reach of a {disp_size * 8}-bit displacement"
            )
        disp = 0
    return Encoded(prefix + near + (disp % limit).to_bytes(disp_size, "little"))


def _far_direct(insn: Instruction, ctx: Context, size: str, selector: str, offset: str) -> Encoded:
    """``jmp SEL:OFF``: keystone rejects it, and its ``ljmp`` emits the 16-bit
    form in 32-bit mode (a truncated offset)."""
    if ctx.bits == 64:
        raise QuirkError(
            "there is no far jump/call to an immediate address in 64-bit mode: "
            "use 'retfq' with a pushed selector and offset, or 'jmp far [mem]'"
        )
    default = 2 if ctx.bits == 16 else 4
    if "o32" in insn.prefixes:
        default = 4
    elif "o16" in insn.prefixes:
        default = 2
    offset_size = {"word": 2, "dword": 4}.get(size, default)
    size_prefix = b"\x66" if (offset_size == 4) == (ctx.bits == 16) else b""
    opcode = b"\xea" if insn.mnemonic == "jmp" else b"\x9a"
    return Encoded(
        prefix_bytes(insn)
        + size_prefix
        + opcode
        + _imm(ctx, offset, offset_size)
        + _imm(ctx, selector, 2)
    )


def _far_keyword_branch(insn: Instruction, ctx: Context) -> Encoding:
    """ljmp/lcall SEL:OFF: keystone's 32-bit ljmp keeps a 16-bit offset."""
    far = _far_pointer(insn.operands)
    if far is None:
        return None
    return _far_direct(
        Instruction(insn.line, insn.prefixes, insn.mnemonic[1:], insn.operands), ctx, *far
    )


QUIRKS: tuple[Quirk, ...] = (
    Quirk(
        tuple(sorted({m for m, _ in _SVM_AND_SEV} - {"invlpga"})),
        (16, 32, 64),
        "rejects the mnemonic (VMGEXIT, SNP's PVALIDATE/RMPADJUST/PSMASH/RMPUPDATE, "
        "WBNOINVD, SERIALIZE, ENDBR) or the operand-less form (VMRUN/VMLOAD/VMSAVE/SKINIT)",
        _fixed(_SVM_AND_SEV),
    ),
    Quirk(("invlpga",), (16, 32, 64), "rejects the operand-less form", _invlpga),
    Quirk(("rdpid",), (16, 32, 64), "rejects the mnemonic", _rdpid),
    Quirk(
        tuple(sorted({m for m, _ in _RETURNS})),
        (16, 32, 64),
        "16-bit retf gets a 0x66 prefix (pops 32-bit IP and CS); lret/lretq/retfd/retfw "
        "are rejected",
        _far_return,
    ),
    Quirk(("ret", "retn"), (16,), "16-bit ret gets a 0x66 prefix (pops 4 bytes)", _near_return16),
    Quirk(("push",), (16,), "16-bit push imm gets a 0x66 prefix (pushes 4 bytes)", _push16),
    Quirk(
        ("push", "pop"),
        (32,),
        "32-bit push/pop of cs/ds/es/ss gets a 0x66 prefix (moves 2 bytes)",
        _segment_push_pop,
    ),
    Quirk(
        ("pushf", "popf"), (32, 64), "gets a 0x66 prefix (moves 2 bytes of flags)", _fixed(_FLAGS)
    ),
    Quirk(
        tuple(sorted({m for m, _ in _IRETS})),
        (16, 32, 64),
        "'iret' in 32/64-bit code gets a 0x66 prefix (a 16-bit frame); iretw is rejected",
        _fixed(_IRETS),
    ),
    Quirk(
        tuple(sorted({m for m, _ in _SYSCALL_RETURNS})),
        (64,),
        "rejects sysretq/sysexitq; 'sysret' silently means sysretq",
        _fixed(_SYSCALL_RETURNS),
    ),
    Quirk(
        ("lgdt", "lidt", "sgdt", "sidt"),
        (32,),
        "puts 0x66 in front in 32-bit mode (only 24 bits of the base are loaded)",
        _descriptor_table_32,
    ),
    Quirk(
        ("movsd",), (16, 32, 64), "rejects the string form (knows only SSE2 movsd)", _string_movsd
    ),
    Quirk(
        tuple(sorted(RELATIVE_BRANCHES)),
        (16, 32, 64),
        "16-bit near jmp/call/jcc get 0x66 and a 32-bit displacement (call pushes 4 bytes); "
        "'short'/'near' keywords, 'jmp SEL:OFF' and 'jmp far [mem]' are rejected",
        _branch,
    ),
    Quirk(
        ("ljmp", "lcall"),
        (16, 32, 64),
        "32-bit 'ljmp SEL:OFF' is encoded with a 16-bit offset",
        _far_keyword_branch,
    ),
)

_BY_MNEMONIC: dict[tuple[str, int], list[Quirk]] = {}
for _quirk in QUIRKS:
    for _mnemonic in _quirk.mnemonics:
        for _mode in _quirk.modes:
            _BY_MNEMONIC.setdefault((_mnemonic, _mode), []).append(_quirk)


def apply_quirks(insn: Instruction, ctx: Context) -> Encoding:
    """Our encoding or rewrite of ``insn`` if keystone mishandles it, else None."""
    for quirk in _BY_MNEMONIC.get((insn.mnemonic, ctx.bits), ()):
        result = quirk.handler(insn, ctx)
        if result is not None:
            return result
    return None
