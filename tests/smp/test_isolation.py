"""Per-vCPU VMSA integrity, and the deterministic scheduler's reproducibility."""

from __future__ import annotations

from dataclasses import asdict

from sevx86.arch.exits import SvmExit
from sevx86.hv import RunReason
from sevx86.trace.events import Tracer

from .guests import EXIT, build
from .test_counter import COUNTER, SHARE, VCPUS

WORKERS = f"""
start:                          ; RDI = index
    mov r12, rdi
    mov ecx, 50
.work:                          ; a few #VC round trips each
    mov eax, 0x80000000
    push rcx
    cpuid
    pop rcx
    dec ecx
    jnz .work
    test r12, r12
    jnz .park
    xor eax, eax
    jmp exit_with
.park:
    cli
    hlt
    jmp .park
{EXIT}
"""


def test_tampering_with_one_vmsa_stops_only_that_vcpu():
    tracer = Tracer()
    _, _, hv = build(WORKERS, 3, tracer=tracer, quantum=300)
    done = []

    @hv.on_exit(SvmExit.VMGEXIT)
    def flip(ctx, proceed):
        proceed()
        if ctx.vcpu.index == 2 and not done:
            done.append(1)
            gpa = ctx.vcpu.vmsa_gpa  # the host sees ciphertext; it flips one bit
            byte = ctx.hv.host.memory.read(gpa + 0x100, 1)[0]
            ctx.hv.host.memory.write(gpa + 0x100, bytes([byte ^ 1]))

    result = hv.run(timeout=60)
    assert result.ok, result  # vCPU 0 finished its work
    assert set(result.dead_vcpus) == {2}
    assert result.dead_vcpus[2].startswith("vmrun-failed")
    assert hv.vcpu_state(1).dead is None
    failed = tracer.of_kind("vmrun-failed")
    assert [e.vcpu for e in failed] == [2]
    told = tracer.of_kind("vcpu-dead")
    assert [e.vcpu for e in told] == [2]


def _events(seed: int) -> list[dict]:
    tracer = Tracer()
    _, _, hv = build(COUNTER, VCPUS, seed=seed, quantum=400, tracer=tracer)
    result = hv.run(timeout=60)
    assert result.ok, result
    # The run's events minus timestamps. The launch events before them carry
    # the SP's measurement, which mixes in a fresh nonce at every launch.
    run = [e for e in tracer.events if e.kind != "launch"]
    return [{k: v for k, v in asdict(e).items() if k != "t"} for e in run]


def test_the_same_seed_gives_the_same_trace():
    first, second = _events(7), _events(7)
    assert len(first) > 4 * SHARE // 400  # many slices, several vCPUs interleaved
    assert first == second
    assert {e["vcpu"] for e in first if e["vcpu"] is not None} == set(range(VCPUS))


def test_another_seed_interleaves_differently():
    assert _events(7) != _events(8)


def test_one_vcpu_runs_unsliced_as_before():
    # A single vCPU is not sliced: max_instructions still ends the run.
    _, _, hv = build("start:\n    jmp start\n" + EXIT, 1)
    result = hv.run(timeout=30, max_instructions=10_000)
    assert result.reason is RunReason.INSTRUCTION_LIMIT
