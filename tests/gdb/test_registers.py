"""The register layout gdb's amd64 target expects, and the description that says so."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from sevx86.arch.vmsa import VMSA
from sevx86.gdb import registers as R

# gdb's amd64 raw register numbering (amd64-tdep.c, amd64_register_names; the
# order of the standard 64bit-core.xml feature): regnum 0..23.
AMD64_CORE = (
    "rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip eflags cs ss ds es fs gs"
).split()


def test_core_registers_come_first_in_gdbs_order():
    assert [r.name for r in R.REGISTERS[:24]] == AMD64_CORE
    assert [r.name for r in R.REGISTERS[24:32]] == [f"st{n}" for n in range(8)]


def test_target_xml_describes_exactly_what_g_sends():
    root = ET.fromstring(R.target_xml())
    assert root.findtext("architecture") == "i386:x86-64"
    regs = [reg for feature in root.iter("feature") for reg in feature.iter("reg")]
    assert [r.get("name") for r in regs] == [r.name for r in R.REGISTERS]
    assert [int(r.get("regnum")) for r in regs] == list(range(len(R.REGISTERS)))
    bits = sum(int(r.get("bitsize")) for r in regs)
    assert len(R.encode(bytes(VMSA.new()))) == bits // 4  # two hex digits a byte
    features = {f.get("name") for f in root.iter("feature")}
    assert {"org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse"} <= features


def test_values_are_little_endian_from_the_vmsa_fields():
    page = VMSA.new()
    VMSA.write(page, "rip", 0x1122334455667788)
    VMSA.write(page, "cs.selector", 0xF000)
    encoded = R.encode(bytes(page))
    rip = R.REGISTERS[R.BY_NAME["rip"]]
    start = sum(r.size for r in R.REGISTERS[: R.BY_NAME["rip"]]) * 2
    assert encoded[start : start + 16] == b"8877665544332211"
    assert R.encode_one(bytes(page), R.REGISTERS[R.BY_NAME["cs"]]) == b"00f00000"
    assert R.encode_one(None, R.REGISTERS[R.BY_NAME["rax"]]) == b"x" * 16
    assert rip.size == 8


def test_a_G_packet_round_trips_into_the_page():
    page = VMSA.new()
    VMSA.write(page, "rax", 0xDEAD)
    VMSA.write(page, "cr3", 0x5000)
    copy = bytearray(VMSA.new())
    R.decode_all(copy, R.encode(bytes(page)))
    assert VMSA.read(copy, "rax") == 0xDEAD and VMSA.read(copy, "cr3") == 0x5000
