"""AML encodings against the ACPI 6.x chapter 20 grammar and well-known byte sequences."""

from __future__ import annotations

import pytest

from sevx86.arch import aml


def test_pkg_length_one_to_three_bytes():
    assert aml.pkg_length(62) == bytes([0x3F])  # 62 + itself = 63: fits 6 bits
    # 63 + 2 bytes = 65 = 0x41: bits 7:6 = 1 more byte, low nibble 1, then 0x41 >> 4.
    assert aml.pkg_length(63) == bytes([0x41, 0x04])
    assert aml.pkg_length(0x1000) == bytes([0x83, 0x00, 0x01])  # 0x1003: needs 3 bytes
    with pytest.raises(ValueError):
        aml.pkg_length(1 << 28)


def test_eisa_id_compresses_three_letters_and_a_product_number():
    assert aml.eisa_id("PNP0A03") == bytes([0x0C, 0x41, 0xD0, 0x0A, 0x03])  # 0x030AD041
    assert aml.eisa_id("PNP0501") == bytes([0x0C, 0x41, 0xD0, 0x05, 0x01])


def test_name_strings_root_dual_and_multi():
    assert aml.name_string("\\_SB") == b"\\_SB_"
    assert aml.name_string("\\_SB_.PCI0") == b"\\\x2e_SB_PCI0"
    assert aml.name_string("A.B.C") == b"\x2f\x03A___B___C___"


def test_integers_take_the_shortest_prefix():
    assert [aml.integer(v) for v in (0, 1, 2, 0x100, 0x10000, 1 << 32)] == [
        b"\x00",
        b"\x01",
        b"\x0a\x02",
        b"\x0b\x00\x01",
        b"\x0c\x00\x00\x01\x00",
        b"\x0e\x00\x00\x00\x00\x01\x00\x00\x00",
    ]


def test_s5_package_is_the_classic_byte_sequence():
    # Name (\_S5, Package (0x04) {Zero, Zero, Zero, Zero})
    assert aml.name("\\_S5", aml.package(*[aml.integer(0)] * 4)) == bytes.fromhex(
        "085c5f53355f12060400000000"
    )
