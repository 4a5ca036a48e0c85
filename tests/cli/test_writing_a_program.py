"""Issue 17, "Writing a program": what a newcomer's first programs meet."""

from __future__ import annotations

import pytest

from .conftest import one_line_error

EXIT_5 = """\
start:
    mov edx, 0xF4
    mov eax, 5
    out dx, eax
"""

# %include "payload.S" at the top: pl_putc comes first in the bytes.
INCLUDE_FIRST = '%include "payload.S"\n' + EXIT_5.replace("start:", "start:\n    nop")

NO_START = "main:\n    hlt\n"

# Forgets the exit: runs off the end into data, then reads address 0x79.
FAULTS_AFTER_LABEL = """\
start:
    nop
oops:
    mov rax, [0x79]
    hlt
"""


@pytest.mark.parametrize("name", ["mine.nasm", "MINE.ASM", "mine.S", "Mine.s"])
def test_i17_usual_assembly_extensions_are_assembled_in_any_case(sevx86, tmp_path, name):
    (tmp_path / name).write_text(EXIT_5)
    done = sevx86("run", name)
    assert (done.returncode, done.stderr) == (5, "")


def test_i17_a_binary_that_is_printable_text_is_refused(sevx86, tmp_path):
    (tmp_path / "mine.txt").write_text(EXIT_5)
    done = sevx86("run", "mine.txt")
    assert done.returncode == 2
    assert "mine.txt: looks like text, not a flat binary" in one_line_error(done, "run")


def test_i17_the_program_is_entered_at_start(sevx86, tmp_path):
    (tmp_path / "top.S").write_text(INCLUDE_FIRST)
    done = sevx86("run", "top.S")
    assert (done.returncode, done.stderr) == (5, "")  # start ran, not pl_putc


def test_i17_a_program_without_start_is_refused(sevx86, tmp_path):
    (tmp_path / "main.S").write_text(NO_START)
    done = sevx86("run", "main.S")
    assert done.returncode == 2
    assert "no 'start:' label" in one_line_error(done, "run")


def test_i17_a_fault_names_the_nearest_label(sevx86, tmp_path):
    (tmp_path / "pf.S").write_text(FAULTS_AFTER_LABEL)
    done = sevx86("run", "pf.S")
    assert done.returncode == 120
    # start: nop (1 byte), then oops: the faulting MOV at 0x100001.
    assert "RIP 0x100001 (oops in pf.S)" in one_line_error(done, "run")


def test_i17_undefined_pl_symbol_says_where_pl_comes_from(sevx86, tmp_path):
    (tmp_path / "hi.S").write_text('start:\n    lea rsi, [rel m]\n    call pl_puts\nm: db "x", 0\n')
    done = sevx86("run", "hi.S")
    assert done.returncode == 2
    line = one_line_error(done, "run")
    assert "hi.S:3: undefined symbol 'pl_puts'" in line and '%include "payload.S"' in line


def test_i17_binary_garbage_as_source_reports_a_real_line(sevx86, tmp_path):
    (tmp_path / "garbage.S").write_bytes(b"start:\n    nop\n\xff\xfe\x00\x81garbage\n")
    done = sevx86("run", "garbage.S")
    assert done.returncode == 2
    line = one_line_error(done, "run")
    assert "garbage.S:3: not a text file" in line and "utf-8' codec" not in line


def test_i17_the_absolute_address_refusal_reads_clearly(sevx86, tmp_path):
    (tmp_path / "abs.S").write_text("bits 64\nnop\ncmp byte [0x200000], 1\n")
    done = sevx86("asm", "abs.S")
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()  # compiler style: file:line: message
    assert line.startswith("abs.S:3: ")
    assert "would touch the wrong address" not in line and "which is address" not in line
    assert "moves with the code" in line and "mov rdi, ADDRESS" in line


def test_i17_an_unknown_mnemonic_suggests_db(sevx86, tmp_path):
    (tmp_path / "vnni.S").write_text("start:\n    vpdpbusd xmm0, xmm1, xmm2\n")
    done = sevx86("run", "vnni.S")
    assert done.returncode == 2
    line = one_line_error(done, "run")
    assert "vnni.S:2:" in line and "with db" in line
