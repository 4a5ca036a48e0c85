"""Instrumenting and malicious hypervisors: what the hooks allow, and what SEV-ES stops.

The documented ways to change the hypervisor (sevx86/hv/hypervisor.py):
subclass and define ``handle_<name>``; ``on_request`` / ``on_vmgexit`` /
``on_exit`` / ``on_msr_protocol`` hooks of the form ``hook(ctx, proceed)``.
"""

from __future__ import annotations

from sevx86.arch.exits import SvmExit
from sevx86.arch.vmcb import encode_ioio
from sevx86.hv import Hypervisor, Request, RunReason
from sevx86.hv.handlers import cpuid as default_cpuid
from sevx86.trace.events import Tracer
from tests.hv.guests import build, exit_direct, exit_sev_es, field, ghcb_call, register_ghcb
from tests.hv.guests import snapshot as ghcb_snapshot

CPUID_8000001F = ghcb_call(
    {
        "sw_exit_code": SvmExit.CPUID,
        "sw_exit_info_1": 0,
        "sw_exit_info_2": 0,
        "rax": 0x8000_001F,
        "rcx": 0,
    },
    snapshot=0,
)


class LyingCbit(Hypervisor):
    """The example of the docs: report a wrong C-bit position.

    A guest that believed it would use the wrong bit as its encryption bit in
    its page tables -- and so write secrets to memory unencrypted. The guest
    cannot tell: under SEV-ES the CPUID answer is just data in the GHCB
    (SEV-SNP's CPUID page exists for this reason).
    """

    def handle_cpuid(self, req: Request) -> None:
        leaf = req.reg("rax") & 0xFFFF_FFFF  # read the input before the answer replaces it
        default_cpuid(self, req)
        if leaf == 0x8000_001F:
            req.set_reg("rbx", (req.reg("rbx") & ~0x3F) | 47)


def test_a_subclass_lies_about_the_c_bit_and_the_guest_cannot_tell():
    m, _, hv = build(register_ghcb() + CPUID_8000001F + exit_sev_es(0), hv_class=LyingCbit)
    result = hv.run(timeout=30)
    assert result.ok
    page = ghcb_snapshot(m, 0)
    assert field(page, "rbx") & 0x3F == 47  # the real C-bit is 51
    assert field(page, "sw_exit_info_1") == 0  # a perfectly normal answer


def test_a_hook_observes_without_changing_anything():
    seen: list[tuple[int, int]] = []

    def spy(req, proceed):
        proceed()
        seen.append((req.reg("rax"), req.reg("rbx")))

    m, _, hv = build(register_ghcb() + CPUID_8000001F + exit_sev_es(0))
    hv.on_vmgexit(SvmExit.CPUID, spy)
    assert hv.run(timeout=30).ok
    assert seen == [(field(ghcb_snapshot(m, 0), "rax"), field(ghcb_snapshot(m, 0), "rbx"))]


def test_a_hook_replaces_the_handling_of_a_port():
    def fake_port(req, proceed):
        if (req.info1 >> 16) == 0x500:
            req.set_reg_part("rax", 0x5A, 1)  # no device: the hook answers itself
        else:
            proceed()

    body = ghcb_call(
        {
            "sw_exit_code": SvmExit.IOIO,
            "sw_exit_info_1": encode_ioio(0x500, 1, True),
            "sw_exit_info_2": 0,
        },
        snapshot=0,
    )
    m, _, hv = build(register_ghcb() + body + exit_sev_es(0))
    hv.on_request(SvmExit.IOIO, fake_port)
    assert hv.run(timeout=30).ok  # the debug-exit OUT still went through proceed()
    assert field(ghcb_snapshot(m, 0), "rax") == 0x5A


def test_flipping_a_vmsa_byte_makes_the_next_vmrun_fail_cleanly():
    """The host owns the page holding the VMSA and may write it -- but the
    Secure Processor checks its integrity at every VMRUN."""
    flipped: list[int] = []

    def flip(ctx, proceed):
        proceed()
        gpa = ctx.vcpu.vmsa_gpa
        byte = ctx.hv.host.memory.read(gpa + 0x1F8, 1)  # the encrypted RAX slot
        ctx.hv.host.memory.write(gpa + 0x1F8, bytes([byte[0] ^ 1]))
        flipped.append(gpa)

    m, _, hv = build(register_ghcb() + CPUID_8000001F + exit_sev_es(0))
    hv.on_exit(SvmExit.VMGEXIT, flip)
    result = hv.run(timeout=30)
    assert result.reason is RunReason.VMRUN_FAILED
    assert "integrity" in result.detail and len(flipped) == 1
    again = hv.run(timeout=30)  # the vCPU is dead for good
    assert again.reason is RunReason.VMRUN_FAILED


