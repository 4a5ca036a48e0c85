"""Data directives, equ, times, local labels, the Program object and its errors."""

from __future__ import annotations

import pytest

from sevx86.asm import AsmError, UnknownSymbolError, assemble


def test_data_directives_strings_and_widths():
    program = assemble("db 'AB', 0, -1\ndw 'A', 0x1234\ndd 1\ndq -1\ndb `a\\n\\x01`")
    assert program.code == (
        b"AB\x00\xff" + b"A\x00\x34\x12" + b"\x01\x00\x00\x00" + b"\xff" * 8 + b"a\n\x01"
    )


def test_equ_times_resb_align_pad_dollar():
    program = assemble(
        """
SIZE equ 4
HALF: equ SIZE / 2
start:
    times SIZE db 0xAA
    resw HALF
    db $ - start
    align 8, 0
    times 3 nop
    pad_to start + 32, 0xCC
    dw $$
""",
        base=0x100,
    )
    assert program.code == (
        b"\xaa" * 4 + bytes(4) + b"\x08" + bytes(7) + b"\x90" * 3 + b"\xcc" * 13 + b"\x00\x01"
    )
    assert program.constants == {"SIZE": 4, "HALF": 2}
    assert program.symbol("SIZE") == 4


def test_nasm_boot_sector_idiom_with_times():
    program = assemble("bits 16\norg 0x7c00\njmp $\ntimes 510-($-$$) db 0\ndw 0xAA55")
    assert len(program.code) == 512 and program.code[-2:] == b"\x55\xaa"


def test_local_labels_belong_to_the_previous_label():
    program = assemble("a:\n.loop: jmp .loop\nb:\n.loop: jmp .loop\n jmp a.loop\n")
    assert program.symbols == {"a": 0, "a.loop": 0, "b": 2, "b.loop": 2}
    assert program.code == bytes.fromhex("ebfeebfeebfa")


def test_numbers_in_every_notation():
    program = assemble("db 0x10, 10h, 0b101, 0o17, 17, 'A', 0FFh")
    assert program.code == bytes([16, 16, 5, 15, 17, 65, 255])


def test_label_and_data_without_colon():
    program = assemble("msg db 'hi', 0\nlen equ $ - msg\nmov ecx, len")
    assert program.symbols == {"msg": 0}
    assert program.code[3:] == bytes.fromhex("b903000000")


def test_lines_map_addresses_back_to_source():
    program = assemble("nop\n\n  mov eax, 1 ; set\nd: dd 5", base=0x1000, name="g.S")
    assert str(program.lines.at(0x1000)) == "g.S:1"
    assert str(program.lines.at(0x1003)) == "g.S:3"
    assert str(program.lines.at(0x1006)) == "g.S:4"
    assert program.lines.at(0x100A) is None
    assert list(program.lines) == [
        range(0x1000, 0x1001),
        range(0x1001, 0x1006),
        range(0x1006, 0x100A),
    ]
    assert program.lines[range(0x1001, 0x1006)].line == 3


def test_listing_shows_address_bytes_and_source():
    listing = assemble("start: mov eax, 1", base=0x2000, name="l.S").listing()
    assert listing == "0x00002000  b8 01 00 00 00" + " " * 34 + "  l.S:1  start: mov eax, 1\n"


def test_symbol_lookup_error_is_clear():
    program = assemble("handler: nop")
    with pytest.raises(UnknownSymbolError, match="no symbol 'handlr'.*did you mean handler"):
        program.symbol("handlr")


def test_asm_error_string_and_fields():
    with pytest.raises(AsmError) as info:
        assemble("nop\n  jmp nowhere\n", name="p.S")
    err = info.value
    assert (err.file, err.line, err.message) == ("p.S", 2, "undefined symbol 'nowhere'")
    assert str(err) == "p.S:2: undefined symbol 'nowhere'"


@pytest.mark.parametrize(
    "source, message, line",
    [
        ("x: nop\nx: nop", "already defined at <string>:1", 2),
        ("rax: nop", "register or keyword", 1),
        ("bits 8", "bits must be 16, 32 or 64", 1),
        ("align 3", "power of two", 1),
        ("nop\nnop\npad_to 1", "already at 0x2", 3),
        ("section .data", "not supported", 1),
        ("times -1 nop", "negative count", 1),
        ("db", "expected 'db VALUE'", 1),
        ("db 1 +", "ends too early", 1),
        ("mov eax, 1 / 0", "division by zero", 1),
        ("bogus eax, 1", "keystone cannot assemble", 1),
        ("mov eax, [nowhere]", "undefined symbol 'nowhere'", 1),
    ],
)
def test_errors_have_the_right_line(source, message, line):
    with pytest.raises(AsmError, match=message) as info:
        assemble(source)
    assert info.value.line == line


def test_assemble_needs_a_source():
    with pytest.raises(ValueError):
        assemble()
    with pytest.raises(ValueError):
        assemble("nop", bits=8)


def test_process_wide_encoding_cache_gives_the_same_bytes_at_any_base():
    """Encodings remembered across programs must not leak an address."""
    from sevx86.asm import assembler

    source = 'start:\n    mov rax, start\n    cpuid\n    hlt\n%include "vc_handler64.S"\n'
    warm = assemble(source, base=0x100000)  # fills the process-wide cache
    shifted = assemble(source, base=0x234560)
    assembler._PORTABLE.clear()
    fresh = assemble(source, base=0x234560)
    assert shifted.code == fresh.code
    assert warm.code[:10] != shifted.code[:10]  # `mov rax, start` differs: a leak would show
