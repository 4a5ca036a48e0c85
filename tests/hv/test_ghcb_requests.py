"""SEV-ES: requests a guest writes into its GHCB page, served by the hypervisor.

The guest programs fill the GHCB by hand (tests/hv/guests.py), VMGEXIT, and
snapshot the page; the test reads the snapshots (god view) and checks the
answer fields and their valid bits.
"""

from __future__ import annotations

from sevx86.arch.exits import SvmExit, SwExit
from sevx86.arch.ghcb import GhcbError, is_valid, sw_terminate_info1
from sevx86.arch.vectors import Vector
from sevx86.arch.vmcb import EventType, decode_event, encode_ioio
from sevx86.hv import RunReason
from sevx86.hv.devices import MMIO_TEST_BASE, MMIO_TEST_ID
from sevx86.hv.vcpu_state import MpState
from sevx86.trace.events import Tracer
from tests.hv.guests import (
    CASE_GPA,
    GHCB_GPA,
    build,
    exit_sev_es,
    field,
    ghcb_call,
    ghcb_out,
    register_ghcb,
    snapshot,
)

BASE = {"sw_exit_info_1": 0, "sw_exit_info_2": 0}
BUFFER = GHCB_GPA + 0x800


class Capture:
    """An I/O device that records what it is given and counts up when read."""

    name = "capture"

    def __init__(self) -> None:
        self.data = bytearray()
        self.reads = 0

    def io_read(self, port: int, size: int) -> int:
        self.reads += 1
        return (self.reads * 0x01010101) & ((1 << (8 * size)) - 1)

    def io_write(self, port: int, size: int, value: int) -> None:
        self.data += value.to_bytes(size, "little")


def call(code: int, n: int, **fields: int) -> str:
    return ghcb_call({"sw_exit_code": code, **BASE, **fields}, snapshot=n)


def regs(page: bytes, *names: str) -> tuple[int, ...]:
    return tuple(field(page, name) for name in names)


def answer(page: bytes) -> tuple[int, int]:
    return field(page, "sw_exit_info_1"), field(page, "sw_exit_info_2")


def valid(page: bytes, *names: str) -> bool:
    return all(is_valid(field(page, "valid_bitmap"), name) for name in names)


def run(body: str, **kw):
    m, program, hv = build(register_ghcb() + body + exit_sev_es(0), **kw)
    result = hv.run(timeout=30)
    return m, hv, result


# -- CPUID ---------------------------------------------------------------------------
def test_cpuid_answers_equal_the_installed_table():
    table = {
        (0x0, None): (0x16, 0x6874_7541, 0x444D_4163, 0x6974_6E65),
        (0x7, 0): (0, 0xDEAD_BEEF, 0x1234, 0x5678),
        (0x7, 1): (0x11, 0x22, 0x33, 0x44),
        (0x8000_001F, None): (0xA, 0x73, 509, 1),
    }
    queries = [(0x0, 5), (0x7, 0), (0x7, 1), (0x8000_001F, 0), (0x4242, 0)]
    body = "".join(
        call(SvmExit.CPUID, i, rax=leaf, rcx=sub) for i, (leaf, sub) in enumerate(queries)
    )
    m, _, result = run(body, hv_kwargs={"cpuid": table})
    assert result.ok, result
    for i, (leaf, sub) in enumerate(queries):
        page = snapshot(m, i)
        expected = table.get((leaf, sub), table.get((leaf, None), (0, 0, 0, 0)))
        assert regs(page, "rax", "rbx", "rcx", "rdx") == expected
        assert answer(page) == (0, 0)
        assert valid(page, "rax", "rbx", "rcx", "rdx", "sw_exit_info_1", "sw_exit_info_2")
        assert not valid(page, "sw_exit_code")  # the bitmap was cleared, then outputs set


