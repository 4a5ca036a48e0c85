"""The SP's launch digest equals sev-snp-measure --mode seves, bit for bit.

sev-snp-measure is the independent oracle: it is called through its Python
API here (and through its CLI in tests/cli). Firmware paths are a parameter
so sevx86's own firmware can join the list when it exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sevx86.boot.digest import expected_launch_digest
from sevx86.boot.launch import launch_guest
from sevx86.boot.ovmf import OvmfError
from sevx86.boot.vcpu_types import vcpu_signature
from sevx86.sp.owner import GuestOwner, MeasurementMismatch, PlatformVersion
from sevx86.sp.policy import GuestPolicy, PolicyFlag
from sevx86.sp.secure_processor import SecureProcessor
from tests.boot import synthetic_firmware as fw
from tests.oracle import sev_snp_measure
from tests.ovmf import OVMF_DIR

REAL_FIRMWARE = [OVMF_DIR / "OVMF_CODE.fd", OVMF_DIR / "OVMF_CODE_4M.fd"]


def _oracle(path: Path, vcpus: int, vcpu_type: str) -> bytes:
    sevsnp_guest = sev_snp_measure("guest")
    SevMode = sev_snp_measure("sev_mode").SevMode
    sig = vcpu_signature(vcpu_type)
    return sevsnp_guest.calc_launch_digest(
        SevMode.SEV_ES, vcpus, sig, str(path), None, None, None, 0
    )


def _firmware_params():
    for path in REAL_FIRMWARE:
        yield pytest.param(
            path,
            marks=[
                pytest.mark.ovmf,
                pytest.mark.skipif(not path.exists(), reason=f"{path} absent (Debian's ovmf)"),
            ],
            id=path.name,
        )


@pytest.mark.parametrize("path", list(_firmware_params()))
@pytest.mark.parametrize(
    ("vcpus", "vcpu_type"),
    [(1, "EPYC"), (2, "EPYC-v4"), (4, "EPYC-Rome"), (3, "EPYC-Milan"), (8, "EPYC-Genoa")],
)
def test_launch_digest_equals_sev_snp_measure(path, vcpus, vcpu_type):
    guest = launch_guest(SecureProcessor(), path.read_bytes(), vcpus=vcpus, vcpu_type=vcpu_type)
    expected = _oracle(path, vcpus, vcpu_type)
    assert guest.launch_digest == expected
    assert expected_launch_digest(path.read_bytes(), vcpus, vcpu_signature(vcpu_type)) == expected
    assert len(guest.vmsa_spas) == vcpus


@pytest.mark.parametrize("vcpus", [1, 2, 5])
def test_synthetic_firmware_digest_equals_sev_snp_measure(tmp_path, vcpus):
    path = tmp_path / "synthetic.fd"
    path.write_bytes(fw.build())
    guest = launch_guest(SecureProcessor(), path.read_bytes(), vcpus=vcpus, vcpu_type="EPYC-Milan")
    assert guest.launch_digest == _oracle(path, vcpus, "EPYC-Milan")


def test_one_changed_firmware_byte_changes_the_digest():
    image = bytearray(fw.build())
    before = launch_guest(SecureProcessor(), bytes(image), vcpus=2).launch_digest
    image[0x1234] ^= 0x01
    after = launch_guest(SecureProcessor(), bytes(image), vcpus=2).launch_digest
    assert before != after


def test_owner_refuses_the_measurement_of_modified_firmware():
    sp = SecureProcessor()
    status = sp.status()
    platform = PlatformVersion(status.api_major, status.api_minor, status.build)
    good = fw.build()
    expected = expected_launch_digest(good, 2, vcpu_signature("EPYC-v4"))
    evil = bytearray(good)
    evil[0x100] ^= 0xFF
    owner = GuestOwner(GuestPolicy.make(PolicyFlag.NODBG | PolicyFlag.ES))
    blob = owner.launch_blob(sp.pdh_cert_export())
    guest = launch_guest(
        sp, bytes(evil), vcpus=2, policy=blob.policy, dh_cert=blob.dh_cert, session=blob.session
    )
    with pytest.raises(MeasurementMismatch):
        owner.verify(guest.measurement, expected, platform)
    with pytest.raises(MeasurementMismatch):  # and so it wraps no secret
        owner.wrap_secret(b"k" * 16)


def test_flash_layout_and_encryption(tmp_path):
    image = fw.build()
    varstore = bytes(range(256)) * 32  # 8 KiB
    guest = launch_guest(SecureProcessor(), image, vcpus=2, varstore=varstore)
    top = 1 << 32
    assert guest.flash_base == top - len(image)
    assert guest.varstore_base == guest.flash_base - len(varstore)
    memory = guest.memory
    # pflash0 is encrypted in place: the guest (C=1) sees the image, the host does not.
    assert memory.read_private(guest.flash_base, len(image)) == image
    assert memory.read_dram(guest.flash_base, 0x1000) != image[:0x1000]
    # The varstore is neither encrypted nor measured: the host sees it as loaded.
    assert memory.read_dram(guest.varstore_base, len(varstore)) == varstore
    assert guest.launch_digest == _oracle_bytes(tmp_path, image, 2)
    for spa in guest.vmsa_spas:
        region = memory.region_at(spa)
        assert region is not None and not region.guest_visible


def _oracle_bytes(tmp_path: Path, image: bytes, vcpus: int) -> bytes:
    path = tmp_path / "image.fd"
    path.write_bytes(image)
    return _oracle(path, vcpus, "EPYC-v4")


def test_es_launch_without_reset_block_is_refused_and_leaves_no_guest():
    sp = SecureProcessor()
    with pytest.raises(OvmfError):
        launch_guest(sp, fw.build(ap_reset=None), vcpus=1)
    assert sp.status().guest_count == 0


def test_plain_sev_launch_measures_the_firmware_only():
    import hashlib

    image = fw.build()
    guest = launch_guest(SecureProcessor(), image, policy=GuestPolicy.make(PolicyFlag.NODBG))
    assert guest.vmsa_spas == ()
    assert guest.launch_digest == hashlib.sha256(image).digest()


def test_launch_failure_decommissions_the_guest():
    sp = SecureProcessor()

    def bad_secret(measurement):
        raise RuntimeError("owner went away")

    with pytest.raises(RuntimeError):
        launch_guest(sp, fw.build(), secret=bad_secret)
    assert sp.status().guest_count == 0


def test_config_must_agree_with_the_launch():
    from sevx86.config import GuestConfig, GuestMode

    with pytest.raises(ValueError, match="sev-es"):
        launch_guest(SecureProcessor(), fw.build(), config=GuestConfig(mode=GuestMode.SEV))
    with pytest.raises(ValueError, match="disagrees"):
        launch_guest(SecureProcessor(), fw.build(), vcpus=2, config=GuestConfig(vcpus=3))
    guest = launch_guest(SecureProcessor(), fw.build(), config=GuestConfig(vcpus=3))
    assert len(guest.vmsa_spas) == 3
