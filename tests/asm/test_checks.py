"""keystone's silent slips are refused, with the user's file:line."""

from __future__ import annotations

import pytest

from sevx86.asm import AsmError, assemble


@pytest.mark.parametrize(
    "source, message",
    [
        ("mov eax, 0x100000000", "does not fit"),
        ("push 0x80000000", "does not fit"),  # keystone: a 16-bit 'push 0'
        ("mov al, 0x1ff", "does not fit"),
        ("bits 16\nmov ax, 0x12345", "does not fit"),
        ("bits 16\nmov ax, [0x12345]", "16-bit address"),
        ("jmp 0x100001000", "out of reach"),
        ("bits 32\njmp 0x100001000", "do not decode"),
        ("mov rbx, [rip + rax]", "registers of the memory operand"),
        ("db 256", "does not fit"),
        ("dw 0x10000", "does not fit"),
        ("dd -0x80000001", "does not fit"),
        ("add rax, 0x80000000", "keystone cannot assemble"),
    ],
)
def test_silent_slip_refused(source, message):
    with pytest.raises(AsmError, match=message) as info:
        assemble(source, base=0x1000, name="x.S")
    assert info.value.file == "x.S"
    assert info.value.line == source.count("\n") + 1


def test_nasm_size_keyword_without_ptr_is_assembled():
    # keystone emits nothing at all for 'dword [rax]' without 'ptr'.
    assert assemble("mov dword [rax], 1").code == bytes.fromhex("c70001000000")
    assert assemble("mov qword [rax], -1").code == bytes.fromhex("48c700ffffffff")
