"""The keystone RIP-relative trap is caught, and the right forms pass.

The trap: docs/design.md, "Assembling guest code".
"""

from __future__ import annotations

import pytest

from sevx86.asm import AsmError, assemble
from tests.asm.conftest import disasm, run


@pytest.mark.parametrize(
    "line",
    [
        "mov rbx, [0x200000]",
        "mov rbx, qword [0x200000]",
        "inc dword ptr [0x1000]",
        "push qword [0x1000]",  # keystone happens to compute this one, still refused
        "cmp byte [0x200000], 1",
        "mov rbx, gs:[0x10]",
        "mov rbx, [gs:0x10]",
        "lea rax, [0x1000]",
    ],
)
def test_absolute_operand_encoded_rip_relative_is_refused(line):
    source = f"bits 64\nnop\n{line}\n"
    with pytest.raises(AsmError) as info:
        assemble(source, name="guest.S")
    err = info.value
    assert (err.file, err.line) == ("guest.S", 3)
    assert str(err).startswith("guest.S:3: keystone encoded the absolute operand")
    assert "RIP-relative" in err.message
    assert "mov rdi, ADDRESS, then [rdi]" in err.message and "[rip + label]" in err.message


@pytest.mark.parametrize(
    "line, expected",
    [
        ("mov rax, [0x200000]", "movabs rax, qword ptr [0x200000]"),
        ("mov [0x200000], rax", "movabs qword ptr [0x200000], rax"),
        ("mov al, [0x1000]", "movabs al, byte ptr [0x1000]"),
        ("mov [0x1000], eax", "movabs dword ptr [0x1000], eax"),
        ("mov rax, gs:[0x10]", "movabs rax, qword ptr gs:[0x10]"),
        ("mov rbx, [rip + 0x10]", "mov rbx, qword ptr [rip + 0x10]"),
        ("lea rbx, [rip - 8]", "lea rbx, [rip - 8]"),
        ("mov rbx, [0xFFFFFFFF80000000]", "mov rbx, qword ptr [0xffffffff80000000]"),
        ("mov rbx, [rdi]", "mov rbx, qword ptr [rdi]"),
        ("mov rbx, [rdi + 0x200000]", "mov rbx, qword ptr [rdi + 0x200000]"),
    ],
)
def test_moffs_explicit_rip_and_based_forms_pass(line, expected):
    program = assemble(line, base=0x1000)
    assert disasm(program.code, 0x1000, 64) == [expected]


def test_label_operands_reach_the_label_in_unicorn(u64):
    program = assemble(
        """
start:
    mov rbx, [value]          ; a label: encoded RIP-relative to the label
    mov rcx, [rip + value]    ; explicit rip + label: the label's address
    mov rdx, [rel value]      ; NASM spelling
    mov rsi, [value + 8]
    mov [copy], rbx
    mov [rip + copy + 8], rcx
    mov [rel copy + 16], rdx
    mov [copy + 24], rsi
done:
    hlt
value: dq 0x1111111122222222, 0x3333333344444444
copy:  dq 0, 0, 0, 0
""",
        base=0x4000,
    )
    uc = run(program, "start", "done")
    copy = program.symbol("copy")
    assert [u64(uc, copy + 8 * i) for i in range(4)] == [
        0x1111111122222222,
        0x1111111122222222,
        0x1111111122222222,
        0x3333333344444444,
    ]


def test_label_operand_disassembles_to_the_label_address():
    program = assemble("mov rbx, [target]\ntarget: dq 0", base=0x200000)
    (text,) = disasm(program.code[:7], 0x200000, 64)
    assert text == "mov rbx, qword ptr [rip]"  # next instruction == target
    assert program.symbol("target") == 0x200007


def test_rip_with_a_register_is_refused_not_silently_dropped():
    with pytest.raises(AsmError, match="registers of the memory operand"):
        assemble("mov rbx, [rip + rax]")


def test_32_bit_absolute_operands_are_plain_absolute():
    program = assemble("bits 32\nmov ebx, [0x200000]\nmov ecx, [label]\nlabel:", base=0x1000)
    assert disasm(program.code, 0x1000, 32) == [
        "mov ebx, dword ptr [0x200000]",
        "mov ecx, dword ptr [0x100c]",
    ]


def test_rel_of_an_equ_constant_reaches_that_address():
    # NASM reads [rel X] as "RIP-relative to the address X" (the equ MMIO_REG
    # of a device register); encoding X as a displacement from the next
    # instruction would silently touch next_rip + X instead.
    program = assemble(
        "MMIO_REG equ 0xE00020\nstart:\n    mov eax, [rel MMIO_REG]\n", base=0x100000
    )
    assert disasm(program.code, 0x100000, 64) == ["mov eax, dword ptr [rip + 0xd0001a]"]
