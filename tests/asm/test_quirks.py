"""Each keystone 0.9.2 quirk: keystone still gets it wrong, and we get it right.

The ``keystone_*`` tests pin keystone's own behaviour: if one fails after a
keystone upgrade, the matching entry of sevx86/asm/quirks.py may go.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from keystone import KS_ARCH_X86, KS_MODE_16, KS_MODE_32, KS_MODE_64, Ks, KsError

from sevx86.asm import AsmError, assemble
from sevx86.asm.quirks import QUIRKS
from tests.asm.conftest import disasm, run

_KS = {16: KS_MODE_16, 32: KS_MODE_32, 64: KS_MODE_64}


def keystone(bits: int, text: str) -> bytes | None:
    try:
        code, _ = Ks(KS_ARCH_X86, _KS[bits]).asm(text, 0x1000, as_bytes=True)
    except KsError:
        return None
    return code or b""


# (mode, source, what keystone makes of it (None = rejects), our bytes)
CASES = [
    (64, "vmgexit", None, "f30f01d9"),
    (32, "vmgexit", None, "f30f01d9"),
    (64, "vmrun", None, "0f01d8"),
    (64, "vmload", None, "0f01da"),
    (64, "vmsave", None, "0f01db"),
    (64, "skinit", None, "0f01de"),
    (64, "invlpga", None, "0f01df"),
    (64, "pvalidate", None, "f20f01ff"),
    (64, "rmpadjust", None, "f30f01fe"),
    (64, "psmash", None, "f30f01ff"),
    (64, "rmpupdate", None, "f20f01fe"),
    (64, "wbnoinvd", None, "f30f09"),
    (64, "serialize", None, "0f01e8"),
    (64, "rdpid rax", None, "f30fc7f8"),
    (64, "rdpid r9", None, "f3410fc7f9"),
    (32, "rdpid eax", None, "f30fc7f8"),
    (64, "lretq", None, "48cb"),
    (64, "sysretq", None, "480f07"),
    (32, "lret", None, "cb"),
    (16, "retf", "66cb", "cb"),
    (16, "retf 4", "66ca0400", "ca0400"),
    (16, "ret", "66c3", "c3"),
    (16, "ret 2", "66c20200", "c20200"),
    (16, "push 0x10", "666a10", "6a10"),
    (16, "push 0x1234", "666834120000", "683412"),
    (32, "pushf", "669c", "9c"),
    (32, "popf", "669d", "9d"),
    (64, "pushf", "669c", "9c"),
    (64, "popf", "669d", "9d"),
    (32, "push cs", "660e", "0e"),
    (32, "push ds", "661e", "1e"),
    (32, "pop ds", "661f", "1f"),
    (32, "push es", "6606", "06"),
    (32, "pop ss", "6617", "17"),
    (32, "iret", "66cf", "cf"),
    (32, "lgdt [eax]", "660f0110", "0f0110"),
    (32, "lidt [eax]", "660f0118", "0f0118"),
    (32, "sgdt [eax]", "660f0100", "0f0100"),
    (32, "sidt [eax]", "660f0108", "0f0108"),
    (32, "ljmp 0x8:0x1000", "66ea00100800", "ea001000000800"),
    (32, "jmp 0x8:0x1000", None, "ea001000000800"),
    (32, "call 0x8:0x1000", None, "9a001000000800"),
    (16, "jmp 0x8:0x1000", None, "ea00100800"),
    (16, "jmp dword 0x8:0x1000", "", "66ea001000000800"),
    (32, "jmp far [eax]", None, "ff28"),
    (32, "jmp fword [eax]", "", "ff28"),
    (64, "call far [rax]", None, "ff18"),
    (64, "rep movsd", None, "f3a5"),
    (32, "movsd", None, "a5"),
    (16, "movsd", None, "66a5"),
    (16, "call 0x1010", "66e80a000000", "e80d00"),
    (16, "jmp 0x2000", "66e9fa0f0000", "e9fd0f"),
    (16, "jz 0x2000", "660f84f90f0000", "0f84fc0f"),
    (64, "jmp short 0x1010", None, "eb0e"),
    (64, "jmp near 0x1010", None, "e90b000000"),
    (64, "mov dword [rax], 1", "", "c70001000000"),
    (64, "mov rax, [fs:0x28]", None, "6448a12800000000000000"),
    (64, "mov eax, 7 % 3", None, "b801000000"),
]


@pytest.mark.parametrize("bits, source, by_keystone, ours", CASES)
def test_quirk(bits, source, by_keystone, ours):
    raw = keystone(bits, source)
    assert raw == (None if by_keystone is None else bytes.fromhex(by_keystone))
    program = assemble(f"bits {bits}\n{source}", base=0x1000)
    assert program.code.hex() == ours


@pytest.mark.parametrize(
    "bits, source, advice",
    [
        (64, "iret", "iretq"),
        (64, "sysret", "sysretq"),
        (64, "jmp 0x8:0x1000", "no far jump"),
        (64, "rdpid eax", "64-bit register"),
        (16, "jmp short 0x1100", "out of range"),
    ],
)
def test_ambiguous_or_impossible_forms_are_refused_with_advice(bits, source, advice):
    with pytest.raises(AsmError, match=advice):
        assemble(f"bits {bits}\n{source}", base=0x1000)


def test_keystone_still_treats_64_bit_iret_as_16_bit():
    assert keystone(64, "iret") == bytes.fromhex("66cf")
    assert assemble("iretq").code == bytes.fromhex("48cf")


def test_sixteen_bit_call_and_ret_balance_the_stack_in_unicorn():
    # With keystone's 66-prefixed call (4-byte push) and plain ret this
    # would return to garbage.
    program = assemble(
        """
