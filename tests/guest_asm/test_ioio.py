"""IN/OUT and INS/OUTS through the 64-bit handler."""

from __future__ import annotations

import pytest

from sevx86.arch.vmcb import Ioio, SegReg, decode_ioio, encode_ioio
from sevx86.testing import PortBus, ScriptedHost

from .conftest import assert_halted, assert_only_changed, nae_program, pattern

DEVICE = {0x80: 0xA1, 0x3F8: 0xB2C3, 0xCF8: 0x8000_F00D, 0x71: 0x5A5A_5A5A}


def _host() -> ScriptedHost:
    return ScriptedHost(ports=PortBus(DEVICE))


# (instruction, port, size, extra registers)
IN_CASES = [
    ("in al, 0x80", 0x80, 1, {}),
    ("in ax, 0x71", 0x71, 2, {}),
    ("in eax, 0x71", 0x71, 4, {}),
    ("in al, dx", 0x80, 1, {"rdx": 0xFFFF_0000_0000_0080}),
    ("in ax, dx", 0x3F8, 2, {"rdx": 0x3F8}),
    ("in eax, dx", 0xCF8, 4, {"rdx": 0xCF8}),
]


@pytest.mark.parametrize("insn, port, size, regs", IN_CASES, ids=[c[0] for c in IN_CASES])
def test_in_of_each_width(sev_guest, insn, port, size, regs):
    run = sev_guest(nae_program(f"    {insn}", regs), host=_host())
    assert_halted(run)
    value = DEVICE[port] & ((1 << (8 * size)) - 1)
    old = pattern("rax")
    # IN AL/AX replace only their bytes; IN EAX zero-extends (APM vol 3, IN).
    expected = value if size == 4 else (old & ~((1 << (8 * size)) - 1)) | value
    assert run.reg("rax") == expected
    assert_only_changed(run, regs, {"rax"})
    (exit_,) = run.exits
    # SEG is only meaningful for INS/OUTS (APM vol 2, 15.10.2): 0 here, as Linux.
    assert exit_.info1 == encode_ioio(port, size, True, seg=0)
    assert exit_.info2 == 0


OUT_CASES = [
    ("out 0x80, al", 0x80, 1, {}),
    ("out 0x71, ax", 0x71, 2, {}),
    ("out 0x71, eax", 0x71, 4, {}),
    ("out dx, al", 0x3F8, 1, {"rdx": 0x3F8}),
    ("out dx, ax", 0xCFC, 2, {"rdx": 0xCFC}),
    ("out dx, eax", 0xCFC, 4, {"rdx": 0xCFC}),
]


@pytest.mark.parametrize("insn, port, size, regs", OUT_CASES, ids=[c[0] for c in OUT_CASES])
def test_out_of_each_width(sev_guest, insn, port, size, regs):
    host = _host()
    run = sev_guest(nae_program(f"    {insn}", regs), host=host)
    assert_halted(run)
    mask = (1 << (8 * size)) - 1
    assert host.ports.log == [("out", port, size, pattern("rax") & mask)]
    # Only the operand's bytes are exposed to the host (RAX is otherwise private).
    assert run.exits[0].inputs["rax"] == pattern("rax") & mask
    assert run.exits[0].info1 == encode_ioio(port, size, False, seg=0)
    assert_only_changed(run, regs)


SERIAL = 0x3F8


def test_rep_outsb_of_5000_bytes_arrives_byte_exact(sev_guest):
    payload = bytes((i * 7 + (i >> 8)) & 0xFF for i in range(5000))
    data = "align 16\nbuffer:\n" + "".join(
        f"    db {', '.join(str(b) for b in payload[i : i + 32])}\n" for i in range(0, 5000, 32)
    )
    regs = {"rdx": SERIAL, "rcx": 5000, "rsi": 0}
    setup = ""
    body = "    mov rsi, buffer\n    rep outsb"
    host = _host()
    run = sev_guest(nae_program(body, regs, setup=setup, data=data), host=host)
    assert_halted(run)
    assert host.ports.out_bytes(SERIAL) == payload
    # 5000 bytes through a 0x7F0-byte buffer: three exits.
    assert [e.info2 for e in run.exits] == [0x7F0, 0x7F0, 5000 - 2 * 0x7F0]
    for e in run.exits:
        info = decode_ioio(e.info1)
        assert (info.string, info.rep, info.is_in, info.seg) == (True, True, False, SegReg.DS)
    assert b"".join(e.scratch for e in run.exits) == payload
    buffer = run.addr("buffer")
    assert run.reg("rsi") == buffer + 5000
    assert run.reg("rcx") == 0
    assert run.vc_count == 1  # one #VC; the handler loops over the chunks
    assert_only_changed(run, regs, {"rsi", "rcx"})


