"""Modes none and sev: NAE events arrive as plain exits and the host emulates them.

The guests use the real instructions (CPUID, IN/OUT, REP OUTSB, MOV to an
MMIO page, RDMSR, HLT); there is no #VC. In mode ``sev`` memory is encrypted
but the registers are the host's, so everything but string I/O from private
memory works the same.
"""

from __future__ import annotations

import pytest

from sevx86.hv import RunReason
from sevx86.hv.cpuid import CpuidTable
from sevx86.hv.devices import MMIO_TEST_ID
from sevx86.hv.vcpu_state import MpState
from tests.hv.guests import build, exit_direct, map_mmio
from tests.hv.test_ghcb_requests import Capture

OUT = 0x300000  # results, private
C_BIT = {"none": 0, "sev": 1 << 51}
MODES = ["none", "sev"]


def results(m, n: int) -> list[int]:
    raw = m.memory.read_private(OUT, 8 * n)
    return [int.from_bytes(raw[8 * i : 8 * i + 8], "little") for i in range(n)]


def store(i: int, reg: str = "rax") -> str:
    return f"    mov rdi, {OUT + 8 * i:#x}\n    mov [rdi], {reg}\n"


@pytest.mark.parametrize("mode", MODES)
def test_cpuid_answers_equal_the_installed_table(mode):
    table = {(0x1, None): (0x10, 0x20, 0x30, 0x40), (0xD, 1): (5, 6, 7, 8)}
    body = ""
    for i, (leaf, sub) in enumerate([(1, 0), (0xD, 1), (0xD, 0)]):
        body += f"    mov eax, {leaf}\n    mov ecx, {sub}\n    cpuid\n"
        body += "".join(store(4 * i + k, r) for k, r in enumerate(("rax", "rbx", "rcx", "rdx")))
    m, _, hv = build(body + exit_direct(0), mode, hv_kwargs={"cpuid": table})
    result = hv.run(timeout=30)
    assert result.ok, result
    assert results(m, 12) == [0x10, 0x20, 0x30, 0x40, 5, 6, 7, 8, 0, 0, 0, 0]


@pytest.mark.parametrize("mode", MODES)
def test_in_merges_like_the_cpu_and_out_reaches_the_serial_port(mode):
    body = (
        """
    mov rax, 0x1122334455667788
    mov dx, 0x3FD
    in al, dx
"""
        + store(0)
        + """
    mov rax, 0x1122334455667788
    mov dx, 0x1234
    in eax, dx
"""
        + store(1)
        + """
    xor eax, eax
    mov dx, 0x402
    in al, dx
"""
        + store(2)
        + """
    mov dx, 0x3F8
    mov al, 'h'
    out dx, al
    mov al, 'i'
    out dx, al
"""
        + exit_direct(0)
    )
    m, _, hv = build(body, mode)
    result = hv.run(timeout=30)
    assert result.ok
    # IN AL keeps RAX's upper bytes; IN EAX zero-extends (nothing at 0x1234: all ones).
    assert results(m, 3) == [0x1122_3344_5566_7760, 0xFFFF_FFFF, 0xE9]
    assert result.console == "hi"


REP_OUTSB = """
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
    mov rsi, 0x300000
    mov ecx, 5000
    mov dx, 0x500
    {direction}
    rep outsb
    cld
"""
PATTERN = bytes((i * 7 + 3) & 0xFF for i in range(5000))


def test_rep_outsb_5000_bytes_arrive_byte_exact():
    cap = Capture()
    m, _, hv = build(REP_OUTSB.format(direction="cld") + store(0, "rsi") + exit_direct(0), "none")
    hv.io_bus.register(0x500, 4, cap)
    result = hv.run(timeout=30)
    assert result.ok, result
    assert bytes(cap.data) == PATTERN
    assert results(m, 1) == [0x300000 + 5000]  # RSI advanced; RCX is 0


def test_rep_outsb_backwards_with_df_set():
    cap = Capture()
    body = REP_OUTSB.format(direction="std").replace(
        "mov rsi, 0x300000\n", f"mov rsi, {0x300000 + 4999:#x}\n"
    )
    m, _, hv = build(body + store(0, "rsi") + exit_direct(0), "none")
    hv.io_bus.register(0x500, 4, cap)
    assert hv.run(timeout=30).ok
    assert bytes(cap.data) == PATTERN[::-1]
    assert results(m, 1) == [0x300000 - 1]


