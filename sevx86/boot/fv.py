"""Firmware volumes in a flash image: files, sections, images, entry points.

Walks a flash image the way a PI firmware's own loaders do (UEFI PI spec vol
3; layouts in ``sevx86.arch.uefi_fv`` and ``sevx86.arch.pecoff``): every
firmware volume, its FFS files, their sections -- opening GUID-defined
sections (LZMA, CRC32) and compression sections with no compression, and
the firmware volumes nested in FV image sections. OVMF keeps its PEI and DXE
volumes LZMA-compressed inside FVMAIN_COMPACT; SEC decompresses them into
RAM at boot, and the PE images in them were rebased at build time to run
from there, so each image's own ImageBase says where its volume will live.

The result answers "where will the PEI core start?" without running the
firmware: ``FlashLayout.parse(image).find(FfsFileType.PEI_CORE)``.
"""

from __future__ import annotations

import lzma
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from sevx86.arch import pecoff as pe
from sevx86.arch import uefi_fv as fv


class FvError(ValueError):
    """A malformed firmware volume, file, section or image."""


@dataclass(frozen=True)
class Image:
    """An executable (PE32/PE32+ or TE) section of an FFS file."""

    format: str  # "PE32", "PE32+" or "TE"
    offset: int  # of the image's first header byte within its volume
    machine: int
    entry_rva: int  # AddressOfEntryPoint
    image_base: int  # as rebased by the build
    stripped_size: int = 0  # TE only

    @property
    def linked_address(self) -> int:
        """Where the build placed the image's first header byte."""
        if self.format == "TE":
            # EDK II's GenFv rebases a TE image so that ImageBase + StrippedSize
            # - sizeof(EFI_TE_IMAGE_HEADER) is the TE header's address.
            return self.image_base + self.stripped_size - pe.TE_HEADER.size
        return self.image_base

    def entry_at(self, address: int) -> int:
        """Entry point when the image's first header byte is at ``address``."""
        if self.format == "TE":
            return address + self.entry_rva + pe.TE_HEADER.size - self.stripped_size
        return address + self.entry_rva


@dataclass
class FfsFile:
    name: uuid.UUID
    type: int
    offset: int  # of the file header within its volume
    size: int
    ui_name: str | None = None
    images: list[Image] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)  # FV image sections

    @property
    def type_name(self) -> str:
        try:
            return fv.FfsFileType(self.type).name
        except ValueError:
            return f"{self.type:#x}"

    @property
    def label(self) -> str:
        return self.ui_name or str(self.name)


@dataclass
class Volume:
    """One firmware volume; ``base`` is its run-time address when known."""

    offset: int  # within the flash image, or within the section that held it
    length: int
    file_system: uuid.UUID
    name: uuid.UUID | None
    files: list[FfsFile]
    base: int | None = None
    parent: FfsFile | None = field(default=None, repr=False)

    def walk(self) -> Iterator[tuple[Volume, FfsFile]]:
        """Every file of this volume and of the volumes nested in it."""
        for f in self.files:
            yield self, f
            for inner in f.volumes:
                yield from inner.walk()


@dataclass(frozen=True)
class EntryPoint:
    """A file's image and where its entry point will be at run time."""

    file: FfsFile
    image: Image
    address: int
    volume_base: int


@dataclass
class FlashLayout:
    volumes: list[Volume]

    @classmethod
    def parse(cls, flash: bytes, *, flash_base: int | None = None) -> FlashLayout:
        """All volumes of a flash image mapped at ``flash_base`` (default: ending at 4 GiB)."""
        base = (1 << 32) - len(flash) if flash_base is None else flash_base
        volumes = []
        for offset in _volume_offsets(flash):
            vol = parse_volume(flash, offset)
            vol.base = base + offset  # executed in place from the flash
            volumes.append(vol)
        for vol in volumes:
            _place_nested(vol)
        return cls(volumes)

    def walk(self) -> Iterator[tuple[Volume, FfsFile]]:
        for vol in self.volumes:
            yield from vol.walk()

    def files(self, file_type: int | None = None) -> list[FfsFile]:
        return [f for _, f in self.walk() if file_type is None or f.type == file_type]

    def entry_points(self, file_type: int | None = None) -> list[EntryPoint]:
        """Entry points of the images whose run-time address the layout fixes."""
        out = []
        for vol, f in self.walk():
            if file_type is not None and f.type != file_type:
                continue
            if vol.base is None:
                continue
            for image in f.images:
                out.append(EntryPoint(f, image, image.entry_at(vol.base + image.offset), vol.base))
        return out

    def find(self, file_type: int) -> EntryPoint:
        """The single image of ``file_type`` (e.g. PEI_CORE); FvError if none or several."""
        found = self.entry_points(file_type)
        if len(found) != 1:
            raise FvError(
                f"expected one {fv.FfsFileType(file_type).name} image, found {len(found)}"
            )
        return found[0]