def test_cpuid_default_table_sev_leaf_and_xsave_sizes():
    body = (
        call(SvmExit.CPUID, 0, rax=0x8000_001F, rcx=0)
        + call(SvmExit.CPUID, 1, rax=0xD, rcx=0, xcr0=7)
        + call(SvmExit.CPUID, 2, rax=0xD, rcx=0, xcr0=3)
        + call(SvmExit.CPUID, 3, rax=0xD, rcx=0)  # XCR0 missing: KVM refuses
        + call(SvmExit.CPUID, 4, rax=1, rcx=0)
    )
    m, _, result = run(body)
    assert result.ok, result
    eax, ebx = regs(snapshot(m, 0), "rax", "rbx")
    assert eax & 0b1010 == 0b1010 and ebx & 0x3F == 51  # SEV, SEV-ES, cbitpos
    assert field(snapshot(m, 1), "rbx") == 832  # x87 + SSE + AVX
    assert field(snapshot(m, 2), "rbx") == 576  # legacy area + header
    assert answer(snapshot(m, 3)) == (2, GhcbError.MISSING_INPUT)
    assert field(snapshot(m, 4), "rcx") >> 31 == 1  # hypervisor bit


# -- I/O -------------------------------------------------------------------------------
def test_in_values_come_from_devices():
    body = "".join(
        call(SvmExit.IOIO, i, sw_exit_info_1=encode_ioio(port, size, True))
        for i, (port, size) in enumerate([(0x3FD, 1), (0x402, 1), (0x1234, 2), (0x500, 4)])
    )
    m, hv, result = run(body)
    assert result.ok
    values = [field(snapshot(m, i), "rax") for i in range(4)]
    # LSR: THRE|TEMT; debugcon readback; nothing at 0x1234 or 0x500: the bus floats high.
    assert values == [0x60, 0xE9, 0xFFFF, 0xFFFF_FFFF]


def test_in_from_a_user_device_and_serial_output():
    cap = Capture()
    body = call(SvmExit.IOIO, 0, sw_exit_info_1=encode_ioio(0x500, 4, True)) + "".join(
        ghcb_out(0x3F8, c) for c in b"ok\n"
    )
    m, _, hv = build(register_ghcb() + body + exit_sev_es(0), tracer=Tracer())
    hv.io_bus.register(0x500, 4, cap)
    result = hv.run(timeout=30)
    assert result.ok
    assert field(snapshot(m, 0), "rax") == 0x0101_0101
    assert result.console == "ok\n" and result.outputs["serial"] == b"ok\n"


REP_OUTSB_5000 = f"""
    mov rdi, 0x300000
    xor ecx, ecx
fill_loop:
    mov eax, ecx
    imul eax, eax, 7
    add eax, 3
    mov [rdi + rcx], al
    inc ecx
    cmp ecx, 5000
    jne fill_loop
    mov r12, 5000
    mov r13, 0x300000
chunk_loop:
    mov rcx, r12
    cmp rcx, 0x7F0
    jbe chunk_ok
    mov rcx, 0x7F0
chunk_ok:
    mov r14, rcx
    mov rsi, r13
    mov rdi, {BUFFER:#x}
    rep movsb
    mov rdi, {GHCB_GPA:#x}
    mov qword ptr [rdi + 0x390], 0x7B
    mov rax, {encode_ioio(0x500, 1, False, string=True, rep=True):#x}
    mov [rdi + 0x398], rax
    mov [rdi + 0x3A0], r14
    mov rax, {BUFFER:#x}
    mov [rdi + 0x3A8], rax
    mov qword ptr [rdi + 0x3F0], 0
    mov rax, {0xF << 50:#x}
    mov [rdi + 0x3F8], rax
    mov word ptr [rdi + 0xFFA], 2
    mov dword ptr [rdi + 0xFFC], 0
    vmgexit
    cmp qword ptr [rdi + 0x398], 0
    jne chunk_fail
    add r13, r14
    sub r12, r14
    jnz chunk_loop
    jmp chunk_done
chunk_fail:
    hlt
chunk_done:
"""


