"""MMIO through #VC(NPF): the handler's MOV decoder, every width and addressing form.

The guest maps a 2 MiB device window above its RAM with C=0 (pt_map_2m, as
ioremap would) and accesses it; the CPU finds no RAM at that guest-physical
address and raises #VC with error code 0x400; the handler decodes the
instruction, checks the mapping, and asks the host for an MMIO read or
write. The host's device (MmioDevice) holds known bytes and logs accesses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sevx86.arch.exits import SwExit
from sevx86.asm.guest_abi import VcReason
from sevx86.testing import MmioDevice, ScriptedHost

from .conftest import (
    assert_halted,
    assert_only_changed,
    assert_terminated,
    nae_program,
    pattern,
)

MMIO = 0x00E0_0000  # above the 8 MiB of RAM, below 1 GiB (the harness' PD covers it)
PRIVATE_MMIO = 0x0100_0000

DEVICE = bytearray((i * 0x9D + 0x3B) & 0xFF for i in range(0x200))
DEVICE[0x80:0x88] = bytes.fromhex("80ff0190fe7f8000")  # sign bits for MOVSX

MAP_WINDOW = f"""
    mov rdi, {MMIO:#x}
    mov rsi, rdi
    mov edx, 0x18               ; PCD | PWT: uncached, C=0 (shared)
    call pt_map_2m
    jc map_failed
"""
DATA = f"""
map_failed:
    ud2
MMIO_REG equ {MMIO + 0x20:#x}
MMIO_OUT equ {MMIO + 0x70:#x}
"""


def _le(offset: int, size: int) -> int:
    return int.from_bytes(DEVICE[offset : offset + size], "little")


def _sx(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) & 1 else value


def _merge(old: int, value: int, size: int, shift: int = 0) -> int:
    mask = ((1 << (8 * size)) - 1) << shift
    return (old & ~mask) | ((value << shift) & mask)


U64 = (1 << 64) - 1


@dataclass
class Read:
    insn: str
    offset: int  # into the device
    size: int  # bytes the host must be asked for
    dest: str
    result: str  # how the value lands in dest (see _expected)
    regs: dict[str, int] = field(default_factory=dict)


def _expected(case: Read, old: int) -> int:
    """The destination after the load, as the CPU would leave it (APM vol 3:
    32-bit results zero-extend, 8/16-bit ones keep the rest)."""
    raw = _le(case.offset, case.size)
    bits = 8 * case.size
    signed = _sx(raw, bits) & U64
    return {
        "q": raw,  # MOV r64 / r32, or MOVZX into 32/64 bits
        "w": _merge(old, raw, 2),  # MOV r16, MOVZX r16
        "b": _merge(old, raw, 1),  # MOV r8 low byte
        "h": _merge(old, raw, 1, 8),  # MOV AH/CH/DH/BH
        "sx64": signed,  # MOVSX r64
        "sx32": signed & 0xFFFF_FFFF,  # MOVSX r32 zero-extends above
        "sx16": _merge(old, signed, 2),  # MOVSX r16
    }[case.result]


R = Read
READS = [
    R("mov eax, [rdi]", 0, 4, "rax", "q", {"rdi": MMIO}),
    R("mov rax, [rdi + 8]", 8, 8, "rax", "q", {"rdi": MMIO}),
    R("mov ax, [rdi + 0x10]", 0x10, 2, "rax", "w", {"rdi": MMIO}),
    R("mov al, [rdi + 0x11]", 0x11, 1, "rax", "b", {"rdi": MMIO}),
    R("mov ah, [rdi + 0x12]", 0x12, 1, "rax", "h", {"rdi": MMIO}),
    R("mov bh, [rsi]", 0x13, 1, "rbx", "h", {"rsi": MMIO + 0x13}),
    R("mov sil, [rdi + 3]", 3, 1, "rsi", "b", {"rdi": MMIO}),  # REX: SIL, not DH
    R("mov r9d, [rdi + rcx*4 + 0x10]", 0x1C, 4, "r9", "q", {"rdi": MMIO, "rcx": 3}),
    R("mov r12, [r13 + r14*8 - 8]", 0x48, 8, "r12", "q", {"r13": MMIO + 0x40, "r14": 2}),
    R("mov r15w, [rbp + 0x100]", 0x100, 2, "r15", "w", {"rbp": MMIO}),
    R("mov ebx, [r12]", 0x24, 4, "rbx", "q", {"r12": MMIO + 0x24}),  # needs a SIB
    R("mov ecx, [r13]", 0x28, 4, "rcx", "q", {"r13": MMIO + 0x28}),  # needs disp8 0
    R("mov eax, [rcx*2 + 0xE00000]", 0x20, 4, "rax", "q", {"rcx": 0x10}),  # SIB, no base
    R("mov edx, [rel MMIO_REG]", 0x20, 4, "rdx", "q"),  # RIP-relative
    R("mov eax, [edi + 4]", 4, 4, "rax", "q", {"rdi": 0xFFFF_FFFF_0000_0000 | MMIO}),  # 67
    R("mov eax, [0xE00040]", 0x40, 4, "rax", "q"),  # A1 moffs64
    R("mov al, [0xE00041]", 0x41, 1, "rax", "b"),  # A0
    R("mov rax, [0xE00048]", 0x48, 8, "rax", "q"),  # REX.W A1
    R("movzx eax, byte [rsi]", 0x80, 1, "rax", "q", {"rsi": MMIO + 0x80}),
    R("movzx rcx, word [rdi + 0x30]", 0x30, 2, "rcx", "q", {"rdi": MMIO}),
    R("movzx dx, byte [rdi + 0x81]", 0x81, 1, "rdx", "w", {"rdi": MMIO}),
    R("movsx rax, word [rdi + 0x80]", 0x80, 2, "rax", "sx64", {"rdi": MMIO}),
    R("movsx r10d, byte [rdi + 0x83]", 0x83, 1, "r10", "sx32", {"rdi": MMIO}),
    R("movsx r11w, byte [rdi + 0x84]", 0x84, 1, "r11", "sx16", {"rdi": MMIO}),
    R("movsx ebx, word [rdi + 0x84]", 0x84, 2, "rbx", "sx32", {"rdi": MMIO}),
    R("movsx rdx, byte [rdi + 0x85]", 0x85, 1, "rdx", "sx64", {"rdi": MMIO}),
]


@pytest.mark.parametrize("case", READS, ids=[c.insn for c in READS])
def test_mmio_read(sev_guest, case):
    device = MmioDevice(MMIO, 0x1000, bytes(DEVICE))
    run = sev_guest(
        nae_program(f"    {case.insn}", case.regs, setup=MAP_WINDOW, data=DATA),
        host=ScriptedHost(mmio=[device]),
    )
    assert_halted(run)
    data = bytes(DEVICE[case.offset : case.offset + case.size])
    assert device.log == [("read", MMIO + case.offset, data)]
    (exit_,) = run.exits
    assert exit_.code == SwExit.MMIO_READ
    assert (exit_.info1, exit_.info2) == (MMIO + case.offset, case.size)
    assert exit_.inputs["sw_scratch"] == run.ghcb_gpa + 0x800
    old = case.regs.get(case.dest, pattern(case.dest))
    assert run.reg(case.dest) == _expected(case, old), hex(run.reg(case.dest))
    assert_only_changed(run, case.regs, {case.dest})


@dataclass
class Write:
    insn: str
    offset: int
    data: bytes
    regs: dict[str, int] = field(default_factory=dict)


P = pattern


def _b(value: int, size: int) -> bytes:
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


WRITES = [
    Write("mov [rdi], eax", 0, _b(P("rax"), 4), {"rdi": MMIO}),
    Write("mov [rdi + 8], rax", 8, _b(P("rax"), 8), {"rdi": MMIO}),
    Write("mov [rdi + rcx*4 + 0x10], bx", 0x1C, _b(P("rbx"), 2), {"rdi": MMIO, "rcx": 3}),
    Write("mov [rdi + 1], al", 1, _b(P("rax"), 1), {"rdi": MMIO}),
    Write("mov [rdi + 2], ah", 2, _b(P("rax") >> 8, 1), {"rdi": MMIO}),
    Write("mov [rdi + 3], dil", 3, _b(MMIO, 1), {"rdi": MMIO}),
    Write("mov [rdi + 0x60], r14b", 0x60, _b(P("r14"), 1), {"rdi": MMIO}),
    Write("mov [r8 + r9*2 + 0x20], r15", 0x30, _b(P("r15"), 8), {"r8": MMIO, "r9": 8}),
    Write("mov [rsp + 0x40], ecx", 0x40, _b(P("rcx"), 4)),  # base RSP: set below
    Write("mov byte [rdi + 5], 0x7F", 5, b"\x7f", {"rdi": MMIO}),
    Write("mov word [rdi + 6], 0x1234", 6, _b(0x1234, 2), {"rdi": MMIO}),
    Write("mov dword [rdi + 8], 0xDEADBEEF", 8, _b(0xDEADBEEF, 4), {"rdi": MMIO}),
    Write("mov qword [rdi], 0x12345678", 0, _b(0x12345678, 8), {"rdi": MMIO}),
    Write("mov qword [rdi + 0x18], -2", 0x18, _b(-2, 8), {"rdi": MMIO}),
    Write("mov [rel MMIO_OUT], ecx", 0x70, _b(P("rcx"), 4)),
    Write("mov dword [rel MMIO_OUT], 0x55AA", 0x70, _b(0x55AA, 4)),  # RIP-rel + imm after it
    Write("mov word [rel MMIO_OUT], 0x66", 0x70, _b(0x66, 2)),
    Write("mov [0xE00050], rax", 0x50, _b(P("rax"), 8)),  # A3 moffs64
    Write("mov [0xE00058], al", 0x58, _b(P("rax"), 1)),  # A2
    Write("mov [edi + 0x10], edx", 0x10, _b(P("rdx"), 4), {"rdi": 0xFFFF_FFFF_0000_0000 | MMIO}),
]


@pytest.mark.parametrize("case", WRITES, ids=[c.insn for c in WRITES])
def test_mmio_write(sev_guest, case):
    device = MmioDevice(MMIO, 0x1000)
    body = f"    {case.insn}"
    if "rsp" in case.insn:
        # Point RSP into the window for one store, then back: RSP as a base
        # register comes from the #VC frame, not from the handler's stack.
        body = f"    mov r11, rsp\n    mov rsp, {MMIO:#x}\n{body}\n    mov rsp, r11"
    run = sev_guest(
        nae_program(body, case.regs, setup=MAP_WINDOW, data=DATA),
        host=ScriptedHost(mmio=[device]),
        ist={29: 1},  # the #VC frame cannot go on an RSP that points at MMIO
    )
    assert_halted(run)
    assert device.log == [("write", MMIO + case.offset, case.data)]
    (exit_,) = run.exits
    assert exit_.code == SwExit.MMIO_WRITE
    assert (exit_.info1, exit_.info2) == (MMIO + case.offset, len(case.data))
    assert exit_.scratch == case.data
    assert_only_changed(run, case.regs, {"r11"} if "rsp" in case.insn else ())


def test_mmio_read_modify_write_sequence(sev_guest):
    device = MmioDevice(MMIO, 0x1000, bytes(DEVICE))
    body = """
    mov eax, [rdi + 0x10]
    or eax, 0x80000001
    mov [rdi + 0x10], eax
    mov ebx, [rdi + 0x10]
"""
    run = sev_guest(
        nae_program(body, {"rdi": MMIO}, setup=MAP_WINDOW, data=DATA),
        host=ScriptedHost(mmio=[device]),
    )
    assert_halted(run)
    value = _le(0x10, 4) | 0x80000001
    assert run.reg("rbx") == run.reg("rax") == value
    assert [kind for kind, _, _ in device.log] == ["read", "write", "read"]
    assert run.vc_count == 3


def test_mmio_through_a_private_mapping_is_refused(sev_guest):
    # A C=1 mapping of a GPA without RAM: emulating the access would give
    # the host data meant to stay encrypted (or let it feed the guest
    # "private" data). The handler terminates instead of asking the host.
    setup = f"""
    mov rdi, {PRIVATE_MMIO:#x}
    mov rsi, rdi
    mov rdx, [vc_cbit_mask]      ; C=1
    call pt_map_2m
    jc map_failed
"""
    device = MmioDevice(PRIVATE_MMIO, 0x1000, bytes(DEVICE))
    run = sev_guest(
        nae_program("    mov eax, [rdi]", {"rdi": PRIVATE_MMIO}, setup=setup, data=DATA),
        host=ScriptedHost(mmio=[device]),
    )
    assert_terminated(run, VcReason.MMIO_PRIVATE)
    assert device.log == []
    assert [e.name for e in run.exits] == ["MSR:TERM_REQ"]


def test_mmio_write_through_a_private_mapping_leaks_nothing(sev_guest):
    setup = f"""
    mov rdi, {PRIVATE_MMIO:#x}
    mov rsi, rdi
    mov rdx, [vc_cbit_mask]
    call pt_map_2m
"""
    secret = 0x5EC2E7_5EC2E7
    device = MmioDevice(PRIVATE_MMIO, 0x1000)
    run = sev_guest(
        nae_program(
            "    mov [rdi], rax", {"rdi": PRIVATE_MMIO, "rax": secret}, setup=setup, data=DATA
        ),
        host=ScriptedHost(mmio=[device]),
    )
    assert_terminated(run, VcReason.MMIO_PRIVATE)
    ghcb = run.machine.host_view().memory.read(run.ghcb_gpa, 0x1000)
    assert secret.to_bytes(8, "little")[:6] not in ghcb


def test_register_to_register_move_on_an_npf_is_a_decode_failure(sev_guest):
    # #VC(NPF) on an instruction that has no memory operand can only come
    # from an injected #VC: the decoder must refuse it, not guess.
    from sevx86.arch.exits import SvmExit
    from sevx86.arch.vmcb import EventType, encode_event

    class Injector(ScriptedHost):
        def run(self, host, *, timeout=20.0, max_exits=100_000):
            vcpu = host.vcpus[0]
            first = vcpu.vmrun(timeout=timeout)  # the HLT in front of the MOV
            assert first.name == "HLT"
            event = encode_event(29, EventType.EXCEPTION, SvmExit.NPF)
            vcpu.vmcb["event_inj"] = event & 0xFFFF_FFFF
            vcpu.vmcb["event_inj_err"] = event >> 32
            return super().run(host, timeout=timeout, max_exits=max_exits)

    run = sev_guest(nae_program("    hlt\n    mov eax, ebx"), host=Injector())
    assert_terminated(run, VcReason.DECODE)


def test_mmio_high_above_ram_through_a_1g_mapping(sev_guest):
    # Device windows near 4 GiB (the hypervisor's MMIO test device sits at
    # 0xFEB00000) lie outside the harness' page directory: map the whole GiB.
    high = 0xFEB0_0000
    setup = """
    mov edi, 0xC0000000
    mov rsi, rdi
    xor edx, edx
    call pt_map_1g
    jc map_failed
"""
    device = MmioDevice(high, 0x1000, bytes(DEVICE))
    regs = {"rsi": high + 0x10, "rbx": 0x0102_0304}
    run = sev_guest(
        nae_program("    mov rax, [rsi]\n    mov [rsi + 8], ebx", regs, setup=setup, data=DATA),
        host=ScriptedHost(mmio=[device]),
    )
    assert_halted(run)
    assert run.reg("rax") == _le(0x10, 8)
    assert device.log[1] == ("write", high + 0x18, bytes.fromhex("04030201"))
    assert_only_changed(run, regs, {"rax"})
