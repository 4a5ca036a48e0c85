"""bits 16 -> 32 -> 64 in one source: chunks in the right modes, labels across them."""

from __future__ import annotations

import pytest

from sevx86.asm import AsmError, assemble
from tests.asm.conftest import disasm, run

# Real-mode entry at 0x8000, protected mode, PAE paging with one 1 GiB page,
# long mode; 64-bit code stores results through RIP-relative labels.
BOOT = """
bits 16
org 0x8000
entry16:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdt_desc]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp 0x08:entry32
bits 32
entry32:
    mov ax, 0x18
    mov ds, ax
    mov ss, ax
    mov esp, stack_top
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov eax, pml4
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    jmp 0x10:entry64
bits 64
entry64:
    mov rax, [rel magic]
    mov [result], rax
    call twice
    mov [rip + doubled], rax
    lea rbx, [entry16]
    mov [where16], rbx
done:
    hlt
twice:
    add rax, rax
    ret
    align 8, 0
magic:   dq 0x1122334455667788
result:  dq 0
doubled: dq 0
where16: dq 0
gdt:
    dq 0
    dq 0x00CF9A000000FFFF   ; 0x08: 32-bit code
    dq 0x00AF9A000000FFFF   ; 0x10: 64-bit code
    dq 0x00CF92000000FFFF   ; 0x18: data
gdt_desc:
    dw gdt_desc - gdt - 1
    dd gdt
    align 4096, 0
pml4: dq pdpt + 3
    times 511 dq 0
pdpt: dq 0x83               ; 1 GiB page at 0: present, writable, large
    times 511 dq 0
    resq 256
stack_top:
"""


def test_real_to_long_mode_runs_in_unicorn(u64):
    program = assemble(BOOT)
    uc = run(program, "entry16", "done", mode16=True)
    assert u64(uc, program.symbol("result")) == 0x1122334455667788
    assert u64(uc, program.symbol("doubled")) == 0x1122334455667788 * 2 % (1 << 64)
    assert u64(uc, program.symbol("where16")) == 0x8000


def test_each_chunk_disassembles_in_its_own_mode():
    program = assemble(BOOT)
    by_text = {c.text: c for c in program.chunks}

    def listing(text: str, bits: int) -> str:
        chunk = by_text[text]
        (only,) = disasm(chunk.data, chunk.address, bits)
        return only

    assert listing("jmp 0x08:entry32", 16) == f"ljmp 8:{program.symbol('entry32'):#x}"
    assert listing("mov eax, pml4", 32) == f"mov eax, {program.symbol('pml4'):#x}"
    assert listing("jmp 0x10:entry64", 32) == f"ljmp 0x10:{program.symbol('entry64'):#x}"
    assert listing("lgdt [gdt_desc]", 16) == f"lgdt [{program.symbol('gdt_desc'):#x}]"
    # The 64-bit label operand became RIP-relative and reaches the label.
    chunk = by_text["mov rax, [rel magic]"]
    assert disasm(chunk.data, chunk.address, 64) == [
        f"mov rax, qword ptr [rip + {program.symbol('magic') - chunk.end:#x}]"
    ]


def test_bracketed_bits_and_use_forms():
    program = assemble("[bits 32]\nmov eax, 1\nuse16\nmov ax, 1\n[BITS 64]\nmov rax, 1")
    assert program.code == bytes.fromhex("b801000000b8010048c7c001000000")


def test_backward_and_forward_labels_across_modes():
    program = assemble(
        "bits 64\nback: nop\nbits 32\ncall fwd\njmp back\nbits 16\nfwd: jmp back\n",
        base=0x1000,
    )
    assert disasm(program.code[1:6], 0x1001, 32) == ["call 0x1008"]
    assert disasm(program.code[6:8], 0x1006, 32) == ["jmp 0x1000"]
    assert disasm(program.code[8:], 0x1008, 16) == ["jmp 0x1000"]
    assert program.symbols == {"back": 0x1000, "fwd": 0x1008}


def test_reset_vector_flash_image_ends_at_4gib():
    program = assemble(
        """
bits 16
org 0xFFFFF000
start:  cli
        hlt
        pad_to 0xFFFFFFF0
reset:  jmp start
        pad_to 0x100000000
"""
    )
    assert program.base == 0xFFFFF000
    assert program.end == 1 << 32
    assert len(program.code) == 0x1000
    assert program.symbol("reset") == 0xFFFFFFF0
    # Real mode at CS base 0xFFFF0000: the rel16 wraps inside the segment.
    code = program.code[0xFF0:0xFF3]
    assert disasm(code, 0xFFF0, 16) == ["jmp 0xf000"]
    assert program.code[0xFF3:] == bytes(13)


def test_long_jump_grows_to_near_and_layout_settles():
    source = "top: jmp bottom\ntimes 300 nop\nbottom: jmp top\n"
    program = assemble(source)
    assert program.code[:1] == b"\xe9"  # rel32: 300 bytes is out of rel8 reach
    assert program.symbol("bottom") == 5 + 300
    assert disasm(program.code[-5:], 305, 64) == ["jmp 0"]


def test_org_later_pads_with_zeros_and_refuses_going_back():
    program = assemble("nop\norg 0x10\nnop", base=0)
    assert program.code == b"\x90" + bytes(15) + b"\x90"
    with pytest.raises(AsmError, match="already at 0x2") as info:
        assemble("nop\nnop\norg 0x1")
    assert info.value.line == 3
