"""Configuration: QEMU's names, and refusals that name the bad value."""

from __future__ import annotations

import pytest

from sevx86.config import ConfigError, GuestConfig, GuestMode, parse_size


def test_defaults_follow_qemu_and_epyc():
    cfg = GuestConfig()
    assert (cfg.cbitpos, cfg.reduced_phys_bits, cfg.mode) == (51, 1, GuestMode.SEV_ES)
    assert cfg.phys_bits == 48 and cfg.guest_phys_bits == 47
    assert cfg.c_bit == 1 << 51
    assert GuestConfig(mode=GuestMode.NONE).c_bit == 0
    assert GuestConfig(mode=GuestMode.NONE).guest_phys_bits == 48


@pytest.mark.parametrize("cbitpos", [31, 64, 0])
def test_cbitpos_outside_range(cbitpos):
    with pytest.raises(ConfigError, match=f"cbitpos {cbitpos} is outside 32..63"):
        GuestConfig(cbitpos=cbitpos)


def test_memory_must_be_page_aligned():
    with pytest.raises(ConfigError, match="memory 0x1234 is not a positive multiple of 4 KiB"):
        GuestConfig(memory=0x1234)


def test_memory_reaching_the_c_bit_or_reduced_bits():
    # cbitpos 32: the platform has 32 address bits, one lost to SEV -> 2 GiB.
    GuestConfig(cbitpos=32, memory=2 << 30)
    with pytest.raises(ConfigError, match="reduced address bits"):
        GuestConfig(cbitpos=32, memory=(2 << 30) + 0x1000)
    with pytest.raises(ConfigError, match="reduced-phys-bits 30 leaves only 18"):
        GuestConfig(reduced_phys_bits=30)
    with pytest.raises(ConfigError, match="cbitpos 40 an address bit"):
        GuestConfig(cbitpos=40, phys_bits=48)


def test_from_qemu_style_options():
    cfg = GuestConfig.from_options(**{"cbitpos": 47, "reduced-phys-bits": 5, "memory": "256M"})
    assert cfg.memory == 256 << 20 and cfg.guest_phys_bits == 42
    assert GuestConfig.from_options(mode="none").mode is GuestMode.NONE
    with pytest.raises(ConfigError, match="mode 'snp' is not one of none, sev, sev-es"):
        GuestConfig.from_options(mode="snp")


@pytest.mark.parametrize(
    "text,size",
    [
        ("64M", 64 << 20),
        ("1G", 1 << 30),
        ("512MiB", 512 << 20),
        ("64", 64 << 20),
        ("65536", 65536),
        ("2g", 2 << 30),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_parse_size_refuses_words():
    with pytest.raises(ConfigError, match="'lots' is not a size"):
        parse_size("lots")
