"""Small units: the ICR encoding, IPI targets, run states, trace rendering per vCPU."""

from __future__ import annotations

import pytest

from sevx86.arch.apic import DeliveryMode, Shorthand, decode_icr, encode_icr
from sevx86.hv.smp import MpState, initial_state
from sevx86.trace.events import Tracer
from sevx86.trace.render import mermaid, table


@pytest.mark.parametrize("x2apic", [True, False])
def test_icr_round_trips(x2apic):
    value = encode_icr(DeliveryMode.STARTUP, vector=0x9A, destination=3, x2apic=x2apic)
    icr = decode_icr(value, x2apic=x2apic)
    assert (icr.mode, icr.vector, icr.destination, icr.shorthand) == (
        DeliveryMode.STARTUP,
        0x9A,
        3,
        Shorthand.NONE,
    )
    assert not icr.is_init_deassert


def test_init_level_deassert_is_recognised():
    value = encode_icr(DeliveryMode.INIT, assert_level=False, level_triggered=True)
    assert decode_icr(value, x2apic=True).is_init_deassert


def test_aps_wait_for_sipi_unless_asked_to_run():
    assert initial_state(0, "sipi") is MpState.RUNNABLE
    assert initial_state(1, "sipi") is MpState.UNINITIALIZED
    assert initial_state(1, "run") is MpState.RUNNABLE
    with pytest.raises(ValueError):
        initial_state(1, "later")


def test_renderers_say_which_vcpu_did_what():
    tracer = Tracer()
    tracer.emit("cpu", "vc", "#VC CPUID", vcpu=0, target="guest")
    tracer.emit("cpu", "vc", "#VC IOIO", vcpu=3, target="guest")
    rows = table(tracer.events).splitlines()[2:]
    assert rows[0].split()[2] == "0" and rows[1].split()[2] == "3"
    assert "vCPU3: #35;VC IOIO" in mermaid(tracer.events)  # "#" as its Mermaid entity


def test_make_scheduler_for_the_cli():
    from sevx86.hv.scheduler import DeterministicScheduler, ParallelScheduler, make_scheduler

    det = make_scheduler("deterministic", seed=3, quantum=1000)
    assert isinstance(det, DeterministicScheduler) and (det.seed, det.quantum) == (3, 1000)
    assert isinstance(make_scheduler("parallel"), ParallelScheduler)
    with pytest.raises(ValueError):
        make_scheduler("fastest")
