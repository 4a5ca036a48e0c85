"""Helpers for the assembler tests: capstone listings and a tiny Unicorn runner."""

from __future__ import annotations

import pytest
from capstone import CS_ARCH_X86, CS_MODE_16, CS_MODE_32, CS_MODE_64, Cs
from unicorn import UC_ARCH_X86, UC_MODE_16, UC_MODE_64, Uc
from unicorn.x86_const import UC_X86_REG_RSP

from sevx86.asm import Program

_CS = {16: CS_MODE_16, 32: CS_MODE_32, 64: CS_MODE_64}


def disasm(code: bytes, address: int, bits: int) -> list[str]:
    """``mnemonic op_str`` per instruction; asserts every byte decoded."""
    insns = list(Cs(CS_ARCH_X86, _CS[bits]).disasm(code, address))
    assert sum(i.size for i in insns) == len(code), code.hex()
    return [f"{i.mnemonic} {i.op_str}".strip() for i in insns]


def run(program: Program, start: str, until: str, *, mode16: bool = False) -> Uc:
    """Run ``program`` in fresh Unicorn RAM (first MiB plus the program) from
    label ``start`` to label ``until``."""
    uc = Uc(UC_ARCH_X86, UC_MODE_16 if mode16 else UC_MODE_64)
    uc.mem_map(0, 0x100000)
    if program.end > 0x100000:
        low = program.base & ~0xFFF
        uc.mem_map(low, ((program.end + 0xFFF) & ~0xFFF) - low)
    uc.mem_write(program.base, program.code)
    if not mode16:
        uc.reg_write(UC_X86_REG_RSP, 0x80000)
    uc.emu_start(program.symbol(start), program.symbol(until), count=100_000)
    return uc


@pytest.fixture
def u64():
    return lambda uc, address: int.from_bytes(uc.mem_read(address, 8), "little")
