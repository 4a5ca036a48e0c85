"""OVMF's footer GUID table and the SEV entries in it, read as QEMU reads them.

Layout (QEMU ``hw/i386/pc_sysfw_ovmf.c``, OVMF ``OvmfPkg/ResetVector``
``ResetVectorVtf0.asm``): the table ends 0x20 bytes before the end of the
flash image, just above the reset vector. Its last 18 bytes are the table
footer: a 2-byte length of the whole table then the footer GUID. Going down
from there, every entry is ``data || u16 length-of-entry || GUID``, the
length covering data, length and GUID. QEMU walks the entries from the top
and takes the first match for a GUID.

Entries sevx86 reads: the SEV-ES reset block (the AP reset address, a dword),
the SEV secret area (base, size: where QEMU injects a launch secret when no
GPA is given), the SEV hashes table area and the SEV metadata offset. All
GUIDs are stored in the Microsoft byte order (``uuid.UUID.bytes_le``).

Without the table, QEMU falls back to an older form for the reset block: its
GUID directly 0x20 bytes before the end, with its length before it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from sevx86.arch.layout import Field, Layout

OVMF_TABLE_FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
SEV_ES_RESET_BLOCK_GUID = uuid.UUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
SEV_SECRET_AREA_GUID = uuid.UUID("4c2eb361-7d9b-4cc3-8081-127c90d3d294")
SEV_HASH_TABLE_GUID = uuid.UUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
SEV_METADATA_GUID = uuid.UUID("dc886566-984a-4798-a75e-5585a7bf67cc")

GUID_SIZE = 16
ENTRY_LENGTH_SIZE = 2
ENTRY_TRAILER_SIZE = ENTRY_LENGTH_SIZE + GUID_SIZE  # u16 length then the GUID
FOOTER_END_OFFSET = 0x20  # the table's footer ends this far before the image end
MIN_IMAGE_SIZE = 0x1000  # QEMU does not look for a table in a smaller image

# Entry payloads.
SEV_ES_RESET_BLOCK = Layout("SEV-ES reset block", 4, [Field("reset_addr", 0, 4)])
SEV_AREA = Layout("SEV area", 8, [Field("base", 0, 4), Field("size", 4, 4)])
SEV_METADATA_OFFSET = Layout("SEV metadata entry", 4, [Field("offset_from_end", 0, 4)])

# The SEV metadata ("ASEV") the metadata entry points at, OvmfSevMetadata.asm.
SEV_METADATA_SIGNATURE = b"ASEV"
SEV_METADATA_HEADER = Layout(
    "SEV metadata header",
    16,
    [
        Field("signature", 0, 4),
        Field("size", 4, 4),
        Field("version", 8, 4),
        Field("num_items", 12, 4),
    ],
)
SEV_METADATA_SECTION = Layout(
    "SEV metadata section",
    12,
    [Field("gpa", 0, 4), Field("size", 4, 4), Field("type", 8, 4)],
)


class OvmfError(ValueError):
    """A firmware image QEMU would refuse for an SEV-ES launch."""


@dataclass(frozen=True)
class MetadataSection:
    gpa: int
    size: int
    type: int


@dataclass(frozen=True)
class OvmfImage:
    """A flash image and what its footer table says."""

    data: bytes
    entries: dict[uuid.UUID, bytes] = field(repr=False)

    @classmethod
    def parse(cls, data: bytes) -> OvmfImage:
        return cls(bytes(data), parse_footer_table(data))

    @classmethod
    def load(cls, path: str | bytes) -> OvmfImage:
        with open(path, "rb") as f:
            return cls.parse(f.read())

    @property
    def size(self) -> int:
        return len(self.data)

    def entry(self, guid: uuid.UUID) -> bytes | None:
        return self.entries.get(guid)

    def sev_es_reset_addr(self) -> int:
        """The AP reset address (QEMU ``sev_es_find_reset_vector``)."""
        block = self.entry(SEV_ES_RESET_BLOCK_GUID)
        if block is None:
            block = _legacy_reset_block(self.data)
        if block is None:
            raise OvmfError(
                "SEV information block/Firmware GUID Table block not found: "
                "the image has no SEV-ES reset block"
            )
        if len(block) < SEV_ES_RESET_BLOCK.size:
            raise OvmfError(f"SEV-ES reset block is {len(block)} bytes, need 4")
        addr = SEV_ES_RESET_BLOCK.read(block, "reset_addr")
        if addr == 0:
            raise OvmfError("SEV-ES reset address is zero")
        return addr

    def _area(self, guid: uuid.UUID) -> tuple[int, int] | None:
        entry = self.entry(guid)
        if entry is None or len(entry) < SEV_AREA.size:
            return None
        return SEV_AREA.read(entry, "base"), SEV_AREA.read(entry, "size")

    def sev_secret_area(self) -> tuple[int, int] | None:
        """(base, size) of the area OVMF reserves for a launch secret."""
        return self._area(SEV_SECRET_AREA_GUID)

    def sev_hash_table_area(self) -> tuple[int, int] | None:
        """(base, size) of the kernel-hashes table area (measured only with a kernel)."""
        return self._area(SEV_HASH_TABLE_GUID)

    def sev_metadata(self) -> list[MetadataSection]:
        """The SEV metadata sections (used by SNP launches; listed for reference)."""
        entry = self.entry(SEV_METADATA_GUID)
        if entry is None or len(entry) < SEV_METADATA_OFFSET.size:
            return []
        start = self.size - SEV_METADATA_OFFSET.read(entry, "offset_from_end")
        header = self.data[start : start + SEV_METADATA_HEADER.size]
        if len(header) != SEV_METADATA_HEADER.size or start < 0:
            raise OvmfError("SEV metadata offset points outside the image")
        if SEV_METADATA_HEADER["signature"].read_bytes(header) != SEV_METADATA_SIGNATURE:
            raise OvmfError("SEV metadata has a wrong signature")
        sections = []
        base = start + SEV_METADATA_HEADER.size
        for i in range(SEV_METADATA_HEADER.read(header, "num_items")):
            raw = self.data[base + i * SEV_METADATA_SECTION.size :][: SEV_METADATA_SECTION.size]
            if len(raw) != SEV_METADATA_SECTION.size:
                raise OvmfError("SEV metadata runs past the image")
            sections.append(
                MetadataSection(
                    SEV_METADATA_SECTION.read(raw, "gpa"),
                    SEV_METADATA_SECTION.read(raw, "size"),
                    SEV_METADATA_SECTION.read(raw, "type"),
                )
            )
        return sections


def parse_footer_table(data: bytes) -> dict[uuid.UUID, bytes]:
    """GUID -> entry data, first match from the top wins (as QEMU's lookup)."""
    size = len(data)
    if size < MIN_IMAGE_SIZE:
        return {}
    footer_guid_at = size - FOOTER_END_OFFSET - GUID_SIZE
    if data[footer_guid_at : footer_guid_at + GUID_SIZE] != OVMF_TABLE_FOOTER_GUID.bytes_le:
        return {}
    length_at = footer_guid_at - ENTRY_LENGTH_SIZE
    table_len = int.from_bytes(data[length_at:footer_guid_at], "little") - ENTRY_TRAILER_SIZE
    if table_len < 0 or table_len > length_at:
        raise OvmfError(f"OVMF table has invalid size {table_len}")
    entries: dict[uuid.UUID, bytes] = {}
    top = length_at  # entries grow downwards from here
    remaining = table_len
    while remaining >= ENTRY_TRAILER_SIZE:
        guid = uuid.UUID(bytes_le=data[top - GUID_SIZE : top])
        entry_len = int.from_bytes(data[top - ENTRY_TRAILER_SIZE : top - GUID_SIZE], "little")
        if entry_len < ENTRY_TRAILER_SIZE or entry_len > remaining:
            raise OvmfError(f"OVMF table entry {guid} has invalid length {entry_len}")
        entries.setdefault(guid, data[top - entry_len : top - ENTRY_TRAILER_SIZE])
        top -= entry_len
        remaining -= entry_len
    return entries


def build_footer_table(entries: Iterable[tuple[uuid.UUID, bytes]]) -> bytes:
    """Footer table bytes for a firmware image (e.g. sevx86's own firmware).

    Place the result so that it ends ``FOOTER_END_OFFSET`` bytes before the
    image end. Entries are laid out in the order given, the last one on top
    (the first QEMU finds). Use ``SEV_ES_RESET_BLOCK``/``SEV_AREA`` for payloads.
    """
    table = bytearray()
    for guid, data in entries:
        table += data + (len(data) + ENTRY_TRAILER_SIZE).to_bytes(ENTRY_LENGTH_SIZE, "little")
        table += guid.bytes_le
    total = len(table) + ENTRY_TRAILER_SIZE
    if total > 0xFFFF:
        raise OvmfError(f"footer table of {total} bytes does not fit its 16-bit length")
    return (
        bytes(table) + total.to_bytes(ENTRY_LENGTH_SIZE, "little") + OVMF_TABLE_FOOTER_GUID.bytes_le
    )


def _legacy_reset_block(data: bytes) -> bytes | None:
    """The pre-table form: reset-block GUID right at the end minus 0x20."""
    end = len(data) - FOOTER_END_OFFSET
    if end - ENTRY_TRAILER_SIZE < 0:
        return None
    if data[end - GUID_SIZE : end] != SEV_ES_RESET_BLOCK_GUID.bytes_le:
        return None
    length = int.from_bytes(data[end - ENTRY_TRAILER_SIZE : end - GUID_SIZE], "little")
    if length < ENTRY_TRAILER_SIZE or length > end:
        return None
    return data[end - length : end - ENTRY_TRAILER_SIZE]
