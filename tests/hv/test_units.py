"""Unit tests of the hypervisor's parts: CPUID table, MSR policy, devices, buses."""

from __future__ import annotations

import pytest

from sevx86.arch.cr import Cr4
from sevx86.arch.msr import Msr
from sevx86.config import GuestConfig
from sevx86.hv import CpuidQuery, CpuidTable, MsrPolicy
from sevx86.hv.clock import TscClock
from sevx86.hv.devices import (
    MMIO_TEST_ID,
    Console,
    DebugCon,
    IoBus,
    MmioBus,
    MmioTestDevice,
    Serial16550,
)
from sevx86.hv.devices.serial import LCR, LCR_DLAB, LSR


def regs(table: CpuidTable, leaf: int, subleaf: int = 0, **kw) -> tuple[int, int, int, int]:
    return table.lookup(CpuidQuery(leaf, subleaf, **kw))


def text(*words: int) -> bytes:
    return b"".join(w.to_bytes(4, "little") for w in words)


# -- CPUID ----------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "features"), [("none", 0), ("sev", 0b10), ("sev-es", 0b1010)])
def test_default_table_reports_memory_encryption_per_mode(mode, features):
    config = GuestConfig(mode=mode, cbitpos=47, reduced_phys_bits=5)
    eax, ebx, _, _ = regs(CpuidTable.default(config), 0x8000_001F)
    assert eax == features
    if features:
        assert (ebx & 0x3F, (ebx >> 6) & 0x3F) == (47, 5)


def test_default_table_is_an_amd_epyc_under_a_hypervisor():
    config = GuestConfig(phys_bits=44, cbitpos=51)
    table = CpuidTable.default(config)
    _, b, c, d = regs(table, 0)
    assert text(b, d, c) == b"AuthenticAMD"
    assert regs(table, 1)[2] >> 31 == 1  # hypervisor present
    assert regs(table, 0x8000_0008)[0] & 0xFF == 44
    brand = b"".join(text(*regs(table, leaf)) for leaf in (0x8000_0002, 0x8000_0003, 0x8000_0004))
    assert brand.rstrip(b"\0") == b"AMD EPYC-Milan Processor"
    assert text(*regs(table, 0x4000_0000)[1:]) == b"sevx86sevx86"
    assert regs(table, 0x1234_5678) == (0, 0, 0, 0)


def test_default_table_dynamic_bits():
    table = CpuidTable.default(GuestConfig(vcpus=2))
    assert regs(table, 1, vcpu=1)[1] >> 24 == 1  # initial APIC ID
    assert not regs(table, 1, cr4=0)[2] & (1 << 27)
    assert regs(table, 1, cr4=int(Cr4.OSXSAVE))[2] & (1 << 27)  # OSXSAVE mirrors CR4
    assert regs(table, 0xD, 0, xcr0=3)[1] == 576
    # The engine has no AVX (docs/cpuid.md): no AVX component, whatever XCR0 says.
    assert regs(table, 0xD, 0, xcr0=7)[1] == 576
    assert regs(table, 0xD, 2) == (0, 0, 0, 0)
    model = CpuidTable.default(GuestConfig(vcpus=2), honest=False)
    assert regs(model, 0xD, 0, xcr0=7)[1] == 832
    assert regs(model, 0xD, 2)[:2] == (256, 576)  # AVX: size, offset


def test_user_table_is_answered_verbatim_and_subleaves_matter_only_where_they_exist():
    table = CpuidTable.coerce(
        {(1, 0): (1, 2, 3, 4), (7, 0): (5, 6, 7, 8), (0xB, None): (9, 9, 9, 9)}
    )
    assert regs(table, 1, 5) == (1, 2, 3, 4)  # leaf 1 ignores ECX
    assert regs(table, 7, 1) == (0, 0, 0, 0)  # leaf 7 does not
    assert regs(table, 0xB, 3) == (9, 9, 9, 9)  # None: any subleaf
    assert regs(table, 1, vcpu=3)[1] == 2  # no dynamic APIC ID in a user table


def test_with_entries_replaces_one_leaf():
    base = CpuidTable.default(GuestConfig())
    lying = base.with_entries({(0x8000_001F, None): (0xA, 40, 0, 0)})
    assert regs(lying, 0x8000_001F)[1] == 40 and regs(base, 0x8000_001F)[1] & 0x3F == 51
    assert regs(lying, 0) == regs(base, 0)


