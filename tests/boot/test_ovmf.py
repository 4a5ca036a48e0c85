"""The OVMF footer table, against hand-built images and sev-snp-measure's parser."""

from __future__ import annotations

import struct

import pytest

from sevx86.boot.ovmf import (
    SEV_AREA,
    SEV_ES_RESET_BLOCK,
    SEV_ES_RESET_BLOCK_GUID,
    SEV_SECRET_AREA_GUID,
    OvmfError,
    OvmfImage,
    build_footer_table,
    parse_footer_table,
)
from tests.boot import synthetic_firmware as fw
from tests.oracle import sev_snp_measure
from tests.ovmf import OVMF_CODE, needs_ovmf


def test_synthetic_table_entries():
    image = OvmfImage.parse(fw.build())
    assert image.sev_es_reset_addr() == fw.DEFAULT_AP_RESET
    assert image.sev_secret_area() == fw.DEFAULT_SECRET_AREA
    assert image.entry(fw.UNRELATED_GUID) == b"\x01\x02\x03\x04\x05\x06"
    assert image.sev_hash_table_area() is None


def test_synthetic_table_agrees_with_sev_snp_measure(tmp_path):
    sevsnp_ovmf = sev_snp_measure("ovmf")
    path = tmp_path / "fw.fd"
    path.write_bytes(fw.build())
    theirs = sevsnp_ovmf.OVMF(str(path))
    ours = OvmfImage.load(path)
    assert ours.sev_es_reset_addr() == theirs.sev_es_reset_eip()
    assert {str(g): d for g, d in ours.entries.items()} == theirs._table


def test_legacy_reset_block_without_a_table():
    image = OvmfImage.parse(fw.build(legacy=True, ap_reset=0xFFFF_C000))
    assert image.entries == {}
    assert image.sev_es_reset_addr() == 0xFFFF_C000


def test_missing_or_zero_reset_block_is_refused():
    with pytest.raises(OvmfError, match="not found"):
        OvmfImage.parse(fw.build(ap_reset=None)).sev_es_reset_addr()
    with pytest.raises(OvmfError, match="not found"):
        OvmfImage.parse(bytes(0x10000)).sev_es_reset_addr()
    with pytest.raises(OvmfError, match="zero"):
        OvmfImage.parse(fw.build(ap_reset=0)).sev_es_reset_addr()


def test_corrupt_tables_are_refused():
    image = bytearray(fw.build())
    footer_len_at = len(image) - 0x20 - 18
    image[footer_len_at : footer_len_at + 2] = struct.pack("<H", 0xFFFF)
    with pytest.raises(OvmfError, match="invalid size"):
        parse_footer_table(bytes(image))
    image = bytearray(fw.build())
    top_entry_len_at = footer_len_at - 18  # the reset block is the top entry
    image[top_entry_len_at : top_entry_len_at + 2] = struct.pack("<H", 3)
    with pytest.raises(OvmfError, match="invalid length"):
        parse_footer_table(bytes(image))


def test_small_images_have_no_table():
    assert parse_footer_table(fw.build(size=0x1000)[-0x800:]) == {}


@needs_ovmf
def test_debian_ovmf_reset_block_matches_sev_snp_measure():
    sevsnp_ovmf = sev_snp_measure("ovmf")
    ours = OvmfImage.load(OVMF_CODE)
    theirs = sevsnp_ovmf.OVMF(str(OVMF_CODE))
    assert ours.sev_es_reset_addr() == theirs.sev_es_reset_eip()
    assert {str(g): d for g, d in ours.entries.items()} == theirs._table
    ours_meta = [(s.gpa, s.size, s.type) for s in ours.sev_metadata()]
    theirs_meta = [(s.gpa, s.size, s.section_type_int) for s in theirs.metadata_items()]
    assert ours_meta == theirs_meta


def test_built_footer_table_is_the_hand_built_one(tmp_path):
    reset = SEV_ES_RESET_BLOCK.new()
    SEV_ES_RESET_BLOCK.write(reset, "reset_addr", fw.DEFAULT_AP_RESET)
    area = SEV_AREA.new()
    SEV_AREA.write(area, "base", fw.DEFAULT_SECRET_AREA[0])
    SEV_AREA.write(area, "size", fw.DEFAULT_SECRET_AREA[1])
    table = build_footer_table(
        [
            (fw.UNRELATED_GUID, b"\x01\x02\x03\x04\x05\x06"),
            (SEV_SECRET_AREA_GUID, bytes(area)),
            (SEV_ES_RESET_BLOCK_GUID, bytes(reset)),
        ]
    )
    image = fw.build()
    assert image[-0x20 - len(table) : -0x20] == table