# ---------------------------------------------------------------------- volumes
def _volume_offsets(flash: bytes) -> Iterator[int]:
    """Offsets of the top-level volumes: headers at 8-byte boundaries, not overlapping."""
    pos = 0
    while True:
        sig = flash.find(fv.FV_SIGNATURE, pos + fv.FV_HEADER["signature"].offset)
        if sig < 0:
            return
        start = sig - fv.FV_HEADER["signature"].offset
        if start % fv.FFS_ALIGNMENT == 0 and _looks_like_volume(flash, start):
            yield start
            pos = start + _fv_length(flash, start)
        else:
            pos = start + 1


def _fv_length(data: bytes, start: int) -> int:
    return fv.FV_HEADER["fv_length"].read(data[start : start + fv.FV_HEADER.size])


def _looks_like_volume(data: bytes, start: int) -> bool:
    header = data[start : start + fv.FV_HEADER.size]
    if len(header) < fv.FV_HEADER.size:
        return False
    length = fv.FV_HEADER.read(header, "fv_length")
    hlen = fv.FV_HEADER.read(header, "header_length")
    return fv.FV_HEADER.size <= hlen < length and start + length <= len(data)


def parse_volume(data: bytes, offset: int = 0) -> Volume:
    """The volume whose header is at ``offset`` of ``data``."""
    if not _looks_like_volume(data, offset):
        raise FvError(f"no firmware volume header at {offset:#x}")
    header = data[offset : offset + fv.FV_HEADER.size]
    length = fv.FV_HEADER.read(header, "fv_length")
    body = data[offset : offset + length]
    fs = uuid.UUID(bytes_le=fv.FV_HEADER["file_system_guid"].read_bytes(header))
    polarity = bool(fv.FV_HEADER.read(header, "attributes") & fv.FVB2_ERASE_POLARITY)
    first = fv.FV_HEADER.read(header, "header_length")
    name = None
    ext = fv.FV_HEADER.read(header, "ext_header_offset")
    if ext:
        ext_hdr = body[ext : ext + fv.FV_EXT_HEADER.size]
        name = uuid.UUID(bytes_le=fv.FV_EXT_HEADER["fv_name"].read_bytes(ext_hdr))
        first = ext + fv.FV_EXT_HEADER.read(ext_hdr, "ext_header_size")
    vol = Volume(offset, length, fs, name, [])
    if fs in fv.FFS_FILE_SYSTEMS:
        vol.files = list(_files(body, _align(first, fv.FFS_ALIGNMENT), polarity))
    return vol


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


def _files(body: bytes, pos: int, polarity: bool) -> Iterator[FfsFile]:
    hdr_size = fv.FFS_FILE_HEADER.size
    while pos + hdr_size <= len(body):
        header = body[pos : pos + hdr_size]
        if header == (b"\xff" if polarity else b"\0") * hdr_size:
            return  # free space to the end of the volume
        state = fv.FFS_FILE_HEADER.read(header, "state")
        if polarity:
            state = ~state & 0xFF
        attributes = fv.FFS_FILE_HEADER.read(header, "attributes")
        size = fv.FFS_FILE_HEADER.read(header, "size")
        data_start = hdr_size
        if attributes & fv.FFS_ATTRIB_LARGE_FILE:
            size = fv.FFS_FILE_HEADER2_EXTENDED_SIZE.read(
                body[pos : pos + fv.FFS_FILE_HEADER2_SIZE]
            )
            data_start = fv.FFS_FILE_HEADER2_SIZE
        if size < data_start or pos + size > len(body):
            raise FvError(f"FFS file at {pos:#x} has an invalid size {size:#x}")
        valid = state & fv.FFS_STATE_DATA_VALID and not state & fv.FFS_STATE_DELETED
        ftype = fv.FFS_FILE_HEADER.read(header, "type")
        if valid and ftype != fv.FfsFileType.FFS_PAD:
            f = FfsFile(
                uuid.UUID(bytes_le=fv.FFS_FILE_HEADER["name"].read_bytes(header)),
                ftype,
                pos,
                size,
            )
            _sections(f, body, pos + data_start, pos + size, image_bias=0)
            yield f
        pos = _align(pos + size, fv.FFS_ALIGNMENT)


