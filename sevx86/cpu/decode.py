"""The little instruction decoding the CPU itself needs.

Real hardware knows the instruction it intercepted; Unicorn tells us only
"intercept N at RIP". The engine decodes just enough to act like the
processor: the length (for nRIP and for AE instructions whose RIP the CPU
advances under SEV-ES), MOV to CRn/CLTS/LMSW (to perform a trapped write),
INT n (software interrupt delivery) and IN/OUT/INS/OUTS (IOIO EXITINFO1 for
a non-ES host). Everything else -- MMIO MOVs, string I/O -- is the guest #VC
handler's or the host's job, as in the real architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from capstone import CS_ARCH_X86, CS_MODE_16, CS_MODE_32, CS_MODE_64, Cs

from sevx86.arch.paging import PAGE_SIZE
from sevx86.arch.vmcb import SegReg, encode_ioio

MAX_INSN = 15
_LEGACY_PREFIXES = frozenset({0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65})
_SEGMENT_PREFIX = {
    0x26: SegReg.ES,
    0x2E: SegReg.CS,
    0x36: SegReg.SS,
    0x3E: SegReg.DS,
    0x64: SegReg.FS,
    0x65: SegReg.GS,
}


class DecodeError(ValueError):
    pass


@cache
def _capstone(bits: int) -> Cs:
    return Cs(CS_ARCH_X86, {16: CS_MODE_16, 32: CS_MODE_32, 64: CS_MODE_64}[bits])


@cache
def _capstone_detail(bits: int) -> Cs:
    cs = Cs(CS_ARCH_X86, {16: CS_MODE_16, 32: CS_MODE_32, 64: CS_MODE_64}[bits])
    cs.detail = True
    return cs


# Capstone register ids -> architectural GPR index, for address computation.
def _gpr_index() -> dict[int, tuple[int, int]]:
    from capstone import x86_const as cx

    table: dict[int, tuple[int, int]] = {}
    names64 = ["RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI"]
    names32 = ["EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI"]
    names16 = ["AX", "CX", "DX", "BX", "SP", "BP", "SI", "DI"]
    for i in range(8):
        table[getattr(cx, f"X86_REG_{names64[i]}")] = (i, 64)
        table[getattr(cx, f"X86_REG_{names32[i]}")] = (i, 32)
        table[getattr(cx, f"X86_REG_{names16[i]}")] = (i, 16)
    for i in range(8, 16):
        table[getattr(cx, f"X86_REG_R{i}")] = (i, 64)
        table[getattr(cx, f"X86_REG_R{i}D")] = (i, 32)
        table[getattr(cx, f"X86_REG_R{i}W")] = (i, 16)
    return table


_GPRS = _gpr_index()
_STACK_PUSH = {"push", "pushf", "pushfq", "pushfd", "call", "enter"}
_STACK_POP = {"pop", "popf", "popfq", "popfd", "ret", "retf", "leave", "iret", "iretq", "iretd"}


def fault_address(
    insn: bytes,
    bits: int,
    rip: int,
    gprs: tuple[int, ...],
    segment_base: Callable[[int], int],
    page: int,
    page_size: int = PAGE_SIZE,
) -> int:
    """The exact linear address an instruction faulted at, given the faulting page.

    Unicorn's TLB-fill hook only knows the page, but CR2 must hold the
    first byte that faulted (APM vol 2, 8.4.2). The instruction's memory
    operands (capstone) and implicit stack accesses give the candidates; the
    one that touches ``page`` decides. Unknown cases fall back to the page.
    """
    from capstone import x86_const as cx

    decoded = next(_capstone_detail(bits).disasm(insn[:MAX_INSN], rip, 1), None)
    if decoded is None:
        return page
    mask = (1 << bits) - 1 if bits != 16 else 0xFFFF_FFFF
    candidates: list[tuple[int, int]] = []
    for op in decoded.operands:
        if op.type != cx.X86_OP_MEM:
            continue
        mem = op.mem
        ea = mem.disp
        if mem.base == cx.X86_REG_RIP:
            ea += rip + decoded.size
        elif mem.base in _GPRS:
            idx, width = _GPRS[mem.base]
            ea += gprs[idx] & ((1 << width) - 1)
        if mem.index in _GPRS:
            idx, width = _GPRS[mem.index]
            ea += (gprs[idx] & ((1 << width) - 1)) * mem.scale
        if bits != 64 or mem.segment in (cx.X86_REG_FS, cx.X86_REG_GS):
            ea += segment_base(mem.segment)
        candidates.append((ea & mask, max(op.size, 1)))
    stack_width = {64: 8, 32: 4, 16: 2}[bits]
    if decoded.mnemonic in _STACK_PUSH:
        candidates.append(((gprs[4] - stack_width) & mask, stack_width))
    elif decoded.mnemonic in _STACK_POP:
        candidates.append((gprs[4] & mask, stack_width))
    for ea, size in candidates:
        if ea < page + page_size and ea + size > page:
            return max(ea, page)
    return page


def length(insn: bytes, bits: int) -> int:
    """Length of the instruction at the start of ``insn`` (0 if undecodable)."""
    for decoded in _capstone(bits).disasm(insn[:MAX_INSN], 0, 1):
        return decoded.size
    return 0


def mnemonic(insn: bytes, bits: int) -> str:
    for decoded in _capstone(bits).disasm(insn[:MAX_INSN], 0, 1):
        return f"{decoded.mnemonic} {decoded.op_str}".strip()
    return "(bad)"


def control_flow(insn: bytes, bits: int, addr: int) -> tuple[int | None, int | None] | None:
    """Where execution can go after the instruction at ``addr``: (next, branch target).

    ``next`` is None when the instruction never falls through (JMP, RET,
    IRET, an indirect jump); ``target`` is None unless it is a direct
    relative branch (JMP/Jcc/LOOP/JRCXZ/CALL rel). None: undecodable.
    """
    from capstone import CS_GRP_CALL, CS_GRP_IRET, CS_GRP_JUMP, CS_GRP_RET, CS_OP_IMM

    for d in _capstone_detail(bits).disasm(insn[:MAX_INSN], addr, 1):
        after = addr + d.size
        if d.group(CS_GRP_RET) or d.group(CS_GRP_IRET):
            return None, None
        if d.group(CS_GRP_JUMP) or d.group(CS_GRP_CALL):
            ops = d.operands
            target = ops[0].imm if len(ops) == 1 and ops[0].type == CS_OP_IMM else None
            unconditional = d.mnemonic in ("jmp", "ljmp")
            return (None if unconditional else after), target
        return after, None
    return None


@dataclass(frozen=True)
class Prefixes:
    length: int
    opsize: bool = False  # 0x66
    addrsize: bool = False  # 0x67
    rep: bool = False  # 0xF3 (or 0xF2)
    segment: int = SegReg.DS
    rex: int = 0

    @property
    def rex_w(self) -> bool:
        return bool(self.rex & 8)

    @property
    def rex_r(self) -> bool:
        return bool(self.rex & 4)

    @property
    def rex_b(self) -> bool:
        return bool(self.rex & 1)


def prefixes(insn: bytes, bits: int) -> Prefixes:
    i, opsize, addrsize, rep, seg, rex = 0, False, False, False, SegReg.DS, 0
    while i < len(insn) and insn[i] in _LEGACY_PREFIXES:
        b = insn[i]
        opsize |= b == 0x66
        addrsize |= b == 0x67
        rep |= b in (0xF3, 0xF2)
        seg = _SEGMENT_PREFIX.get(b, seg)
        i += 1
    if bits == 64 and i < len(insn) and 0x40 <= insn[i] <= 0x4F:
        rex = insn[i]
        i += 1
    return Prefixes(i, opsize, addrsize, rep, seg, rex)


# -- MOV to CRn, CLTS, LMSW ---------------------------------------------------------
@dataclass(frozen=True)
class CrWrite:
    cr: int
    gpr: int | None  # source register (architectural index), None for CLTS/LMSW forms
    length: int
    kind: str  # "mov", "clts" or "lmsw"


def cr_write(insn: bytes, bits: int) -> CrWrite:
    p = prefixes(insn, bits)
    body = insn[p.length :]
    if body[:2] == b"\x0f\x22" and len(body) >= 3:
        modrm = body[2]
        cr = ((modrm >> 3) & 7) | (8 if p.rex_r else 0)
        gpr = (modrm & 7) | (8 if p.rex_b else 0)
        return CrWrite(cr, gpr, p.length + 3, "mov")
    if body[:2] == b"\x0f\x06":
        return CrWrite(0, None, p.length + 2, "clts")
    if body[:2] == b"\x0f\x01" and len(body) >= 3 and (body[2] >> 3) & 7 == 6:
        modrm = body[2]
        if modrm >> 6 == 3:
            return CrWrite(0, modrm & 7 | (8 if p.rex_b else 0), p.length + 3, "lmsw")
        raise DecodeError("LMSW with a memory operand is not supported")
    raise DecodeError(f"not a control-register write: {insn[:4].hex()}")


# -- INT n ---------------------------------------------------------------------------
def software_interrupt(insn: bytes, bits: int) -> tuple[int, int]:
    """(vector, length) of INT n / INT3 / INTO / INT1."""
    p = prefixes(insn, bits)
    body = insn[p.length :]
    if body[:1] == b"\xcd" and len(body) >= 2:
        return body[1], p.length + 2
    if body[:1] == b"\xcc":
        return 3, p.length + 1
    if body[:1] == b"\xce":
        return 4, p.length + 1
    if body[:1] == b"\xf1":
        return 1, p.length + 1
    raise DecodeError(f"not a software interrupt: {insn[:3].hex()}")


# -- IN/OUT/INS/OUTS --------------------------------------------------------------------
@dataclass(frozen=True)
class IoAccess:
    port: int | None  # None: the port is in DX
    size: int
    is_in: bool
    string: bool
    rep: bool
    addr_size: int
    segment: int
    length: int

    def exitinfo1(self, dx: int) -> int:
        port = self.port if self.port is not None else dx & 0xFFFF
        return encode_ioio(
            port,
            self.size,
            self.is_in,
            string=self.string,
            rep=self.rep,
            addr_size=self.addr_size,
            seg=self.segment,
        )


def io_access(insn: bytes, bits: int) -> IoAccess:
    p = prefixes(insn, bits)
    body = insn[p.length :]
    if not body:
        raise DecodeError("empty instruction")
    op = body[0]
    wide = 2 if p.opsize != (bits == 16) else 4  # 16-bit code defaults to 16-bit operands
    size = 1 if op in (0xE4, 0xE6, 0xEC, 0xEE, 0x6C, 0x6E) else wide
    if bits == 64:
        addr = 32 if p.addrsize else 64
    elif bits == 32:
        addr = 16 if p.addrsize else 32
    else:
        addr = 32 if p.addrsize else 16
    common = dict(size=size, addr_size=addr, segment=p.segment, rep=p.rep)
    if op in (0xE4, 0xE5, 0xE6, 0xE7):
        if len(body) < 2:
            raise DecodeError("truncated IN/OUT imm8")
        return IoAccess(body[1], is_in=op < 0xE6, string=False, length=p.length + 2, **common)
    if op in (0xEC, 0xED, 0xEE, 0xEF):
        return IoAccess(None, is_in=op < 0xEE, string=False, length=p.length + 1, **common)
    if op in (0x6C, 0x6D, 0x6E, 0x6F):
        # INS always writes through ES; OUTS reads through DS or an override.
        seg = SegReg.ES if op < 0x6E else p.segment
        common["segment"] = seg
        return IoAccess(None, is_in=op < 0x6E, string=True, length=p.length + 1, **common)
    raise DecodeError(f"not an I/O instruction: {insn[:3].hex()}")
