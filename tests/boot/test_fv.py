"""Firmware volumes: hand-built FVs (PI spec layouts) and, where installed, Debian's OVMF."""

from __future__ import annotations

import lzma
import uuid

import pytest

from sevx86.arch import pecoff as pe
from sevx86.arch import uefi_fv as fv
from sevx86.boot.fv import FlashLayout, FvError, parse_image, parse_volume
from tests.ovmf import OVMF_CODE, needs_ovmf

PEI_CORE_GUID = uuid.UUID("52c05b14-0b98-496c-bc3b-04b50211d680")
PEIM_GUID = uuid.UUID("222c386d-5abc-4fb4-b124-fbb82488acf4")
FV_FILE_GUID = uuid.UUID("9e21fd93-9c72-4c15-8c4b-e77f1db2d792")


def align(data: bytes | bytearray, n: int) -> bytes:
    return bytes(data) + bytes(-len(data) % n)


def pe32plus(entry_rva: int, image_base: int, size: int = 0x200) -> bytes:
    img = bytearray(size)
    pe.DOS_HEADER.write(img, "e_magic", int.from_bytes(pe.DOS_SIGNATURE, "little"))
    pe.DOS_HEADER.write(img, "e_lfanew", 0x40)
    img[0x40:0x44] = pe.PE_SIGNATURE
    coff = memoryview(img)[0x44:]
    pe.COFF_HEADER.write(coff, "machine", pe.MACHINE_X64)
    pe.COFF_HEADER.write(coff, "size_of_optional_header", 0xF0)
    opt = 0x44 + pe.COFF_HEADER.size
    hdr = pe.OPTIONAL_HEADER_PE32PLUS
    view = memoryview(img)[opt:]
    hdr.write(view, "magic", pe.PE32PLUS_MAGIC)
    hdr.write(view, "address_of_entry_point", entry_rva)
    hdr.write(view, "image_base", image_base)
    return bytes(img)


def te_image(entry_rva: int, image_base: int, stripped: int) -> bytes:
    img = bytearray(0x100)
    pe.TE_HEADER.write(img, "signature", int.from_bytes(pe.TE_SIGNATURE, "little"))
    pe.TE_HEADER.write(img, "machine", pe.MACHINE_I386)
    pe.TE_HEADER.write(img, "stripped_size", stripped)
    pe.TE_HEADER.write(img, "address_of_entry_point", entry_rva)
    pe.TE_HEADER.write(img, "image_base", image_base)
    return bytes(img)


def section(stype: int, body: bytes) -> bytes:
    hdr = fv.SECTION_HEADER.new()
    fv.SECTION_HEADER.write(hdr, "size", len(body) + len(hdr))
    fv.SECTION_HEADER.write(hdr, "type", stype)
    return bytes(hdr) + body


def ui(name: str) -> bytes:
    return section(fv.SectionType.USER_INTERFACE, (name + "\0").encode("utf-16-le"))


def lzma_section(inner: bytes) -> bytes:
    body = fv.GUID_DEFINED_SECTION.new()
    fv.GUID_DEFINED_SECTION["section_definition_guid"].write_bytes(
        body, fv.LZMA_CUSTOM_DECOMPRESS_GUID.bytes_le
    )
    fv.GUID_DEFINED_SECTION.write(body, "data_offset", fv.SECTION_HEADER.size + len(body))
    return section(
        fv.SectionType.GUID_DEFINED, bytes(body) + lzma.compress(inner, format=lzma.FORMAT_ALONE)
    )


def ffs_file(name: uuid.UUID, ftype: int, sections: list[bytes]) -> bytes:
    data = b"".join(align(s, fv.SECTION_ALIGNMENT) for s in sections)
    hdr = fv.FFS_FILE_HEADER.new()
    fv.FFS_FILE_HEADER["name"].write_bytes(hdr, name.bytes_le)
    fv.FFS_FILE_HEADER.write(hdr, "type", ftype)
    fv.FFS_FILE_HEADER.write(hdr, "size", len(hdr) + len(data))
    # Erase polarity 1: the state bits are stored inverted.
    state = fv.FFS_STATE_HEADER_VALID | fv.FFS_STATE_DATA_VALID
    fv.FFS_FILE_HEADER.write(hdr, "state", ~state & 0xFF)
    return bytes(hdr) + data


HEADER_LENGTH = fv.FV_HEADER.size + 16  # one block-map entry and its terminator


