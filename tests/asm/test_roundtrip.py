"""Property tests: random instruction and data sequences survive a round trip
through the assembler and capstone, at the addresses the symbols say."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sevx86.asm import assemble
from tests.asm.conftest import disasm

REG64 = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r12", "r15"]
REG32 = ["eax", "ebx", "ecx", "edx", "esi", "edi", "r8d", "r15d"]
LOW32 = {r: ("e" + r[1:] if r[1].isalpha() else r + "d") for r in REG64}

mov64 = st.tuples(st.sampled_from(REG64), st.integers(0, (1 << 64) - 1))
mov32 = st.tuples(st.sampled_from(REG32), st.integers(0, (1 << 32) - 1))
data = st.binary(min_size=1, max_size=12)
item = st.one_of(
    mov64.map(lambda t: ("mov", t[0], t[1])),
    mov32.map(lambda t: ("mov", t[0], t[1])),
    data.map(lambda b: ("db", b)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(item, min_size=1, max_size=12), st.integers(0, 0xFFFF_FFFF).map(lambda a: a & ~0xF))
def test_mov_and_db_round_trip(items, base):
    lines = []
    for n, it in enumerate(items):
        if it[0] == "mov":
            lines.append(f"l{n}: mov {it[1]}, {it[2]:#x}")
        else:
            lines.append(f"l{n}: db " + ", ".join(str(b) for b in it[1]))
    program = assemble("\n".join(lines), base=base)
    for n, it in enumerate(items):
        start = program.symbol(f"l{n}")
        end = program.symbol(f"l{n + 1}") if n + 1 < len(items) else program.end
        chunk = program.code[start - base : end - base]
        if it[0] == "db":
            assert chunk == it[1]
            continue
        (text,) = disasm(chunk, start, 64)
        mnemonic, operands = text.split(" ", 1)
        reg, value = operands.split(", ")
        assert mnemonic in ("mov", "movabs")
        encoded = int(value, 16) % (1 << 64)
        width = 32 if it[1] in REG32 else 64
        if reg == it[1]:
            assert encoded % (1 << width) == it[2]
        else:  # "mov rax, small" may be encoded as "mov eax, small", which zero-extends
            assert reg == LOW32[it[1]] and encoded == it[2] < (1 << 32)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=8), st.sampled_from([16, 32, 64]))
def test_jumps_over_random_gaps_reach_their_labels(gaps, bits):
    lines = [f"bits {bits}"]
    for n, gap in enumerate(gaps):
        lines.append(f"j{n}: jmp t{n}")
        lines.append(f"times {gap} nop")
        lines.append(f"t{n}:")
    program = assemble("\n".join(lines), base=0x1000)
    for n in range(len(gaps)):
        start = program.symbol(f"j{n}")
        size = 2 if gaps[n] <= 127 else (3 if bits == 16 else 5)
        (text,) = disasm(program.code[start - 0x1000 : start - 0x1000 + size], start, bits)
        assert text == f"jmp {program.symbol(f't{n}'):#x}"
