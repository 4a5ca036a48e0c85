"""The symbol file: an ELF64 gdb loads, with every label where the assembler put it.

The oracles are the gABI's ELF header fields (magic, class, EM_X86_64 = 62)
and gdb itself reading the file (``info address``, ``info symbol``).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys

import pytest

from sevx86.asm import assemble
from sevx86.asm.elf import SymbolSection, symbol_elf

SOURCE = """
start:
    mov eax, 1
middle:
    nop
    nop
finish:
    hlt
"""


def _program():
    return assemble(SOURCE, base=0x100000, bits=64)


def test_header_is_an_x86_64_executable_with_the_code_at_its_offset():
    program = _program()
    elf = symbol_elf([SymbolSection.of("payload", program)], entry=0x100000)
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1  # ELFCLASS64, little-endian
    e_type, e_machine = struct.unpack_from("<HH", elf, 16)
    assert (e_type, e_machine) == (2, 62)
    # The first program header maps the code at its address.
    p_type, _flags, p_offset, p_vaddr = struct.unpack_from("<IIQQ", elf, 64)
    assert (p_type, p_vaddr) == (1, 0x100000)
    assert elf[p_offset : p_offset + len(program.code)] == program.code


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_gdb_finds_every_label(tmp_path):
    program = _program()
    path = tmp_path / "p.elf"
    source = tmp_path / "p.S"
    source.write_text(SOURCE)
    command = [sys.executable, "-m", "sevx86.cli.main", "asm", str(source), "--base", "0x100000"]
    done = subprocess.run(
        [*command, "--symbols", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = subprocess.run(
        ["gdb", "-nx", "-batch", "-ex", f"file {path}", "-ex", "info address middle",
         "-ex", f"info symbol {program.symbols['finish'] + 0:#x}", "-ex", "info symbol 0x100006"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert f'Symbol "middle" is at {program.symbols["middle"]:#x}' in out
    assert "finish in section .text.p" in out
    assert "middle + 1 in section .text.p" in out  # sized up to the next label