def test_rep_outsb_5000_bytes_arrive_byte_exact_in_shared_buffer_chunks():
    cap = Capture()
    m, _, hv = build(register_ghcb() + REP_OUTSB_5000 + exit_sev_es(0))
    hv.io_bus.register(0x500, 4, cap)
    result = hv.run(timeout=30)
    assert result.ok, result
    assert bytes(cap.data) == bytes((i * 7 + 3) & 0xFF for i in range(5000))
    assert result.counters["vmgexit:IOIO"] == 3 + 1  # ceil(5000 / 0x7F0) chunks + exit


def test_ins_fills_the_scratch_area():
    cap = Capture()
    info1 = encode_ioio(0x500, 2, True, string=True, rep=True)
    body = call(SvmExit.IOIO, 0, sw_exit_info_1=info1, sw_exit_info_2=8, sw_scratch=BUFFER + 16)
    m, _, hv = build(register_ghcb() + body + exit_sev_es(0))
    hv.io_bus.register(0x500, 4, cap)
    assert hv.run(timeout=30).ok
    page = snapshot(m, 0)
    assert page[0x810:0x820] == b"".join((n * 0x0101).to_bytes(2, "little") for n in range(1, 9))
    assert answer(page) == (0, 0)


# -- MSR -------------------------------------------------------------------------------
def test_msr_reads_writes_and_refusals():
    body = (
        call(SvmExit.MSR, 0, rcx=0xFE)  # MTRRCAP
        + call(SvmExit.MSR, 1, rcx=0x1234_5678)  # unknown: #GP
        + call(SvmExit.MSR, 2, sw_exit_info_1=1, rcx=0xC000_0103, rax=5, rdx=0)  # TSC_AUX
        + call(SvmExit.RDTSCP, 3)
        + call(SvmExit.MSR, 4, sw_exit_info_1=1, rcx=0xFE, rax=0, rdx=0)  # read-only: #GP
    )
    m, _, result = run(body)
    assert result.ok
    p0 = snapshot(m, 0)
    assert regs(p0, "rax", "rdx") == (0x508, 0) and valid(p0, "rax", "rdx")
    for n in (1, 4):
        info1, info2 = answer(snapshot(m, n))
        event = decode_event(info2)
        assert info1 == 1 and event.valid and event.vector == Vector.GP
        assert event.event_type == EventType.EXCEPTION and event.error_code == 0
    assert answer(snapshot(m, 2)) == (0, 0)
    assert field(snapshot(m, 3), "rcx") == 5


# -- MMIO ------------------------------------------------------------------------------
def _mmio_pair(size: int, value: int, n: int) -> str:
    store = f"mov rax, {value:#x}\nmov [rdi + 0x800], rax"
    write = ghcb_call(
        {
            "sw_exit_code": SwExit.MMIO_WRITE,
            "sw_exit_info_1": MMIO_TEST_BASE + 8,
            "sw_exit_info_2": size,
            "sw_scratch": BUFFER,
        },
        snapshot=n,
        before_exit=store,
    )
    read = ghcb_call(
        {
            "sw_exit_code": SwExit.MMIO_READ,
            "sw_exit_info_1": MMIO_TEST_BASE + 8,
            "sw_exit_info_2": 8,
            "sw_scratch": BUFFER,
        },
        snapshot=n + 1,
    )
    last = ghcb_call(
        {
            "sw_exit_code": SwExit.MMIO_READ,
            "sw_exit_info_1": MMIO_TEST_BASE + 0x14,
            "sw_exit_info_2": 4,
            "sw_scratch": BUFFER,
        },
        snapshot=n + 2,
    )
    return write + read + last


def test_mmio_reads_and_writes_of_1_2_4_8_bytes_reach_the_device():
    sizes = (1, 2, 4, 8)
    value = 0x1122_3344_5566_7788
    clear = ghcb_call(
        {
            "sw_exit_code": SwExit.MMIO_WRITE,
            "sw_exit_info_1": MMIO_TEST_BASE + 8,
            "sw_exit_info_2": 8,
            "sw_scratch": BUFFER,
        },
    )
    body = "".join(clear + _mmio_pair(s, value, 3 * i) for i, s in enumerate(sizes))
    body += ghcb_call(
        {
            "sw_exit_code": SwExit.MMIO_READ,
            "sw_exit_info_1": MMIO_TEST_BASE,
            "sw_exit_info_2": 4,
            "sw_scratch": BUFFER,
        },
        snapshot=12,
    )
    m, hv, result = run(body)
    assert result.ok, result
    for i, size in enumerate(sizes):
        readback = int.from_bytes(snapshot(m, 3 * i + 1)[0x800:0x808], "little")
        assert readback == value & ((1 << (8 * size)) - 1)
        last = int.from_bytes(snapshot(m, 3 * i + 2)[0x800:0x804], "little")
        assert last == (size << 16) | 8
    assert int.from_bytes(snapshot(m, 12)[0x800:0x804], "little") == MMIO_TEST_ID


