"""Engine behaviour the hypervisor relies on, found while writing it (reported to the lead).

Each test states the architectural rule it checks.
"""

from __future__ import annotations

from sevx86.arch.ghcb import decode_sev_info
from tests.hv.guests import (
    GHCB_MSR,
    SNAP_BASE,
    build,
    exit_direct,
    exit_sev_es,
    map_mmio,
    register_ghcb,
)


def test_first_vmrun_loads_the_ghcb_msr_the_host_set():
    """KVM puts the SEV information response in the GHCB MSR at vCPU reset
    (sev_es_init_vmcb); the guest may read it before any VMGEXIT. VMRUN must
    load the VMCB's GHCB GPA field into the MSR on the first entry too."""
    body = (
        f"""
    mov ecx, {GHCB_MSR:#x}
    rdmsr
    mov rdi, {SNAP_BASE:#x}
    mov [rdi], eax
    mov [rdi + 4], edx
"""
        + register_ghcb()
        + exit_sev_es(0)
    )
    m, _, hv = build(body)
    result = hv.run(timeout=10)
    assert result.ok, result
    value = int.from_bytes(m.memory.read_private(SNAP_BASE, 8), "little")
    info = decode_sev_info(value)
    assert (info.min_version, info.max_version, info.cbitpos) == (1, 2, 51)


def test_npf_exitinfo2_is_the_faulting_gpa():
    """APM vol 2 15.25.6: EXITINFO2 of a nested page fault is the faulting
    guest physical address, byte-exact."""
    seen: list[int] = []
    body = (
        map_mmio()
        + """
    mov rsi, 0xFEB00000
    mov rax, [rsi + 0x18]
"""
        + exit_direct(0)
    )
    _, _, hv = build(body, "none")

    def record(ctx, proceed):
        seen.append(ctx.exit.info2)
        proceed()

    hv.on_exit(0x400, record)
    assert hv.run(timeout=10).ok
    assert seen == [0xFEB0_0018]


def test_vmrun_timeouts_use_one_reused_watchdog_thread():
    """A timeout per VMRUN used to start a threading.Timer each time (about
    0.3 ms, a third of a #VC round trip); now one watchdog thread per vCPU
    serves every VMRUN, still stops a spinning guest, and dies with the vCPU."""
    import gc
    import threading
    import time
    import weakref

    from sevx86.hv import RunReason

    m, _, hv = build(register_ghcb() + "spin:\n    jmp spin\n")
    before = threading.active_count()
    start = time.perf_counter()
    result = hv.run(timeout=0.3)
    assert result.reason is RunReason.TIMEOUT
    assert time.perf_counter() - start < 5
    for _ in range(20):  # more VMRUNs with a timeout: no new threads
        assert hv.run(timeout=0.05).reason is RunReason.TIMEOUT
    assert threading.active_count() <= before + 1
    vcpu = weakref.ref(m.vcpus[0])
    del m, hv, result
    # Two passes: the host view releases its machine from a weakref callback
    # (sevx86.machine's token table), which runs during the first collection.
    gc.collect()
    gc.collect()
    assert vcpu() is None
