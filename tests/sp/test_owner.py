"""The guest owner <-> platform flow through the Python API."""

from __future__ import annotations

import pytest

from sevx86.boot.digest import expected_launch_digest
from sevx86.boot.launch import launch_guest
from sevx86.boot.vcpu_types import vcpu_signature
from sevx86.sp.channel import Measurement
from sevx86.sp.owner import GuestOwner, MeasurementMismatch, PlatformVersion
from sevx86.sp.secure_processor import SecureProcessor
from tests.boot import synthetic_firmware as fw
from tests.sp.conftest import ES_POLICY

SECRET = b"guest owner's disk encryption key, 48 bytes long"


def _platform(sp: SecureProcessor) -> PlatformVersion:
    st = sp.status()
    return PlatformVersion(st.api_major, st.api_minor, st.build)


def test_full_flow_secret_reaches_only_the_guest():
    sp = SecureProcessor()
    owner = GuestOwner(ES_POLICY)
    blob = owner.launch_blob(sp.pdh_cert_export())
    image = fw.build()
    expected = expected_launch_digest(image, 4, vcpu_signature("EPYC-Genoa"))

    def answer(measurement):
        owner.verify(measurement, expected, _platform(sp))
        return owner.wrap_secret(SECRET)

    area_base, _ = fw.DEFAULT_SECRET_AREA
    guest = launch_guest(
        sp,
        image,
        vcpus=4,
        vcpu_type="EPYC-Genoa",
        policy=blob.policy,
        dh_cert=blob.dh_cert,
        session=blob.session,
        secret=answer,  # no GPA: OVMF's SEV secret area, as QEMU does
    )
    assert guest.finished
    assert guest.memory.read_private(area_base, len(SECRET)) == SECRET
    for region, dram in guest.memory.dram_image():
        for i in range(0, len(SECRET) - 15, 16):
            assert SECRET[i : i + 16] not in dram, region.name


@pytest.mark.parametrize("field", ["measure", "mnonce"])
def test_tampered_measurement_is_refused(field):
    sp = SecureProcessor()
    owner = GuestOwner(ES_POLICY)
    blob = owner.launch_blob(sp.pdh_cert_export())
    image = fw.build()
    guest = launch_guest(sp, image, dh_cert=blob.dh_cert, session=blob.session)
    expected = expected_launch_digest(image, 1, vcpu_signature("EPYC-v4"))
    owner.verify(guest.measurement, expected, _platform(sp))  # the honest one passes
    m = guest.measurement
    if field == "measure":
        bad = Measurement(bytes([m.measure[0] ^ 1]) + m.measure[1:], m.mnonce)
    else:
        bad = Measurement(m.measure, bytes([m.mnonce[0] ^ 1]) + m.mnonce[1:])
    fresh = GuestOwner(ES_POLICY, owner.keys)
    with pytest.raises(MeasurementMismatch):
        fresh.verify(bad, expected, _platform(sp))
    with pytest.raises(MeasurementMismatch):
        fresh.wrap_secret(SECRET)


def test_wrong_expectations_are_refused():
    sp = SecureProcessor()
    owner = GuestOwner(ES_POLICY)
    blob = owner.launch_blob(sp.pdh_cert_export())
    image = fw.build()
    guest = launch_guest(sp, image, vcpus=2, dh_cert=blob.dh_cert, session=blob.session)
    platform = _platform(sp)
    sig = vcpu_signature("EPYC-v4")
    with pytest.raises(MeasurementMismatch):  # the host launched 2 vCPUs, not 1
        owner.verify(guest.measurement, expected_launch_digest(image, 1, sig), platform)
    with pytest.raises(MeasurementMismatch):  # another vCPU model
        owner.verify(
            guest.measurement,
            expected_launch_digest(image, 2, vcpu_signature("EPYC-Milan")),
            platform,
        )
    with pytest.raises(MeasurementMismatch):  # another firmware version on the platform
        owner.verify(
            guest.measurement,
            expected_launch_digest(image, 2, sig),
            PlatformVersion(platform.api_major, platform.api_minor, platform.build + 1),
        )
    owner.verify(guest.measurement, expected_launch_digest(image, 2, sig), platform)


def test_wrap_secret_needs_a_verified_launch():
    owner = GuestOwner(ES_POLICY)
    with pytest.raises(MeasurementMismatch):
        owner.wrap_secret(b"early")