def volume(files: list[bytes], length: int = 0x4000) -> bytes:
    body = b"".join(align(f, fv.FFS_ALIGNMENT) for f in files)
    out = bytearray(b"\xff" * length)
    hdr = fv.FV_HEADER.new()
    fv.FV_HEADER["file_system_guid"].write_bytes(hdr, fv.FFS2_GUID.bytes_le)
    fv.FV_HEADER.write(hdr, "fv_length", length)
    fv.FV_HEADER["signature"].write_bytes(hdr, fv.FV_SIGNATURE)
    fv.FV_HEADER.write(hdr, "attributes", fv.FVB2_ERASE_POLARITY)
    fv.FV_HEADER.write(hdr, "header_length", HEADER_LENGTH)
    fv.FV_HEADER.write(hdr, "revision", 2)
    out[: len(hdr)] = hdr
    out[len(hdr) : HEADER_LENGTH] = (
        (length // 0x1000).to_bytes(4, "little") + (0x1000).to_bytes(4, "little") + bytes(8)
    )
    out[HEADER_LENGTH : HEADER_LENGTH + len(body)] = body
    return bytes(out)


def image_offset_in_file(ffs: bytes) -> int:
    """Offset of the first section body (the image) from the file header."""
    return fv.FFS_FILE_HEADER.size + fv.SECTION_HEADER.size


def test_a_pe32_peim_entry_point_in_a_flash_volume():
    peim = ffs_file(
        PEIM_GUID,
        fv.FfsFileType.PEIM,
        [section(fv.SectionType.PE32, pe32plus(0x1234, 0)), ui("MyPeim")],
    )
    flash = volume([peim])
    layout = FlashLayout.parse(flash, flash_base=0xFFFF_C000)
    (entry,) = layout.entry_points(fv.FfsFileType.PEIM)
    assert entry.file.ui_name == "MyPeim" and entry.file.name == PEIM_GUID
    image_at = 0xFFFF_C000 + HEADER_LENGTH + image_offset_in_file(peim)
    assert entry.address == image_at + 0x1234


def test_lzma_nested_volume_is_placed_where_its_images_were_rebased():
    inner_base = 0x82_0000
    offset = HEADER_LENGTH + image_offset_in_file(b"")
    core = pe32plus(0x5A8A, inner_base + offset)
    inner = volume(
        [
            ffs_file(
                PEI_CORE_GUID,
                fv.FfsFileType.PEI_CORE,
                [section(fv.SectionType.PE32, core), ui("PeiCore")],
            )
        ]
    )
    outer_file = ffs_file(
        FV_FILE_GUID,
        fv.FfsFileType.FIRMWARE_VOLUME_IMAGE,
        [lzma_section(section(fv.SectionType.FIRMWARE_VOLUME_IMAGE, inner))],
    )
    layout = FlashLayout.parse(volume([outer_file], 0x8000))
    entry = layout.find(fv.FfsFileType.PEI_CORE)
    assert entry.volume_base == inner_base
    assert entry.address == inner_base + offset + 0x5A8A
    assert entry.file.label == "PeiCore"


def test_te_entry_point_follows_the_stripped_headers():
    # EDK II rebases a TE image so that ImageBase + StrippedSize - 40 is the
    # TE header's address; the entry is header + rva + 40 - StrippedSize.
    img = parse_image(te_image(0x300, 0x1000 - 0x1F8 + 0x28, 0x1F8), 0)
    assert img.format == "TE" and img.linked_address == 0x1000
    assert img.entry_at(0x1000) == 0x1000 + 0x300 + 0x28 - 0x1F8


def test_deleted_and_pad_files_are_skipped():
    pad = ffs_file(uuid.uuid4(), fv.FfsFileType.FFS_PAD, [])
    dead = bytearray(
        ffs_file(PEIM_GUID, fv.FfsFileType.PEIM, [section(fv.SectionType.PE32, pe32plus(1, 0))])
    )
    state = fv.FFS_STATE_HEADER_VALID | fv.FFS_STATE_DATA_VALID | fv.FFS_STATE_DELETED
    fv.FFS_FILE_HEADER.write(dead, "state", ~state & 0xFF)
    vol = parse_volume(volume([pad, bytes(dead)]))
    assert vol.files == []


def test_broken_headers_are_refused():
    with pytest.raises(FvError):
        parse_volume(b"\0" * 0x100)
    bad = bytearray(
        volume(
            [
                ffs_file(
                    PEIM_GUID, fv.FfsFileType.PEIM, [section(fv.SectionType.PE32, pe32plus(1, 0))]
                )
            ]
        )
    )
    fv.FFS_FILE_HEADER.write(memoryview(bad)[HEADER_LENGTH:], "size", 0xFF_FFF0)
    with pytest.raises(FvError):
        parse_volume(bytes(bad))
    with pytest.raises(FvError):
        parse_image(b"XX" + bytes(0x80), 0)


@needs_ovmf
def test_debian_ovmf_pei_core_and_peims_run_from_the_decompressed_pei_volume():
    data = OVMF_CODE.read_bytes()
    layout = FlashLayout.parse(data)
    core = layout.find(fv.FfsFileType.PEI_CORE)
    assert core.file.ui_name == "PeiCore" and core.image.machine == pe.MACHINE_X64
    # SEC decompresses the PEI volume into RAM below 16 MiB; its PEIMs share its base.
    assert core.volume_base < 16 << 20
    peims = {e.file.ui_name: e for e in layout.entry_points(fv.FfsFileType.PEIM)}
    assert "PlatformPei" in peims and peims["PlatformPei"].volume_base == core.volume_base
    # SEC executes in place from the flash, which ends at 4 GiB.
    sec = layout.find(fv.FfsFileType.SECURITY_CORE)
    assert (1 << 32) - len(data) <= sec.address < 1 << 32
    # DXE drivers are loaded, not executed in place: no fixed entry point.
    assert layout.files(fv.FfsFileType.DXE_CORE) and not layout.entry_points(
        fv.FfsFileType.DXE_CORE
    )