def test_without_es_the_host_rewrites_any_register_with_es_it_sees_none():
    """Mode sev: a CPUID exit hands the host every register (here it plants
    a value in RSI). Mode sev-es: the exit carries no registers at all."""
    body = """
    xor esi, esi
    mov eax, 0
    cpuid
    mov rdi, 0x300000
    mov [rdi], rsi
""" + exit_direct(0)
    m, _, hv = build(body, "sev")

    def plant(ctx, proceed):
        ctx.exit.regs["rsi"] = 0xBAD
        proceed()

    hv.on_exit(SvmExit.CPUID, plant)
    assert hv.run(timeout=30).ok
    assert int.from_bytes(m.memory.read_private(0x300000, 8), "little") == 0xBAD

    regs_seen: list[object] = []
    _, _, hv_es = build(register_ghcb() + exit_sev_es(0))
    hv_es.on_exit(
        SvmExit.VMGEXIT, lambda ctx, proceed: (regs_seen.append(ctx.exit.regs), proceed())
    )
    assert hv_es.run(timeout=30).ok
    assert regs_seen and all(r is None for r in regs_seen)


# -- one CPUID path: the MSR protocol's CPUID goes through the same handler and hooks ----
def _firmware_boot(**kw):
    from tests.firmware.conftest import boot

    return boot(**kw)


def test_a_cpuid_hook_sees_the_msr_protocol_cpuid_of_the_firmwares_c_bit_discovery():
    seen: list[tuple[int, str]] = []

    def spy(req, proceed):
        proceed()
        seen.append((req.reg("rax") & 0xFFFF_FFFF, type(req).__name__))

    run = _firmware_boot(setup=lambda hv: hv.on_request(SvmExit.CPUID, spy))
    assert run.result.exit_status == 7, run.result
    # The early boot asks CPUID 0x8000001F through the GHCB MSR (paging off, no GHCB yet).
    assert (0x8000_001F, "MsrCpuidRequest") in seen
    msr_cpuids = run.result.counters["msr-protocol:CPUID_REQ"]
    assert sum(1 for _, kind in seen if kind == "MsrCpuidRequest") == msr_cpuids > 0


class LyingCbitEarly(LyingCbit):
    """The same lie, now also told to the firmware's MSR-protocol C-bit discovery."""


def test_a_handle_cpuid_lie_in_the_early_boot_is_refused_by_the_firmware():
    run = _firmware_boot(hv_class=LyingCbitEarly)
    # SEV information still says 51, CPUID now says 47: the firmware terminates
    # (GHCB termination request, exit status 120 on the command line).
    assert run.result.reason is RunReason.TERMINATED, run.result
    assert run.result.termination is not None and run.result.termination.by == "guest"
    answers = [e.summary for e in run.events("msr-protocol") if "0x8000001f EBX" in e.summary]
    assert answers and "cbitpos 47" in answers[0]


# -- issue 15 item 6: the trace shows what the guest received, after the hooks ------------
def test_the_trace_shows_the_answer_the_guest_received_after_the_hooks():
    from sevx86.arch.ghcb import GhcbMsr, decode_sev_info, msr_sev_info_response

    def lie(req, proceed):  # the README's lie.py
        proceed()
        req.response = msr_sev_info_response(2, 1, 47)

    run = _firmware_boot(setup=lambda hv: hv.on_msr_protocol(GhcbMsr.SEV_INFO_REQ, lie))
    [event] = [e for e in run.events("msr-protocol") if "SEV information" in e.summary]
    assert decode_sev_info(event.data["response"]).cbitpos == 47
    assert "cbitpos 47" in event.summary and "cbitpos 51" not in event.summary
    assert event.summary.endswith("[changed by a hook]") and event.data["hook"]
    # The honest answers are not marked.
    others = [e for e in run.events("msr-protocol") if e is not event]
    assert others and not any("hook" in e.summary or e.data["hook"] for e in others)


def test_the_trace_marks_a_ghcb_answer_a_hook_turned_into_an_error():
    def refuse(req, proceed):
        proceed()
        req.result = 2  # SW_EXITINFO1 = 2 (error), SW_EXITINFO2 = 0 from the handler

    tracer = Tracer()
    m, _, hv = build(register_ghcb() + CPUID_8000001F + exit_sev_es(0), tracer=tracer)
    hv.on_vmgexit(SvmExit.CPUID, refuse)
    hv.run(timeout=30)
    assert field(ghcb_snapshot(m, 0), "sw_exit_info_1") == 2  # what the guest received
    [answer] = [e for e in tracer.of_kind("ghcb-answer") if e.summary.startswith("CPUID")]
    assert answer.data["info1"] == 2
    assert answer.summary.startswith("CPUID -> error ") and " ok" not in answer.summary
    assert answer.summary.endswith("[changed by a hook]")


def test_the_trace_marks_an_answer_a_hook_gave_without_the_handler():
    def replace(req, proceed):
        req.set_reg("rax", 1)
        req.set_reg("rbx", 2)
        req.set_reg("rcx", 3)
        req.set_reg("rdx", 4)

    tracer = Tracer()
    m, _, hv = build(register_ghcb() + CPUID_8000001F + exit_sev_es(0), tracer=tracer)
    hv.on_request(SvmExit.CPUID, replace)
    assert hv.run(timeout=30).ok
    [answer] = [e for e in tracer.of_kind("ghcb-answer") if e.summary.startswith("CPUID")]
    assert "rbx=0x2" in answer.summary and answer.summary.endswith("[answered by a hook]")
