"""Arbitrary guest code never crashes, hangs or silences the engine.

Random bytes run as a 64-bit guest under each mode, with the #VC handler
installed and a KVM-like hypervisor. Whatever the bytes do -- fault, loop,
execute privileged or undefined instructions, poke I/O or MMIO -- the run
must come back with a defined reason within its limits, and the trace must
have recorded how it ended.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sevx86.config import GuestConfig, GuestMode
from sevx86.harness import GuestSpec, build_machine
from sevx86.hv import Hypervisor, RunReason
from sevx86.trace.events import Tracer

PRELUDE = """
start:
    db {bytes}
    hlt
any_handler:
    hlt
"""

DEFINED = set(RunReason)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    code=st.binary(min_size=1, max_size=48),
    mode=st.sampled_from([GuestMode.SEV_ES, GuestMode.SEV, GuestMode.NONE]),
)
def test_random_guest_code_ends_with_a_defined_reason(code, mode):
    source = PRELUDE.format(bytes=", ".join(str(b) for b in code))
    handlers = {v: "any_handler" for v in range(32)}
    tracer = Tracer()
    machine, _ = build_machine(
        GuestSpec(source, handlers=handlers, mmio=[0xFEB00000]),
        GuestConfig(mode=mode, memory=4 << 20),
        tracer=tracer,
    )
    hv = Hypervisor(machine.host_view())
    result = hv.run(timeout=5, max_instructions=200_000)
    assert result.reason in DEFINED
    assert result.reason is not RunReason.HYPERVISOR_ERROR, result.detail
    assert tracer.events  # the run left its trace