def test_mmio_scratch_outside_the_ghcb_only_with_protocol_version_1():
    fields = {
        "sw_exit_code": SwExit.MMIO_READ,
        "sw_exit_info_1": MMIO_TEST_BASE,
        "sw_exit_info_2": 4,
        "sw_scratch": CASE_GPA,
    }
    body = ghcb_call(fields, snapshot=0, version=1) + ghcb_call(fields, snapshot=1, version=2)
    body += f"mov rsi, {CASE_GPA:#x}\nmov eax, [rsi]\nmov rdi, 0x300000\nmov [rdi], eax\n"
    body += ghcb_call({**fields, "sw_exit_info_2": 16}, snapshot=2, version=2)
    m, _, result = run(body)
    assert result.ok
    assert answer(snapshot(m, 0)) == (0, 0)
    assert int.from_bytes(m.memory.read_private(0x300000, 4), "little") == MMIO_TEST_ID
    assert answer(snapshot(m, 1)) == (2, GhcbError.INVALID_SCRATCH_AREA)
    assert answer(snapshot(m, 2)) == (2, GhcbError.INVALID_INPUT)  # v2: at most 8 bytes


# -- the other NAE events and software exits ----------------------------------------------
def test_other_events_are_served():
    body = (
        call(SvmExit.RDTSC, 0)
        + call(SvmExit.RDTSC, 1)
        + call(SvmExit.RDPMC, 2, rcx=0)
        + call(SvmExit.RDPMC, 3, rcx=9)
        + call(SvmExit.WBINVD, 4)
        + call(SvmExit.INVD, 5)
        + call(SvmExit.MONITOR, 6, rax=0x300000, rcx=0, rdx=0)
        + call(SvmExit.MWAIT, 7, rax=0, rcx=0)
        + call(SvmExit.VMMCALL, 8, rax=1, cpl=0)
        + call(SvmExit.DR7_WRITE, 9, rax=0x401)
        + call(SvmExit.DR7_READ, 10)
        + call(SvmExit.DR7_WRITE, 11, rax=1 << 32)
        + call(SwExit.NMI_COMPLETE, 12)
        + call(SwExit.AP_JUMP_TABLE, 13, sw_exit_info_2=0x1234)
        + call(SwExit.AP_JUMP_TABLE, 14, sw_exit_info_1=1)
        + call(SwExit.HV_FEATURES, 15)
        + call(SwExit.AP_JUMP_TABLE, 16, sw_exit_info_1=7)
    )
    m, hv, result = run(body)
    assert result.ok, result
    t0 = field(snapshot(m, 0), "rax") | field(snapshot(m, 0), "rdx") << 32
    t1 = field(snapshot(m, 1), "rax") | field(snapshot(m, 1), "rdx") << 32
    assert t1 > t0
    assert answer(snapshot(m, 2)) == (0, 0) and field(snapshot(m, 2), "rax") == 0
    assert answer(snapshot(m, 3))[0] == 1  # RDPMC of a counter that does not exist: #GP
    assert all(answer(snapshot(m, n)) == (0, 0) for n in (4, 5, 6, 7, 9, 12, 13))
    assert field(snapshot(m, 8), "rax") == (-1000) & (2**64 - 1)  # -KVM_ENOSYS
    assert field(snapshot(m, 10), "rax") == 0x401
    assert answer(snapshot(m, 11))[0] == 1
    assert answer(snapshot(m, 14)) == (0, 0x1234)
    assert answer(snapshot(m, 15)) == (0, 0)
    assert answer(snapshot(m, 16)) == (2, GhcbError.INVALID_INPUT)


