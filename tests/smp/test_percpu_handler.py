"""The #VC handler with VC_PERCPU: each vCPU uses its own GHCB and state block."""

from __future__ import annotations

from sevx86.arch.exits import SvmExit
from sevx86.asm import assemble
from sevx86.asm.guest_abi import VC_PERCPU_TSS_OFFSET, VcPercpu
from sevx86.harness import percpu_base
from sevx86.hv import RunReason
from sevx86.trace.events import Tracer

from .guests import EXIT, TAIL, build, ghcb


def test_the_single_vcpu_block_has_the_per_vcpu_layout():
    program = assemble("start:\n    hlt\n" + TAIL, base=0x100000, bits=64)
    base = program.symbol("vc_percpu0")
    for field in VcPercpu:
        label = {"FORWARD_TARGET": "vc_forward_target"}.get(field.name, f"vc_{field.name.lower()}")
        assert program.symbol(label) - base == field, field


def test_each_vcpu_serves_its_own_vc_through_its_own_ghcb():
    source = f"""
start:
    mov r12, rdi
    mov eax, 0x80000000
    cpuid                       ; #VC on every vCPU, at about the same time
    mov eax, 0x80000000
    cpuid
    lea rsi, [rel done]
    mov eax, 1
    lock xadd [rsi], rax
    test r12, r12
    jnz .park
.wait:
    pause
    cmp qword [rsi], 3
    jne .wait
    xor eax, eax
    jmp exit_with
.park:
    cli
    hlt
    jmp .park
{EXIT}
align 8
done: dq 0
"""
    tracer = Tracer()
    machine, _, hv = build(source, 3, tracer=tracer, quantum=7)
    seen: set[tuple[int, int]] = set()

    @hv.on_exit(SvmExit.VMGEXIT)
    def record(ctx, proceed):
        seen.add((ctx.vcpu.index, ctx.vmcb["ghcb_gpa"]))
        proceed()

    result = hv.run(timeout=60)
    assert result.ok, result
    assert seen == {(0, ghcb(0)), (1, ghcb(1)), (2, ghcb(2))}
    for index in range(3):
        block = percpu_base(index) + VC_PERCPU_TSS_OFFSET
        count = int.from_bytes(machine.memory.read_private(block + VcPercpu.COUNT, 8), "little")
        assert count == (3 if index == 0 else 2), index  # vCPU 0 also did the OUT
    assert result.reason is RunReason.EXIT_STATUS
