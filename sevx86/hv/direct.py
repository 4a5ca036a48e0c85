"""Direct exits (modes none and sev): what a #VC handler would do, done by the host.

Without SEV-ES the host owns the guest's registers at an exit, so it does the
work that an SEV-ES guest's #VC handler does for itself:

* string I/O (INS/OUTS, with or without REP): the data moves between the
  device and guest memory at ES:RDI / DS:RSI, honouring RFLAGS.DF and the
  address size, and RSI/RDI/RCX are updated. A long REP is served in chunks;
  RIP stays on the instruction until RCX reaches 0 (as KVM re-enters it).
* MMIO (a nested page fault on a GPA outside RAM): the MOV is decoded with
  capstone from the instruction bytes the CPU left in the VMCB (decode
  assist, APM vol 2 15.33) and performed against the MMIO bus.

Limits, by design: a linear address is taken as the guest-physical address
(right for the identity-mapped guests sevx86 builds and for paging-off code);
segment bases other than FS/GS in 64-bit mode are taken as 0. In mode ``sev``
the host reads guest memory as ciphertext, so string output from private
memory reaches the device as garbage -- that is the real behaviour, and why
SEV guests unroll string I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from capstone import CS_ARCH_X86, CS_MODE_16, CS_MODE_32, CS_MODE_64, Cs, CsError
from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_OP_REG

from sevx86.arch.bits import U64_MASK as _U64
from sevx86.arch.cr import Rflags
from sevx86.arch.msr import Efer
from sevx86.arch.vmcb import IoioInfo, SegAttr

# Bytes of string I/O served per exit (then the instruction re-executes).
STRING_IO_CHUNK = 0x10000
_ADDR_MASK = {16: 0xFFFF, 32: 0xFFFF_FFFF, 64: _U64, 0: _U64}


def code_bits(regs) -> int:
    """16, 32 or 64: the guest's code size from EFER.LMA and CS.L / CS.D."""
    attrib = regs["cs.attrib"]
    if regs["efer"] & Efer.LMA and attrib & SegAttr.L:
        return 64
    if not regs["cr0"] & 1:
        return 16
    return 32 if attrib & SegAttr.DB else 16


@dataclass
class StringIo:
    """One chunk of a string I/O, ready for the IOIO handler."""

    count: int  # elements in this chunk
    reachable: bool  # the chunk lies in guest RAM (else #GP, before touching the device)
    data_read: Callable[[int], bytes | None]
    data_write: Callable[[bytes], bool]
    done: Callable[[], bool]  # update RSI/RDI/RCX; True if the instruction is complete


def _assign(old: int, value: int, addr_size: int) -> int:
    """A register after the CPU writes ``value`` as an ``addr_size``-bit result.

    A 16-bit write keeps bits 63:16; a 32-bit write zero-extends into the
    whole register (AMD APM vol 1 3.1.2.3, "zero-extension of 32-bit
    results"), which is also how KVM's emulator assigns RSI/RDI/RCX after
    string I/O with a 32-bit address size.
    """
    mask = _ADDR_MASK[addr_size]
    if addr_size == 16:
        return (old & ~mask & _U64) | (value & mask)
    return value & mask