def test_rep_insw_fills_memory():
    cap = Capture()
    body = """
    mov rdi, 0x300000
    mov ecx, 4
    mov dx, 0x500
    rep insw
""" + exit_direct(0)
    m, _, hv = build(body, "none")
    hv.io_bus.register(0x500, 4, cap)
    assert hv.run(timeout=30).ok
    assert m.memory.read_private(0x300000, 8) == bytes.fromhex("0101020203030404")


def test_sev_string_output_from_private_memory_is_ciphertext():
    """Without SEV-ES the host reads guest memory as DRAM: REP OUTSB from a
    private page hands the device ciphertext -- why SEV guests unroll it."""
    cap = Capture()
    m, _, hv = build(REP_OUTSB.format(direction="cld") + exit_direct(0), "sev")
    hv.io_bus.register(0x500, 4, cap)
    assert hv.run(timeout=30).ok
    assert len(cap.data) == 5000 and bytes(cap.data) != PATTERN


@pytest.mark.parametrize("mode", MODES)
def test_mmio_moves_of_every_width_reach_the_device(mode):
    body = (
        map_mmio(C_BIT[mode])
        + """
    mov rsi, 0xFEB00000
    mov eax, [rsi]
"""
        + store(0)
        + """
    mov qword ptr [rsi + 8], 0
    mov rax, 0x1122334455667788
    mov [rsi + 8], al
    mov rbx, [rsi + 8]
"""
        + store(1, "rbx")
        + """
    mov [rsi + 8], ax
    mov rbx, [rsi + 8]
"""
        + store(2, "rbx")
        + """
    mov [rsi + 8], eax
    mov rbx, [rsi + 8]
"""
        + store(3, "rbx")
        + """
    mov [rsi + 8], rax
    mov rbx, [rsi + 8]
"""
        + store(4, "rbx")
        + """
    mov ebx, [rsi + 0x14]
"""
        + store(5, "rbx")
        + """
    mov rbx, -1
    movzx ebx, byte ptr [rsi + 9]
"""
        + store(6, "rbx")
        + """
    mov word ptr [rsi + 8], 0x8001
    movsx rbx, word ptr [rsi + 8]
"""
        + store(7, "rbx")
        + """
    mov rbx, 0
    mov bh, [rsi + 8]
"""
        + store(8, "rbx")
        + exit_direct(0)
    )
    m, _, hv = build(body, mode)
    result = hv.run(timeout=30)
    assert result.ok, result
    r = results(m, 9)
    assert r[0] == MMIO_TEST_ID
    assert r[1:5] == [0x88, 0x7788, 0x5566_7788, 0x1122_3344_5566_7788]
    assert r[5] == (8 << 16) | 8  # last write: 8 bytes at offset 8
    assert r[6] == 0x77
    assert r[7] == (-0x7FFF) & (2**64 - 1)
    assert r[8] == 0x0100
    assert hv.mmio_test.writes == 6


@pytest.mark.parametrize("mode", MODES)
def test_refused_rdmsr_raises_gp_in_the_guest(mode):
    body = (
        """
    mov ecx, 0xFE
    rdmsr
"""
        + store(0)
        + """
    mov ecx, 0xC0000103
    mov eax, 7
    xor edx, edx
    wrmsr
    rdtscp
"""
        + store(1, "rcx")
        + """
    mov ecx, 0x12345678
    rdmsr
    hlt
gp_handler:
    mov rax, [rsp + 8]
"""
        + store(2)
        + exit_direct(13)
    )
    m, program, hv = build(body, mode, handlers={13: "gp_handler"})
    result = hv.run(timeout=30)
    assert (result.reason, result.exit_status) == (RunReason.EXIT_STATUS, 13), result
    mtrrcap, aux, gp_rip = results(m, 3)
    assert mtrrcap == 0x508 and aux == 7
    assert gp_rip == program.symbol("gp_handler") - 2 - 1  # on the faulting RDMSR


