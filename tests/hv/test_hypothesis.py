"""Hypothesis: arbitrary GHCB contents and GHCB MSR values never hurt the host.

One machine serves every example: its guest loops forever -- read the next
case from shared pages the host wrote (a GHCB image, or a GHCB MSR value),
put it in place, VMGEXIT. An ``on_exit`` hook ends each ``run()`` right after
the case's VMGEXIT was served. Properties checked per case:

* ``run()`` returns (never raises) and never reports a hypervisor error;
* the guest gets a defined answer: SW_EXITINFO1 is 0 (success), 1 (an
  exception, #GP or #UD, to raise) or 2 (an error with a GhcbError reason) --
  or the run ends with a termination / the debug-exit status;
* every host read or write of guest memory lies inside guest RAM.
"""

from __future__ import annotations

import functools

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sevx86.arch.exits import SvmExit, SwExit
from sevx86.arch.ghcb import GHCB, GHCB_REGISTER_NAMES, GhcbError, set_valid
from sevx86.arch.vectors import Vector
from sevx86.arch.vmcb import decode_event, encode_ioio
from sevx86.hv import RunReason
from sevx86.hv.validate import REQUIRED
from sevx86.hv.vcpu_state import MpState
from tests.hv.guests import CASE_GPA, CONTROL_GPA, GHCB_GPA, GHCB_MSR, build, register_ghcb

RAM_TOP = 64 << 20
SAFE_RAM = (0x300000, 0x3E0000)  # scratch for protocol-v1 cases: nothing lives there

LOOP = f"""
case_loop:
    mov rsi, {CONTROL_GPA:#x}
    mov rax, [rsi]
    test rax, rax
    jnz msr_case
    mov rsi, {CASE_GPA:#x}
    mov rdi, {GHCB_GPA:#x}
    mov ecx, 512
    rep movsq
    vmgexit
    jmp case_loop
msr_case:
    mov rdx, rax
    shr rdx, 32
    mov ecx, {GHCB_MSR:#x}
    wrmsr
    vmgexit
    mov ecx, {GHCB_MSR:#x}
    mov eax, {GHCB_GPA:#x}
    xor edx, edx
    wrmsr
    jmp case_loop
"""


class RecordingMemory:
    """The host's memory view, recording every address the hypervisor touches."""

    def __init__(self, inner):
        self.inner = inner
        self.accesses: list[tuple[str, int, int]] = []

    def read(self, gpa: int, size: int) -> bytes:
        self.accesses.append(("read", gpa, size))
        return self.inner.read(gpa, size)

    def write(self, gpa: int, data: bytes) -> None:
        self.accesses.append(("write", gpa, len(data)))
        self.inner.write(gpa, data)

    def contains(self, gpa: int, size: int = 1) -> bool:
        return self.inner.contains(gpa, size)

    def regions(self):
        return self.inner.regions()


class Rig:
    def __init__(self) -> None:
        self.machine, _, self.hv = build(register_ghcb() + LOOP)
        self.real = self.hv.host.memory
        self.memory = RecordingMemory(self.real)
        self.hv.on_exit(SvmExit.VMGEXIT, self._after_case)
        self.armed = False
        # First run: the guest registers its GHCB and waits at the first case.
        self.real.write(CONTROL_GPA, bytes(8))
        self.real.write(CASE_GPA, bytes(0x1000))

    def _after_case(self, ctx, proceed) -> None:
        proceed()
        if self.armed:
            self.armed = False
            ctx.hv.exit_status(0)  # end this run(); the guest continues next time

    def reset(self) -> None:
        state = self.hv.vcpu_state(0)
        if state.events.mp_state in (MpState.AP_RESET_HOLD, MpState.HALTED):
            state.events.mp_state = MpState.RUNNABLE
        state.ghcb.registered = GHCB_GPA

    def serve(self, msr: int, page: bytes):
        self.reset()
        self.real.write(CONTROL_GPA, msr.to_bytes(8, "little"))
        self.real.write(CASE_GPA, page)
        self.hv.host.memory = self.memory
        self.memory.accesses.clear()
        self.armed = True
        try:
            return self.hv.run(timeout=20)
        finally:
            self.hv.host.memory = self.real


@functools.cache
def rig() -> Rig:
    r = Rig()
    r.serve(0, bytes(0x1000))  # the GHCB gets registered before the first real case
    return r


