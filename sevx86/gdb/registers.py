"""gdb's x86-64 registers over a VMSA-layout page, and the target description.

The register numbers, names and sizes are those gdb's amd64 target expects
(GDB manual, appendix G "Target Descriptions", G.5 "Standard Target
Features": ``org.gnu.gdb.i386.core``, ``org.gnu.gdb.i386.sse``,
``org.gnu.gdb.i386.segments``); the system registers a firmware author
needs (CR0, CR2, CR3, CR4, EFER) are a feature of sevx86's own. The stub
serves this description with ``qXfer:features:read`` and sends exactly
these registers, in this order, in ``g`` replies.

Every value comes from a VMSA-layout page (APM vol 2, appendix B, table
B-4): the VMSA itself under SEV-ES (through DBG_DECRYPT), the CPU's state
written in that layout otherwise. The same numbers hold in real mode and
32-bit protected mode: RIP is EIP/IP zero-extended and CS holds the
selector (gdb's ``set architecture i8086`` or ``i386`` changes only the
disassembly).
"""

from __future__ import annotations

from dataclasses import dataclass

from sevx86.arch.vmsa import FPREG_X87_OFFSET, FPREG_XMM_OFFSET, VMSA


@dataclass(frozen=True)
class Register:
    name: str
    size: int  # bytes
    offset: int  # in the VMSA page
    field_size: int  # bytes the VMSA keeps (zero-extended to ``size``)
    xml_type: str
    feature: str
    group: str = ""


def _vmsa(name: str, field: str, size: int, xml_type: str, feature: str, group: str = ""):
    f = VMSA[field]
    return Register(name, size, f.offset, min(f.size, size), xml_type, feature, group)


_CORE = "org.gnu.gdb.i386.core"
_SSE = "org.gnu.gdb.i386.sse"
_SEGMENTS = "org.gnu.gdb.i386.segments"
_SYSTEM = "org.sevx86.system"

_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp") + tuple(
    f"r{n}" for n in range(8, 16)
)


def _build() -> tuple[Register, ...]:
    regs: list[Register] = []
    for name in _GPRS:
        xml_type = {"rbp": "data_ptr", "rsp": "data_ptr"}.get(name, "int64")
        regs.append(_vmsa(name, name, 8, xml_type, _CORE, "general"))
    regs.append(_vmsa("rip", "rip", 8, "code_ptr", _CORE, "general"))
    regs.append(_vmsa("eflags", "rflags", 4, "i386_eflags", _CORE, "general"))
    for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
        regs.append(_vmsa(seg, f"{seg}.selector", 4, "int32", _CORE, "general"))
    for n in range(8):
        off = FPREG_X87_OFFSET + 10 * n
        regs.append(Register(f"st{n}", 10, off, 10, "i387_ext", _CORE, "float"))
    for name, field in (
        ("fctrl", "x87_fcw"),
        ("fstat", "x87_fsw"),
        ("ftag", "x87_ftw"),
        ("fiseg", "x87_cs"),
        ("fioff", "x87_rip"),
        ("foseg", "x87_ds"),
        ("fooff", "x87_dp"),
        ("fop", "x87_fop"),
    ):
        regs.append(_vmsa(name, field, 4, "int", _CORE, "float"))
    for n in range(16):
        off = FPREG_XMM_OFFSET + 16 * n
        regs.append(Register(f"xmm{n}", 16, off, 16, "vec128", _SSE, "vector"))
    regs.append(_vmsa("mxcsr", "mxcsr", 4, "i386_mxcsr", _SSE, "vector"))
    regs.append(_vmsa("fs_base", "fs.base", 8, "int64", _SEGMENTS, "system"))
    regs.append(_vmsa("gs_base", "gs.base", 8, "int64", _SEGMENTS, "system"))
    for name in ("cr0", "cr2", "cr3", "cr4", "efer"):
        regs.append(_vmsa(name, name, 8, "int64", _SYSTEM, "system"))
    return tuple(regs)


REGISTERS = _build()
BY_NAME = {r.name: i for i, r in enumerate(REGISTERS)}


def encode(page: bytes | None) -> bytes:
    """A ``g`` reply: every register as little-endian hex; ``xx..`` when unavailable."""
    out = []
    for reg in REGISTERS:
        out.append(encode_one(page, reg))
    return b"".join(out)


def encode_one(page: bytes | None, reg: Register) -> bytes:
    if page is None:
        if reg.name == "rip":
            # gdb will not stop at all without a PC ("PC register is not
            # available"), and the host has none to give: 0 stands for it.
            return b"00" * reg.size
        return b"xx" * reg.size  # E.3 "g" reply: x means unavailable
    raw = page[reg.offset : reg.offset + reg.field_size].ljust(reg.size, b"\0")
    return raw.hex().encode()


def patch(page: bytearray, reg: Register, value: bytes) -> None:
    """Write a ``P``/``G`` value (little-endian bytes) into the page."""
    page[reg.offset : reg.offset + reg.field_size] = value[: reg.field_size].ljust(
        reg.field_size, b"\0"
    )


def decode_all(page: bytearray, hexdata: bytes) -> None:
    """A ``G`` packet into the page."""
    data = bytes.fromhex(hexdata.decode())
    pos = 0
    for reg in REGISTERS:
        chunk = data[pos : pos + reg.size]
        if len(chunk) < reg.size:
            break
        patch(page, reg, chunk)
        pos += reg.size


_FEATURE_TYPES = {
    _CORE: """\
  <flags id="i386_eflags" size="4">
    <field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>
    <field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>
    <field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
    <field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>
    <field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>
    <field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
    <field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>
    <field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>
    <field name="ID" start="21" end="21"/>
  </flags>
""",
    _SSE: """\
  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
  <flags id="i386_mxcsr" size="4">
    <field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/>
    <field name="ZE" start="2" end="2"/><field name="OE" start="3" end="3"/>
    <field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>
    <field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/>
    <field name="DM" start="8" end="8"/><field name="ZM" start="9" end="9"/>
    <field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>
    <field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/>
  </flags>
""",
}


def target_xml() -> bytes:
    """The target description matching ``REGISTERS`` (regnums in order)."""
    lines = [
        '<?xml version="1.0"?>',
        '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
        "<target>",
        "  <architecture>i386:x86-64</architecture>",
    ]
    features: dict[str, list[str]] = {}
    for num, reg in enumerate(REGISTERS):
        group = f' group="{reg.group}"' if reg.group else ""
        features.setdefault(reg.feature, []).append(
            f'  <reg name="{reg.name}" bitsize="{reg.size * 8}" type="{reg.xml_type}"'
            f' regnum="{num}"{group}/>'
        )
    for name, regs in features.items():
        lines.append(f'<feature name="{name}">')
        types = _FEATURE_TYPES.get(name)
        if types:
            lines.append(types.rstrip("\n"))
        lines.extend(regs)
        lines.append("</feature>")
    lines.append("</target>")
    return ("\n".join(lines) + "\n").encode()
