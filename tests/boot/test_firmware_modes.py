"""FirmwareBoot launches SEV-ES guests, or SEV ones whose vCPUs start from a host-held state."""

from __future__ import annotations

import pytest

from sevx86.boot.firmware_run import FirmwareBoot
from sevx86.config import GuestConfig, GuestMode
from sevx86.machine import LaunchError, Machine


def test_an_unencrypted_firmware_boot_is_refused():
    with pytest.raises(ValueError, match="SEV or SEV-ES"):
        FirmwareBoot(b"", mode="none")


def test_an_sev_es_vcpu_cannot_be_adopted_from_a_host_state():
    machine = Machine(GuestConfig(mode=GuestMode.SEV_ES, memory=1 << 20))
    with pytest.raises(LaunchError):
        machine.adopt_vcpus(states=[bytes(4096)])


def test_sev_vcpus_are_adopted_from_their_initial_states():
    machine = Machine(GuestConfig(mode=GuestMode.SEV, memory=1 << 20, vcpus=2))
    machine.adopt_vcpus(states=[bytes(4096)] * 2)
    assert [v.index for v in machine.vcpus] == [0, 1]
    assert all(v.vmsa_spa is None for v in machine.vcpus)