# -- strategies ------------------------------------------------------------------------
U64 = st.integers(0, 2**64 - 1)


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """Pick a strategy with the given weights (the first is what shrinking aims for)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


codes = weighted(
    (8, st.sampled_from(sorted(REQUIRED))),
    (1, st.sampled_from([0x74, 0x400, 0x8000_0010, 0x8000_0013, 0x8000_0018, 0])),
    (1, U64),
)
ioio_info = st.builds(
    lambda port, size, is_in, string, rep, addr: encode_ioio(
        port, size, is_in, string=string, rep=rep, addr_size=addr
    ),
    st.sampled_from([0x3F8, 0x3FD, 0x402, 0x80, 0x500, 0xFFFF, 0xF4]),
    st.sampled_from([1, 2, 4]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from([16, 32, 64]),
)
scratch = weighted(
    (6, st.integers(GHCB_GPA + 0x800, GHCB_GPA + 0xFF0)),
    (1, st.integers(GHCB_GPA + 0x7F0, GHCB_GPA + 0x1000)),
    (1, st.integers(GHCB_GPA, GHCB_GPA + 0xFFF)),
    (2, st.integers(*SAFE_RAM)),
    (1, st.integers(RAM_TOP - 0x100, RAM_TOP + 0x100)),
    (1, st.just(0)),
    (1, st.integers(2**64 - 0x1000, 2**64 - 1)),
    (1, st.integers(RAM_TOP, 2**64 - 1)),
)
small = weighted((6, st.integers(0, 16)), (2, st.integers(0, 0x2000)), (1, U64))


@st.composite
def ghcb_pages(draw) -> bytes:
    if draw(st.integers(0, 9)) == 9:  # now and then a page of pure noise
        return draw(st.binary(min_size=0x1000, max_size=0x1000))
    code = draw(codes)
    if code == SvmExit.IOIO:
        info1 = draw(weighted((8, ioio_info), (1, U64)))
    elif code in (SvmExit.MSR, SwExit.AP_JUMP_TABLE):
        info1 = draw(weighted((8, st.sampled_from([0, 1])), (1, U64)))
    elif code in (SwExit.MMIO_READ, SwExit.MMIO_WRITE):
        info1 = draw(weighted((8, st.integers(0xFEB0_0000, 0xFEB0_0020)), (1, U64)))
    elif code == SwExit.TERMINATE:
        info1 = draw(weighted((8, st.integers(0, 0xFFF)), (1, U64)))
    else:
        info1 = draw(small)
    fields = {
        "sw_exit_code": code,
        "sw_exit_info_1": info1,
        "sw_exit_info_2": draw(small),
        "sw_scratch": draw(scratch),
        "rax": draw(weighted((4, st.sampled_from([0, 1, 7, 0xD, 0x8000_001F])), (1, U64))),
        "rcx": draw(weighted((4, st.sampled_from([0, 1, 0xFE, 0x10, 0xC000_0103])), (1, U64))),
        "rdx": draw(U64),
        "rbx": draw(U64),
        "cpl": draw(weighted((4, st.just(0)), (1, st.integers(0, 255)))),
        "xcr0": draw(weighted((4, st.sampled_from([1, 3, 7])), (1, U64))),
        "xss": draw(U64),
    }
    buf = bytearray(0x1000)
    for name, value in fields.items():
        f = GHCB[name]
        f.write(buf, value & ((1 << (8 * f.size)) - 1))
    names = [n for n in fields if n in GHCB_REGISTER_NAMES or n.startswith("sw_")]
    chosen = draw(st.lists(st.sampled_from(names), unique=True))
    bitmap = draw(
        weighted(
            (7, st.just(set_valid(0, *names))),
            (2, st.just(set_valid(0, *chosen))),
            (1, st.integers(0, 2**128 - 1)),
        )
    )
    GHCB["valid_bitmap"].write(buf, bitmap)
    version = weighted((12, st.just(2)), (4, st.just(1)), (1, st.sampled_from([0, 3, 0xFFFF])))
    usage = weighted((15, st.just(0)), (1, st.sampled_from([1, 0xFFFF_FFFF])))
    GHCB["protocol_version"].write(buf, draw(version))
    GHCB["ghcb_usage"].write(buf, draw(usage))
    return bytes(buf)


# MSR-protocol values: any GHCBInfo, any data. A page-aligned value would be a
# GHCB GPA: keep those to pages the guest can afford to have answered in.
msr_values = st.one_of(
    st.builds(
        lambda info, data: (data << 12) | info, st.integers(1, 0xFFF), st.integers(0, 2**52 - 1)
    ),
    st.builds(
        lambda info, data: (data << 12) | info,
        st.sampled_from([0x002, 0x004, 0x006, 0x010, 0x012, 0x014, 0x016, 0x080, 0x100]),
        st.integers(0, 2**52 - 1) | st.integers(0, 0x4000),
    ),
    st.sampled_from([CASE_GPA, RAM_TOP, 0xFEB0_0000, 2**64 - 0x1000]),
)

DEFINED_ERRORS = {int(e) for e in GhcbError}


def _check_accesses(r: Rig) -> None:
    for kind, gpa, size in r.memory.accesses:
        assert r.real.contains(gpa, size), f"{kind} outside guest RAM: {gpa:#x}+{size:#x}"


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(page=ghcb_pages())
def test_any_ghcb_content_gets_a_defined_answer(page):
    r = rig()
    result = r.serve(0, page)
    assert result.reason in (RunReason.EXIT_STATUS, RunReason.TERMINATED), result
    _check_accesses(r)
    if result.reason is RunReason.TERMINATED or result.exit_status != 0:
        event(f"run ended: {result.reason.value}")
        return  # a termination request, or the case wrote the debug-exit port
    answer = r.real.read(GHCB_GPA, 0x1000)
    info1 = GHCB["sw_exit_info_1"].read(answer) & 0xFFFF_FFFF
    info2 = GHCB["sw_exit_info_2"].read(answer)
    assert info1 in (0, 1, 2), hex(info1)
    if info1 == 2:
        assert info2 in DEFINED_ERRORS, hex(info2)
    event(f"answer {info1}" + (f" {GhcbError(info2).name}" if info1 == 2 else ""))
    if info1 == 1:
        injected = decode_event(info2)
        assert injected.valid and injected.vector in (Vector.GP, Vector.UD)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=msr_values)
def test_any_ghcb_msr_value_is_answered_or_refused(value):
    r = rig()
    result = r.serve(value, bytes(0x1000))
    assert result.reason in (RunReason.EXIT_STATUS, RunReason.TERMINATED), result
    _check_accesses(r)
    if value & 0xFFF == 0x100:
        assert result.termination is not None and result.termination.by == "guest"