def test_rep_insb_fills_guest_memory(sev_guest):
    count = 3000
    stream = iter(range(10**6))
    ports = PortBus(lambda port, size: next(stream) & 0xFF)
    regs = {"rdx": 0x60, "rcx": count}
    body = "    mov rdi, target\n    rep insb"
    data = f"align 16\ntarget: times {count + 16} db 0xEE"
    run = sev_guest(nae_program(body, regs, data=data), host=ScriptedHost(ports=ports))
    assert_halted(run)
    assert run.read("target", count) == bytes(i & 0xFF for i in range(count))
    assert run.read(run.addr("target") + count, 16) == b"\xee" * 16  # not one byte more
    assert run.reg("rdi") == run.addr("target") + count
    assert run.reg("rcx") == 0
    assert [decode_ioio(e.info1).seg for e in run.exits] == [SegReg.ES, SegReg.ES]
    assert_only_changed(run, regs, {"rdi", "rcx"})


def test_rep_insw_and_outsd_move_whole_elements(sev_guest):
    words = iter(range(0x1000, 0x2000))
    ports = PortBus(lambda port, size: next(words))
    host = ScriptedHost(ports=ports)
    body = """
    mov rdi, words
    mov ecx, 5
    mov edx, 0x1F0
    rep insw
    mov rsi, dwords
    mov ecx, 3
    mov edx, 0xCFC
    rep outsd
"""
    data = """
align 8
words: times 8 dw 0
dwords: dd 0x11223344, 0x55667788, 0x99AABBCC, 0xDDEEFF00
"""
    run = sev_guest(nae_program(body, data=data), host=host)
    assert_halted(run)
    assert [run.u16("words", i) for i in range(6)] == [0x1000, 0x1001, 0x1002, 0x1003, 0x1004, 0]
    assert [v for d, p, s, v in ports.log if d == "out"] == [0x11223344, 0x55667788, 0x99AABBCC]
    assert run.exits[0].info1 == encode_ioio(0x1F0, 2, True, string=True, rep=True, seg=SegReg.ES)
    assert run.exits[1].info1 == encode_ioio(0xCFC, 4, False, string=True, rep=True)


def test_outsb_without_rep_moves_one_byte_and_keeps_rcx(sev_guest):
    host = _host()
    regs = {"rdx": SERIAL}
    body = "    mov rsi, text\n    outsb\n    outsb"
    run = sev_guest(nae_program(body, regs, data="text: db 'OK!'"), host=host)
    assert_halted(run)
    assert host.ports.out_bytes(SERIAL) == b"OK"
    assert run.reg("rsi") == run.addr("text") + 2
    assert not decode_ioio(run.exits[0].info1).rep
    assert_only_changed(run, regs, {"rsi"})


def test_rep_outsb_with_df_set_walks_down(sev_guest):
    host = _host()
    regs = {"rdx": SERIAL, "rcx": 4}
    body = "    mov rsi, text + 3\n    std\n    rep outsb\n    cld"
    run = sev_guest(nae_program(body, regs, data="text: db 'abcd'"), host=host)
    assert_halted(run)
    assert host.ports.out_bytes(SERIAL) == b"dcba"
    assert run.reg("rsi") == run.addr("text") - 1
    assert_only_changed(run, regs, {"rsi", "rcx"})


def test_rep_outsb_with_32_bit_addressing_counts_with_ecx(sev_guest):
    host = _host()
    # RCX's upper half is ignored with a 67 prefix; ECX counts and is zeroed.
    regs = {"rdx": SERIAL, "rcx": 0xAAAA_0000_0000_0003}
    body = "    mov esi, text\n    a32 rep outsb"
    run = sev_guest(
        nae_program(body.replace("a32 ", "db 0x67\n   "), regs, data="text: db 'xyz'"), host=host
    )
    assert_halted(run)
    assert host.ports.out_bytes(SERIAL) == b"xyz"
    assert run.exits[0].info1 & Ioio.A32
    assert run.reg("rcx") & 0xFFFF_FFFF == 0
