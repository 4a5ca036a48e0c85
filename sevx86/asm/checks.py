"""Checks on keystone's output: disassemble what it made and compare with
what the source asked for.

keystone 0.9.2 fails silently in several ways; each check here refuses one:

- the RIP-relative trap: in 64-bit code, a memory operand without a base or
  index register (``mov rbx, [0x200000]``, ``mov rbx, gs:[0x10]``) comes out
  as ``[rip + 0x200000]`` for most instructions;
- bytes that do not decode, or no bytes at all (``mov dword [rax], 1`` in
  NASM spelling; a branch whose displacement overflowed in 32-bit mode);
- a branch that lands somewhere else than its target (displacement overflow);
- an immediate truncated to the operand size (``mov eax, 0x100000000``,
  64-bit ``push 0x80000000`` becoming a 16-bit ``push 0``);
- a register dropped from a memory operand (``[rip + rax]`` -> ``[rip]``);
- in 16-bit code, a 0x67 prefix (32-bit addressing) the source did not ask
  for, which happens when a displacement does not fit in 16 bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capstone import (
    CS_ARCH_X86,
    CS_GRP_BRANCH_RELATIVE,
    CS_MODE_16,
    CS_MODE_32,
    CS_MODE_64,
    Cs,
    CsInsn,
)
from capstone import x86 as cs_x86

_CS_MODES = {16: CS_MODE_16, 32: CS_MODE_32, 64: CS_MODE_64}
_DISASSEMBLERS: dict[int, Cs] = {}


class CheckError(ValueError):
    """keystone's bytes do not mean what the source said (message is advice)."""


@dataclass
class Expectations:
    """What the source line asked for, worked out before calling keystone."""

    rip_allowed: bool = False  # the keystone text says rip (user wrote it, or a label operand)
    rip_targets: list[int] = field(default_factory=list)  # addresses rip operands must reach
    absolute_operands: list[str] = field(default_factory=list)  # user's [x] text, for messages
    absolute_addresses: list[int] = field(default_factory=list)  # values of [number] operands
    branch_target: int | None = None
    immediates: list[int] = field(default_factory=list)
    memory_registers: set[str] | None = None
    address_size_prefix_ok: bool = True


def disassembler(bits: int) -> Cs:
    cs = _DISASSEMBLERS.get(bits)
    if cs is None:
        cs = Cs(CS_ARCH_X86, _CS_MODES[bits])
        cs.detail = True
        _DISASSEMBLERS[bits] = cs
    return cs


def decode(code: bytes, address: int, bits: int) -> list[CsInsn]:
    """All instructions of ``code``; CheckError unless they cover it exactly."""
    if not code:
        raise CheckError("keystone produced no bytes for this line (it drops some forms silently)")
    insns = list(disassembler(bits).disasm(code, address))
    if sum(i.size for i in insns) != len(code):
        raise CheckError(
            f"keystone produced bytes that do not decode ({code.hex(' ')}); "
            "the instruction is probably out of range or malformed"
        )
    return insns


def verify(code: bytes, address: int, bits: int, expect: Expectations) -> None:
    insns = decode(code, address, bits)
    mask = (1 << bits) - 1
    for insn in insns:
        if bits == 64:
            _check_rip(insn, expect)
        if expect.branch_target is not None and CS_GRP_BRANCH_RELATIVE in insn.groups:
            _check_branch(insn, expect.branch_target, mask)
        elif expect.immediates:
            _check_immediates(insn, expect.immediates)
        if expect.memory_registers is not None:
            _check_memory_registers(insn, expect.memory_registers)
        for value in expect.absolute_addresses:
            _check_absolute(insn, value, bits)
        if bits == 16 and not expect.address_size_prefix_ok and 0x67 in insn.prefix:
            raise CheckError(
                "the address does not fit in 16 bits, so keystone switched to 32-bit "
                "addressing (0x67 prefix). Real-mode offsets are relative to the segment: "
                "subtract the segment base (e.g. [cs:label - 0xFFFF0000]) or write a32"
            )


def _check_rip(insn: CsInsn, expect: Expectations) -> None:
    for op in insn.operands:
        if op.type != cs_x86.X86_OP_MEM or op.mem.base != cs_x86.X86_REG_RIP:
            continue
        target = (insn.address + insn.size + op.mem.disp) & ((1 << 64) - 1)
        if expect.rip_allowed:
            if expect.rip_targets and target not in expect.rip_targets:
                raise CheckError(
                    f"RIP-relative operand reaches {target:#x}, expected "
                    + " or ".join(hex(t) for t in expect.rip_targets)
                )
            continue
        written = expect.absolute_operands[0] if expect.absolute_operands else "[...]"
        sign = "+" if op.mem.disp >= 0 else "-"
        raise CheckError(
            f"keystone encoded the absolute operand {written} as RIP-relative "
            f"([rip {sign} {abs(op.mem.disp):#x}]), an address that moves with the code "
            "instead of a fixed one, so sevx86 refuses it. For a fixed address use a "
            "register (mov rdi, ADDRESS, then [rdi]); for a label write [rip + label]"
        )


def _check_branch(insn: CsInsn, target: int, mask: int) -> None:
    reached = insn.operands[-1].imm if insn.operands else None
    if reached is None or (reached & mask) != (target & mask):
        raise CheckError(
            f"branch target {target:#x} is out of reach (keystone's encoding goes to "
            f"{(reached or 0) & mask:#x})"
        )


def _check_immediates(insn: CsInsn, values: list[int]) -> None:
    imms = [op for op in insn.operands if op.type == cs_x86.X86_OP_IMM]
    for value in values:
        if not any(_fits(value, op.imm, op.size) for op in imms):
            sizes = ", ".join(f"{op.size * 8}-bit" for op in imms) or "no immediate"
            raise CheckError(
                f"value {value:#x} does not fit the instruction's operand ({sizes}); "
                "keystone would silently truncate it"
            )


def _fits(value: int, encoded: int, size: int) -> bool:
    bits = 8 * size
    return -(1 << (bits - 1)) <= value < (1 << bits) and (value - encoded) % (1 << bits) == 0


def _check_absolute(insn: CsInsn, value: int, bits: int) -> None:
    """A ``[number]`` operand must encode that number (keystone truncates a
    16-bit displacement that does not fit)."""
    address_bits = bits
    if 0x67 in insn.prefix:
        address_bits = 32 if bits in (16, 64) else 16
    limit = 1 << address_bits
    for op in insn.operands:
        if op.type == cs_x86.X86_OP_MEM and not op.mem.base and not op.mem.index:
            if -(limit >> 1) <= value < limit and (value - op.mem.disp) % limit == 0:
                return
            raise CheckError(
                f"address {value:#x} does not fit a {address_bits}-bit address "
                f"(keystone encoded {op.mem.disp % limit:#x})"
            )


def _check_memory_registers(insn: CsInsn, wanted: set[str]) -> None:
    found: set[str] = set()
    for op in insn.operands:
        if op.type == cs_x86.X86_OP_MEM:
            for reg in (op.mem.base, op.mem.index):
                if reg:
                    found.add(insn.reg_name(reg).lower())
    if found != wanted:
        raise CheckError(
            "keystone changed the registers of the memory operand "
            f"({', '.join(sorted(wanted)) or 'none'} written, "
            f"{', '.join(sorted(found)) or 'none'} encoded): that addressing form does not exist"
        )