def test_termination_request_through_the_ghcb():
    body = register_ghcb() + call(SwExit.TERMINATE, 0, sw_exit_info_1=sw_terminate_info1(0, 1))
    m, _, hv = build(body + "hlt\n")
    result = hv.run(timeout=30)
    assert result.reason is RunReason.TERMINATED
    t = result.termination
    assert t is not None and (t.by, t.reason_set, t.reason_code) == ("guest", 0, 1)


def test_unsupported_event_ends_the_run():
    body = register_ghcb() + call(SwExit.UNSUPPORTED, 0, sw_exit_info_1=0x400)
    _, _, hv = build(body + "hlt\n")
    result = hv.run(timeout=30)
    assert result.reason is RunReason.TERMINATED and "NPF" in result.detail


def test_ap_reset_hold_parks_the_only_vcpu_and_the_run_ends_halted():
    _, _, hv = build(register_ghcb() + call(SwExit.AP_HLT_LOOP, 0) + exit_sev_es(0))
    result = hv.run(timeout=30)
    assert result.reason is RunReason.HALTED
    assert hv.vcpu_state(0).events.mp_state is MpState.AP_RESET_HOLD


def test_hlt_ends_the_run_halted():
    _, _, hv = build("    hlt\n")
    result = hv.run(timeout=30)
    assert result.reason is RunReason.HALTED and result.counters["HLT"] == 1


def test_debug_exit_gives_the_status_and_the_trace_shows_each_vmgexit():
    tracer = Tracer()
    m, _, hv = build(register_ghcb() + exit_sev_es(42), tracer=tracer)
    result = hv.run(timeout=30)
    assert (result.reason, result.exit_status) == (RunReason.EXIT_STATUS, 42)
    [event] = tracer.of_kind("vmgexit")
    assert event.data["name"] == "IOIO"
    assert set(event.data["valid"]) == {"rax", "sw_exit_code", "sw_exit_info_1", "sw_exit_info_2"}
    assert tracer.of_kind("ghcb-register")


def test_cr4_write_trap_keeps_the_host_informed_and_cpuid_follows_it():
    """SEV-ES: the host cannot read CR4, but the CR4 write trap tells it the new
    value (EXITINFO1); CPUID leaf 1's OSXSAVE bit follows it, as KVM does."""
    tracer = Tracer()
    body = (
        call(SvmExit.CPUID, 0, rax=1, rcx=0)
        + """
    mov rax, cr4
    or eax, 0x40000
    mov cr4, rax
    mov ecx, 0xC0000080
    rdmsr
    wrmsr
"""
        + call(SvmExit.CPUID, 1, rax=1, rcx=0)
    )
    m, hv, result = run(body, tracer=tracer)
    assert result.ok, result
    assert not field(snapshot(m, 0), "rcx") & (1 << 27)
    assert field(snapshot(m, 1), "rcx") & (1 << 27)
    assert hv.vcpu_state(0).regs.cr4 & 0x40000
    assert result.counters["CR4_WRITE_TRAP"] == 1 and result.counters["EFER_WRITE_TRAP"] == 1
    assert hv.vcpu_state(0).regs.efer & 0x500 == 0x500  # LME | LMA
    assert any("CR4 <-" in e.summary for e in tracer.of_kind("cr-trap"))


def test_hypercalls_are_pluggable_and_kernel_only():
    body = call(SvmExit.VMMCALL, 0, rax=0x42, cpl=0) + call(SvmExit.VMMCALL, 1, rax=0x42, cpl=3)
    m, _, hv = build(register_ghcb() + body + exit_sev_es(0))
    hv.hypercalls[0x42] = lambda hv, req: 7
    assert hv.run(timeout=30).ok
    assert field(snapshot(m, 0), "rax") == 7
    assert field(snapshot(m, 1), "rax") == 2**64 - 1  # -KVM_EPERM