bits 16
org 0x7c00
start:
    xor ax, ax
    mov ss, ax
    mov sp, 0x7000
    call twice
    call twice
    mov [result], ax
    push 0x1234
    pop bx
    mov [pushed], bx
done:
    hlt
twice:
    add ax, 1
    add ax, ax
    ret
result: dw 0
pushed: dw 0
"""
    )
    uc = run(program, "start", "done", mode16=True)
    assert uc.mem_read(program.symbol("result"), 2) == (6).to_bytes(2, "little")
    assert uc.mem_read(program.symbol("pushed"), 2) == (0x1234).to_bytes(2, "little")


def test_o32_and_a32_prefixes():
    program = assemble("bits 16\no32 lgdt [0x10]\no32 retf\na32 mov ax, [eax]", base=0)
    assert disasm(program.code, 0, 16) == [
        "lgdt [0x10]",
        "retf",
        "mov ax, word ptr [eax]",
    ]
    assert program.code.startswith(b"\x66\x0f\x01")
    assert program.code[6:8] == b"\x66\xcb"


def test_every_quirk_names_what_keystone_does():
    for quirk in QUIRKS:
        assert quirk.mnemonics and quirk.modes and quirk.keystone_does


def test_implicit_rax_operand_is_accepted_only_where_it_exists():
    assert assemble("vmrun rax\nvmload rax\nskinit eax").code == bytes.fromhex("0f01d80f01da0f01de")
    with pytest.raises(AsmError, match="takes no operands"):
        assemble("vmgexit rax")
    with pytest.raises(AsmError, match="takes no operands"):
        assemble("pushf rax")


def test_keystone_symbol_resolver_is_still_wrong_so_we_never_use_it():
    # Run in a child process: closing a resolver-equipped engine changes
    # keystone for the whole process (decimal numbers become hex).
    script = """
import gc
from keystone import KS_ARCH_X86, KS_MODE_64, Ks

def resolver(name, value):
    value[0] = 0x3000
    return True

ks = Ks(KS_ARCH_X86, KS_MODE_64)
ks.sym_resolver = resolver
print(bytes(ks.asm("mov rax, lab+4", 0x1000)[0]).hex())   # addend dropped
print(bytes(ks.asm("jmp lab", 0x1000)[0]).hex())          # lands at 0x3004
del ks
gc.collect()
print(bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm("mov edi, 4198400")[0]).hex())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "48c7c000300000"  # mov rax, 0x3000 (not 0x3004)
    assert out[1] == "e9ff1f0000"  # jmp 0x3004 (not 0x3000)
    assert out[2] == "bf00841904"  # 4198400 read as 0x4198400


def test_assembling_leaves_keystone_reading_decimal():
    import gc

    assemble("jmp x\nx: mov eax, 10")
    gc.collect()
    assert keystone(64, "mov edi, 4198400") == bytes.fromhex("bf00104000")