# -- MSR policy ------------------------------------------------------------------------
def test_msr_policy_defaults_and_refusals():
    policy = MsrPolicy.default(TscClock(step=10))
    assert policy.read(0, Msr.MTRRCAP) == 0x508
    assert policy.write(0, Msr.MTRRCAP, 0) is False  # read-only
    assert policy.read(0, Msr.APIC_BASE) & (1 << 8)  # BSP
    assert not policy.read(1, Msr.APIC_BASE) & (1 << 8)
    assert policy.read(0, 0x1234_5678) is None
    assert policy.write(0, Msr.PAT, 0x0606) and policy.read(0, Msr.PAT) == 0x0606
    assert policy.read(1, Msr.PAT) == 0x0007_0406_0007_0406  # per vCPU
    first, second = policy.read(0, Msr.TSC), policy.read(0, Msr.TSC)
    assert (first, second) == (10, 20)
    policy.write(0, Msr.TSC, 1000)
    assert policy.read(0, Msr.TSC) == 1010
    policy.refuse(Msr.PAT)
    assert policy.read(0, Msr.PAT) is None
    policy.allow(0xC001_1000, 5, writable=False)
    assert policy.read(0, 0xC001_1000) == 5 and not policy.write(0, 0xC001_1000, 1)


# -- devices ---------------------------------------------------------------------------
def test_serial_polled_output_divisor_and_input():
    console = Console()
    uart = Serial16550(console)
    bus = IoBus()
    bus.register(0x3F8, 8, uart)
    assert bus.read(0x3F8 + LSR, 1) & 0x20  # THRE: ready to send
    for byte in b"hi\n":
        bus.write(0x3F8, 1, byte)
    assert console.text() == "hi\n"
    bus.write(0x3F8 + LCR, 1, LCR_DLAB)
    bus.write(0x3F8, 1, 0x0C)  # divisor low byte, not output
    bus.write(0x3F8 + 1, 1, 0x00)
    assert uart.divisor == 0x0C and console.text() == "hi\n"
    bus.write(0x3F8 + LCR, 1, 0x03)
    uart.feed(b"k")
    assert bus.read(0x3F8 + LSR, 1) & 1 and bus.read(0x3F8, 1) == ord("k")
    assert not bus.read(0x3F8 + LSR, 1) & 1


def test_console_traces_whole_lines():
    lines: list[str] = []
    console = Console(log=lambda kind, summary, **_: lines.append(summary))
    debugcon = DebugCon(console)
    for byte in b"ab\ncd":
        debugcon.io_write(0x402, 1, byte)
    assert lines == ["debugcon: ab"] and debugcon.io_read(0x402, 1) == 0xE9


def test_console_routes_a_device_to_its_own_stream_or_nowhere():
    import io as stdio

    out, err = stdio.BytesIO(), stdio.BytesIO()
    console = Console(stream=out)
    console.routes["debugcon"] = err
    console.routes["quiet"] = None
    console.write("serial", b"to stdout\n")
    console.write("debugcon", b"to stderr\n")
    console.write("quiet", b"kept only\n")
    assert out.getvalue() == b"to stdout\n" and err.getvalue() == b"to stderr\n"
    assert console.text("quiet") == "kept only\n"


def test_buses_float_high_refuse_overlaps_and_route_by_offset():
    io = IoBus()
    assert io.read(0x80, 2) == 0xFFFF
    io.register(0x80, 4, DebugCon(Console()))
    with pytest.raises(ValueError):
        io.register(0x82, 4, DebugCon(Console()))
    mmio = MmioBus()
    dev = MmioTestDevice()
    mmio.register(0xFEB0_0000, 0x1000, dev)
    assert mmio.read(0xFEB0_0000, 4) == MMIO_TEST_ID
    mmio.write(0xFEB0_0009, 2, 0xBEEF)
    assert dev.scratch == 0xBEEF << 8
    mmio.write(0xFEB0_0000, 4, 0)  # read-only: ignored, but counted
    assert mmio.read(0xFEB0_0000, 4) == MMIO_TEST_ID and mmio.read(0xFEB0_0010, 4) == 2
    assert mmio.read(0xFEC0_0000, 8) == 2**64 - 1
