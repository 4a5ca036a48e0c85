"""The one launch owner (sevx86.sp.launch): its steps, its trace, its policy rule."""

from __future__ import annotations

import pytest

from sevx86.arch.vmsa import VMSA
from sevx86.config import GuestConfig, GuestMode
from sevx86.sp.launch import GuestLaunch, LaunchError, LaunchStage, resolve_policy
from sevx86.sp.policy import GuestPolicy
from sevx86.trace.events import Tracer

CONFIG = GuestConfig(mode=GuestMode.SEV_ES, memory=1 << 20)


def test_the_steps_go_in_the_sev_api_order_and_trace_themselves():
    tracer = Tracer()
    launch = GuestLaunch(CONFIG, tracer=tracer)
    with pytest.raises(LaunchError, match="LAUNCH_UPDATE_DATA in launch stage new"):
        launch.update_data(0x1000, b"x")
    launch.start()
    launch.update_data(0x1000, b"\x90" * 16, name="code")
    launch.update_vmsa(bytes(4096))
    assert launch.measure() is not None and launch.stage is LaunchStage.MEASURED
    with pytest.raises(LaunchError, match="LAUNCH_UPDATE_VMSA in launch stage measured"):
        launch.update_vmsa(bytes(4096))
    launch.finish()
    assert launch.finished and launch.launch_digest is not None
    steps = [e.summary.split()[0] for e in tracer.of_kind("launch")]
    assert steps == [
        "LAUNCH_START",
        "LAUNCH_UPDATE_DATA",
        "LAUNCH_UPDATE_VMSA",
        "LAUNCH_MEASURE:",
        "LAUNCH_FINISH",
    ]


def test_mode_none_goes_through_the_same_steps_without_a_secure_processor():
    tracer = Tracer()
    launch = GuestLaunch(GuestConfig(mode=GuestMode.NONE, memory=1 << 20), tracer=tracer)
    launch.start()
    launch.update_data(0x1000, b"plain", name="code")
    with pytest.raises(LaunchError, match="needs an SEV-ES guest"):
        launch.update_vmsa(bytes(4096))
    assert launch.measure() is None
    launch.finish()
    assert launch.sp is None and launch.launch_digest is None
    assert not tracer.of_kind("launch") and len(tracer.of_kind("load")) == 1
    assert launch.memory is not None and launch.memory.read_dram(0x1000, 5) == b"plain"


def test_one_place_computes_the_default_policy_and_checks_it_against_the_mode():
    assert resolve_policy(GuestMode.SEV_ES, None) == GuestPolicy(0x5)  # QEMU's NODBG | ES
    assert resolve_policy(GuestMode.SEV, None) == GuestPolicy(0x1)
    assert resolve_policy(GuestMode.NONE, None) is None
    with pytest.raises(LaunchError, match="lacks the SEV-ES bit"):
        resolve_policy(GuestMode.SEV_ES, 0x1)
    with pytest.raises(LaunchError, match="needs an encrypted guest"):
        resolve_policy(GuestMode.NONE, 0x5)


def test_every_builder_starts_plain_sev_aps_at_the_same_reset_address():
    """harness-free builders: boot_machine (our firmware) and FirmwareBoot agree (issue 12)."""
    from sevx86.boot.firmware import boot_machine, flash_image
    from sevx86.boot.firmware_run import FirmwareBoot
    from sevx86.boot.ovmf import OvmfImage

    config = GuestConfig(mode=GuestMode.SEV, memory=32 << 20, vcpus=2)
    booted = boot_machine(b"\xf4", config)
    ap_reset = OvmfImage.parse(booted.image).sev_es_reset_addr()
    fw = FirmwareBoot(flash_image(b"\xf4", memory=32 << 20), mode="sev", vcpus=2, memory=32 << 20)
    for states in (booted.launch.states, fw.launched.states):
        cs_base = VMSA.read(states[1], "cs.base")
        assert cs_base + VMSA.read(states[1], "rip") == ap_reset