# --------------------------------------------------------------------- sections
def _sections(f: FfsFile, buf: bytes, pos: int, end: int, *, image_bias: int | None) -> None:
    """Parse the sections in ``buf[pos:end]`` into ``f``.

    ``image_bias`` is the offset of ``buf`` within the file's volume, so an
    image's offset is known; None inside decompressed data (no place in the
    volume: such images are loaded, not executed in place).
    """
    while pos + fv.SECTION_HEADER.size <= end:
        head = buf[pos : pos + fv.SECTION_HEADER2_SIZE]
        size = fv.SECTION_HEADER.read(head, "size")
        stype = fv.SECTION_HEADER.read(head, "type")
        hdr = fv.SECTION_HEADER.size
        if size == fv.SECTION_SIZE_EXTENDED:
            size = fv.SECTION_HEADER2_EXTENDED_SIZE.read(head)
            hdr = fv.SECTION_HEADER2_SIZE
        if size < hdr or pos + size > end:
            raise FvError(f"section at {pos:#x} of {f.name} has an invalid size {size:#x}")
        body_at, body_end = pos + hdr, pos + size
        if stype in (fv.SectionType.PE32, fv.SectionType.TE):
            offset = None if image_bias is None else image_bias + body_at
            image = parse_image(buf[body_at:body_end], offset if offset is not None else -1)
            if offset is not None:
                f.images.append(image)
        elif stype == fv.SectionType.USER_INTERFACE:
            text = buf[body_at:body_end].decode("utf-16-le", "replace")
            f.ui_name = text.split("\0", 1)[0]
        elif stype == fv.SectionType.FIRMWARE_VOLUME_IMAGE:
            inner = parse_volume(bytes(buf[body_at:body_end]), 0)
            inner.parent = f
            f.volumes.append(inner)
        elif stype == fv.SectionType.GUID_DEFINED:
            _guid_defined(f, buf, pos, hdr, body_end)
        elif stype == fv.SectionType.COMPRESSION:
            body = buf[body_at:body_end]
            if fv.COMPRESSION_SECTION.read(body, "compression_type") == fv.COMPRESSION_NONE:
                inner_at = body_at + fv.COMPRESSION_SECTION.size
                _sections(f, buf, inner_at, body_end, image_bias=None)
        pos = _align(pos + size, fv.SECTION_ALIGNMENT)


def _guid_defined(f: FfsFile, buf: bytes, pos: int, hdr: int, end: int) -> None:
    body = buf[pos + hdr : end]
    guid = uuid.UUID(bytes_le=fv.GUID_DEFINED_SECTION["section_definition_guid"].read_bytes(body))
    data_at = pos + fv.GUID_DEFINED_SECTION.read(body, "data_offset")
    if guid == fv.LZMA_CUSTOM_DECOMPRESS_GUID:
        # EDK II's LzmaCompress output: the LZMA "alone" format (5 bytes of
        # properties, 8 bytes of uncompressed size, then the stream).
        try:
            plain = lzma.decompress(bytes(buf[data_at:end]), format=lzma.FORMAT_ALONE)
        except lzma.LZMAError as exc:
            raise FvError(f"LZMA section of {f.name}: {exc}") from None
        _sections(f, plain, 0, len(plain), image_bias=None)
    elif guid == fv.CRC32_GUIDED_SECTION_GUID:
        _sections(f, buf, data_at, end, image_bias=None)
    # Other GUIDed encodings (signed, Tiano-compressed) are left closed.


# ----------------------------------------------------------------------- images
def parse_image(data: bytes, offset: int) -> Image:
    """The entry-point facts of a PE32/PE32+ or TE image starting at ``data[0]``."""
    magic = data[:2]
    if magic == pe.TE_SIGNATURE:
        if len(data) < pe.TE_HEADER.size:
            raise FvError("TE image shorter than its header")
        te = pe.TE_HEADER
        return Image(
            "TE",
            offset,
            te.read(data, "machine"),
            te.read(data, "address_of_entry_point"),
            te.read(data, "image_base"),
            te.read(data, "stripped_size"),
        )
    if magic != pe.DOS_SIGNATURE or len(data) < pe.DOS_HEADER.size:
        raise FvError("image is neither PE32 (MZ) nor TE (VZ)")
    lfanew = pe.DOS_HEADER.read(data, "e_lfanew")
    if data[lfanew : lfanew + 4] != pe.PE_SIGNATURE:
        raise FvError("PE signature missing")
    coff = data[lfanew + 4 : lfanew + 4 + pe.COFF_HEADER.size]
    opt = data[lfanew + 4 + pe.COFF_HEADER.size :][: pe.OPTIONAL_HEADER_PE32.size]
    if len(opt) < pe.OPTIONAL_HEADER_PE32.size:
        raise FvError("PE optional header truncated")
    kind = pe.OPTIONAL_HEADER_PE32.read(opt, "magic")
    layout = {
        pe.PE32_MAGIC: pe.OPTIONAL_HEADER_PE32,
        pe.PE32PLUS_MAGIC: pe.OPTIONAL_HEADER_PE32PLUS,
    }
    if kind not in layout:
        raise FvError(f"unknown optional header magic {kind:#x}")
    hdr = layout[kind]
    return Image(
        "PE32" if kind == pe.PE32_MAGIC else "PE32+",
        offset,
        pe.COFF_HEADER.read(coff, "machine"),
        hdr.read(opt, "address_of_entry_point"),
        hdr.read(opt, "image_base"),
    )


def _place_nested(vol: Volume) -> None:
    """Give nested volumes the run-time base their images were rebased to."""
    for f in vol.files:
        for inner in f.volumes:
            bases = {
                image.linked_address - image.offset for _, g in inner.walk() for image in g.images
            }
            # The volume's own files only: nested-nested volumes decide for themselves.
            own = {image.linked_address - image.offset for g in inner.files for image in g.images}
            if len(own) == 1:
                inner.base = own.pop()
            elif not own and len(bases) == 1:
                inner.base = bases.pop()
            _place_nested(inner)


__all__ = [
    "EntryPoint",
    "FfsFile",
    "FlashLayout",
    "FvError",
    "Image",
    "Volume",
    "parse_image",
    "parse_volume",
]