def string_io(io: IoioInfo, regs, memory) -> StringIo:
    """Plan a string I/O against guest memory (``memory``: the host's view)."""
    mask = _ADDR_MASK[io.addr_size]
    total = (regs["rcx"] & mask) if io.rep else 1
    count = min(total, STRING_IO_CHUNK // io.size)
    reg = "rdi" if io.is_in else "rsi"
    start = regs[reg] & mask
    down = bool(regs["rflags"] & Rflags.DF)
    nbytes = count * io.size
    # With DF=1 the elements go to descending addresses: the block is below
    # the start and in reverse element order.
    base = (start - nbytes + io.size) & mask if down else start

    def elements_reversed(data: bytes) -> bytes:
        items = [data[i : i + io.size] for i in range(0, len(data), io.size)]
        return b"".join(reversed(items))

    def data_read(size: int) -> bytes | None:
        if not memory.contains(base, nbytes):
            return None
        data = memory.read(base, nbytes)
        return elements_reversed(data) if down else data

    def data_write(data: bytes) -> bool:
        if not memory.contains(base, len(data)):
            return False
        memory.write(base, elements_reversed(data) if down else data)
        return True

    def done() -> bool:
        step = -nbytes if down else nbytes
        regs[reg] = _assign(regs[reg], start + step, io.addr_size)
        if not io.rep:
            return True
        left = total - count
        regs["rcx"] = _assign(regs["rcx"], left, io.addr_size)
        return left == 0

    reachable = count == 0 or memory.contains(base, nbytes)
    return StringIo(count, reachable, data_read, data_write, done)


# -- MMIO instruction decoding ---------------------------------------------------
@dataclass(frozen=True)
class MmioAccess:
    """A decoded MMIO MOV: ``size`` bytes at the faulting GPA."""

    write: bool
    size: int
    length: int  # instruction length
    reg: str | None = None  # GPR (VMSA name) read from / written to
    reg_offset: int = 0  # 1 for AH/BH/CH/DH
    reg_size: int = 0  # width of the register operand
    imm: int | None = None  # immediate source of a store
    extend: str = ""  # "zero" or "sign" for MOVZX/MOVSX loads
    text: str = ""
    # Effective address: base + index * scale + disp (register names as VMSA
    # fields; "rip" means the next instruction's address), segment override.
    base: str | None = None
    index: str | None = None
    scale: int = 1
    disp: int = 0
    segment: str | None = None

    def effective_address(self, regs, rip: int, bits: int) -> int:
        """The linear address the MOV touches, computed as the CPU does."""
        ea = self.disp
        if self.base == "rip":
            ea += rip + self.length
        elif self.base is not None:
            ea += regs[self.base]
        if self.index is not None:
            ea += regs[self.index] * self.scale
        if self.segment in ("fs", "gs"):
            ea += regs[f"{self.segment}.base"]
        return ea & _ADDR_MASK[bits]


class MmioDecodeError(ValueError):
    pass


_GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi")
_REG_NAMES: dict[str, tuple[str, int]] = {}
for _i, _name in enumerate(_GPRS):
    _b = _name[1:]  # ax, cx, ..., sp, bp, si, di
    _REG_NAMES[_name] = (_name, 0)
    _REG_NAMES["e" + _b] = (_name, 0)
    _REG_NAMES[_b] = (_name, 0)
    _REG_NAMES[_b[0] + "l" if _i < 4 else _b + "l"] = (_name, 0)
    if _i < 4:
        _REG_NAMES[_b[0] + "h"] = (_name, 1)
for _n in range(8, 16):
    for _suffix in ("", "d", "w", "b"):
        _REG_NAMES[f"r{_n}{_suffix}"] = (f"r{_n}", 0)


@cache
def _capstone(bits: int) -> Cs:
    md = Cs(CS_ARCH_X86, {16: CS_MODE_16, 32: CS_MODE_32, 64: CS_MODE_64}[bits])
    md.detail = True
    return md


def decode_mmio(insn: bytes, bits: int) -> MmioAccess:
    """The MOV/MOVZX/MOVSX at the start of ``insn`` as an MMIO access."""
    try:
        decoded = next(_capstone(bits).disasm(bytes(insn), 0, 1), None)
    except CsError as exc:
        raise MmioDecodeError(f"capstone: {exc}") from None
    if decoded is None:
        raise MmioDecodeError(f"undecodable bytes {bytes(insn).hex()}")
    text = f"{decoded.mnemonic} {decoded.op_str}".strip()
    if decoded.mnemonic not in ("mov", "movabs", "movzx", "movsx", "movsxd"):
        raise MmioDecodeError(f"cannot emulate MMIO by {text!r}")
    ops = list(decoded.operands)
    if len(ops) != 2 or X86_OP_MEM not in (ops[0].type, ops[1].type):
        raise MmioDecodeError(f"cannot emulate MMIO by {text!r}")
    write = ops[0].type == X86_OP_MEM
    mem, other = (ops[0], ops[1]) if write else (ops[1], ops[0])
    extend = {"movzx": "zero", "movsx": "sign", "movsxd": "sign"}.get(decoded.mnemonic, "")
    address = _address(decoded, mem, text)
    if other.type == X86_OP_IMM:
        return MmioAccess(True, mem.size, decoded.size, imm=other.imm, text=text, **address)
    if other.type != X86_OP_REG:
        raise MmioDecodeError(f"cannot emulate MMIO by {text!r}")
    name = decoded.reg_name(other.reg)
    if name not in _REG_NAMES:
        raise MmioDecodeError(f"register {name} in {text!r}")
    gpr, offset = _REG_NAMES[name]
    return MmioAccess(
        write, mem.size, decoded.size, gpr, offset, other.size, None, extend, text, **address
    )


def _address(decoded, mem, text: str) -> dict:
    """The memory operand's parts, as register names the RegisterFile knows."""
    parts: dict = {"scale": mem.mem.scale, "disp": mem.mem.disp}
    for key, reg in (("base", mem.mem.base), ("index", mem.mem.index)):
        if reg == 0:
            continue
        name = decoded.reg_name(reg)
        if name in ("rip", "eip"):
            parts[key] = "rip"
        elif name in _REG_NAMES and _REG_NAMES[name][1] == 0:
            parts[key] = _REG_NAMES[name][0]
        else:
            raise MmioDecodeError(f"address register {name} in {text!r}")
    if mem.mem.segment:
        parts["segment"] = decoded.reg_name(mem.mem.segment)
    return parts


def store_value(access: MmioAccess, regs) -> int:
    """The value a decoded MMIO store writes."""
    mask = (1 << (8 * access.size)) - 1
    if access.imm is not None:
        return access.imm & mask
    assert access.reg is not None
    return (regs[access.reg] >> (8 * access.reg_offset)) & mask


def load_result(access: MmioAccess, regs, value: int) -> None:
    """Put a decoded MMIO load's ``value`` into its destination register."""
    assert access.reg is not None
    size = access.reg_size
    if access.extend == "sign" and value >> (8 * access.size - 1) & 1:
        value |= ((1 << (8 * size)) - 1) & ~((1 << (8 * access.size)) - 1)
    value &= (1 << (8 * size)) - 1
    current = regs[access.reg]
    if size >= 4:  # a 32-bit destination zero-extends into the 64-bit register
        regs[access.reg] = value
        return
    shift = 8 * access.reg_offset
    mask = ((1 << (8 * size)) - 1) << shift
    regs[access.reg] = (current & ~mask & _U64) | (value << shift)


__all__ = [
    "MmioAccess",
    "MmioDecodeError",
    "STRING_IO_CHUNK",
    "StringIo",
    "code_bits",
    "decode_mmio",
    "load_result",
    "store_value",
    "string_io",
]