def test_hlt_with_interrupts_off_ends_halted():
    m, _, hv = build("    cli\n    hlt\n", "none")
    result = hv.run(timeout=30)
    assert result.reason is RunReason.HALTED
    assert hv.vcpu_state(0).events.mp_state is MpState.HALTED


def test_timeout_is_reported_and_the_guest_can_continue():
    m, _, hv = build("spin:\n    jmp spin\n", "none")
    result = hv.run(timeout=0.2)
    assert result.reason is RunReason.TIMEOUT
    assert hv.run(timeout=0.2).reason is RunReason.TIMEOUT


def test_string_io_past_the_end_of_guest_ram_is_refused_with_gp():
    """The host never follows a guest's RDI outside its RAM: #GP instead
    (here REP INSB whose last bytes would lie past the top of RAM)."""
    top = 64 << 20
    body = f"""
    mov rdi, {top - 8:#x}
    mov ecx, 16
    mov dx, 0x500
    rep insb
    hlt
gp_handler:
""" + exit_direct(13)
    cap = Capture()
    _, _, hv = build(body, "none", handlers={13: "gp_handler"})
    hv.io_bus.register(0x500, 4, cap)
    result = hv.run(timeout=30)
    assert (result.reason, result.exit_status) == (RunReason.EXIT_STATUS, 13), result
    assert cap.reads == 0  # refused before the device was touched


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("insn", "index"), [("outsb", "rsi"), ("insw", "rdi")], ids=["rep_outsb", "rep_insw"]
)
def test_item4_a32_string_io_zero_extends_rsi_rdi_and_rcx(mode, insn, index):
    """Issue 15 item 4: with a 32-bit address size in 64-bit mode the CPU
    writes ESI/EDI/ECX, and a 32-bit result zero-extends into the 64-bit
    register (APM vol 1 3.1.2.3; KVM's emulator ``assign_register`` does the
    same). Bits 63:32 planted in RSI/RDI and RCX must be gone afterwards."""
    cap = Capture()
    body = (
        f"""
    mov {index}, 0xA5A5A5A500300000
    mov rcx, 0x5A5A5A5A00000004
    mov dx, 0x500
    db 0x67
    rep {insn}
    mov r8, {index}
"""
        + store(0, "r8")
        + store(1, "rcx")
        + exit_direct(0)
    )
    m, _, hv = build(body, mode)
    hv.io_bus.register(0x500, 4, cap)
    result = hv.run(timeout=30)
    assert result.ok, result
    width = 1 if insn == "outsb" else 2
    assert results(m, 2) == [0x300000 + 4 * width, 0]


@pytest.mark.parametrize("mode", MODES)
def test_item5_cpuid_0xd_sizes_follow_the_xcr0_set_by_xsetbv(mode):
    """Issue 15 item 5: after XSETBV(XCR0 = x87|SSE|AVX) the host's CPUID
    leaf 0xD answers the XSAVE sizes for that XCR0. APM vol 2 11.5.2 / the
    standard layout: 512 bytes legacy area + 64 header + 256 AVX (YMM_Hi128)
    = 0x340 for both sub-leaf 0 EBX (standard) and sub-leaf 1 EBX (compacted,
    IA32_XSS = 0); it was 0x240, the size for XCR0 = 1."""
    body = """
    mov rax, cr4
    bts rax, 18
    mov cr4, rax
    xor ecx, ecx
    mov eax, 7
    xor edx, edx
    xsetbv
    xor ecx, ecx
    xgetbv
""" + store(0)
    for i, sub in enumerate((0, 1)):
        body += f"    mov eax, 0xD\n    mov ecx, {sub}\n    cpuid\n" + store(1 + i, "rbx")
    m, _, hv = build(body + exit_direct(0), mode)
    # The default table no longer offers AVX (the engine does not execute it,
    # docs/cpuid.md), so take the unfiltered model, whose leaf 0xD has the YMM
    # component: the point here is that the host follows the guest's XCR0.
    hv.cpuid = CpuidTable.default(m.config, honest=False)
    result = hv.run(timeout=30)
    assert result.ok, result
    assert results(m, 3) == [7, 0x340, 0x340]
