"""The flash image: layout, footer table, cache, and its launch digest.

sev-snp-measure is the independent oracle for the digest, as in
tests/boot/test_launch_digest.py.
"""

from __future__ import annotations

import pytest

from sevx86.asm import assemble
from sevx86.asm import fw_abi as abi
from sevx86.boot import firmware
from sevx86.boot.firmware import (
    FirmwareError,
    assemble_firmware,
    boot_machine,
    firmware_code,
    flash_image,
)
from sevx86.boot.ovmf import OvmfImage
from sevx86.boot.vcpu_types import vcpu_signature
from sevx86.config import GuestConfig
from tests.oracle import sev_snp_measure

PAYLOAD = assemble("start:\n    mov eax, 3\n    ret\n", base=abi.PAYLOAD_GPA).code


@pytest.fixture(scope="module")
def build():
    return assemble_firmware()


def test_cached_firmware_is_what_the_sources_assemble_to(build):
    assert firmware_code() == build.code
    assert len(build.code) == abi.FIRMWARE_SIZE


def test_image_layout_footer_table_and_reset_vector(build):
    image = flash_image(PAYLOAD, memory=16 << 20)
    assert len(image) == 0x1000 + 0x1000 + abi.FIRMWARE_SIZE  # payload page, header, firmware
    assert image[: len(PAYLOAD)] == PAYLOAD
    header = image[0x1000 : 0x1000 + abi.PAYLOAD_HEADER.size]
    assert abi.PAYLOAD_HEADER.read(header, "magic") == abi.PAYLOAD_MAGIC
    assert abi.PAYLOAD_HEADER.read(header, "payload_size") == len(PAYLOAD)
    assert abi.PAYLOAD_HEADER.read(header, "memory_size") == 16 << 20
    parsed = OvmfImage.parse(image)
    assert parsed.sev_es_reset_addr() == build.reset.symbol("ap_reset")
    assert build.reset.symbol("reset_vector") == 0xFFFF_FFF0
    assert image[-0x10] == 0xE9  # jmp near: the first instruction


def test_disk_cache_is_used(tmp_path, monkeypatch):
    code = firmware_code()
    monkeypatch.setenv("SEVX86_CACHE_DIR", str(tmp_path))
    path = firmware.firmware_cache_path()
    assert path.parent == tmp_path
    path.write_bytes(code)
    firmware.firmware_code.cache_clear()
    monkeypatch.setattr(firmware, "assemble_firmware", lambda: pytest.fail("not from cache"))
    try:
        assert firmware.firmware_code() == code
    finally:
        firmware.firmware_code.cache_clear()


@pytest.mark.parametrize(
    ("size", "memory", "match"),
    [
        (abi.PAYLOAD_MAX + 1, 64 << 20, "larger than 8 MiB"),
        (4 << 20, 4 << 20, "does not fit in guest memory"),
        (1, 1 << 20, "outside 2 MiB"),
        (1, 4 << 30, "outside 2 MiB"),
    ],
)
def test_what_cannot_boot_is_refused_before_the_launch(size, memory, match):
    with pytest.raises(FirmwareError, match=match):
        flash_image(bytes(size), memory=memory)


@pytest.mark.parametrize(
    ("payload", "vcpus", "vcpu_type"),
    [(PAYLOAD, 1, "EPYC-v4"), (PAYLOAD, 2, "EPYC-Milan"), (b"", 4, "EPYC-Rome")],
)
def test_launch_digest_equals_sev_snp_measure(tmp_path, payload, vcpus, vcpu_type):
    sevsnp_guest = sev_snp_measure("guest")
    SevMode = sev_snp_measure("sev_mode").SevMode
    config = GuestConfig(vcpus=vcpus)
    booted = boot_machine(payload, config, vcpu_type=vcpu_type)
    path = tmp_path / "sevx86-fw.fd"
    path.write_bytes(booted.image)
    expected = sevsnp_guest.calc_launch_digest(
        SevMode.SEV_ES, vcpus, vcpu_signature(vcpu_type), str(path), None, None, None, 0
    )
    assert booted.launch_digest == expected
