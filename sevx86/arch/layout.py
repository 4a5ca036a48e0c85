"""Spec structures as data: named fields at fixed offsets (little-endian unless marked).

Every hardware or protocol structure in sevx86 (VMCB, VMSA, GHCB, ...) is a
``Layout`` built once in its own module of ``sevx86.arch``; all other code
names fields (``VMSA["rip"]``) instead of repeating offsets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

# A segment register in the VMCB save area, the VMSA and the GHCB
# (AMD APM vol 2, appendix B, "VMCB Layout, State Save Area"): 16 bytes.
SEGMENT_PARTS: tuple[tuple[str, int, int], ...] = (
    ("selector", 0x0, 2),
    ("attrib", 0x2, 2),
    ("limit", 0x4, 4),
    ("base", 0x8, 8),
)
SEGMENT_SIZE = 16

# Register widths: a value kept to 64 or 32 bits (x86 register arithmetic wraps there).
U64_MASK = (1 << 64) - 1
U32_MASK = (1 << 32) - 1


@dataclass(frozen=True)
class Field:
    """One field of a layout: ``size`` bytes at ``offset``, little-endian.

    ``big_endian`` marks the few big-endian structures some devices define
    (QEMU's fw_cfg DMA descriptor and file directory).
    """

    name: str
    offset: int
    size: int
    doc: str = ""
    big_endian: bool = False
    byteorder: Literal["little", "big"] = field(init=False, repr=False, compare=False)
    end: int = field(init=False, repr=False, compare=False)  # offset + size
    mask: int = field(init=False, repr=False, compare=False)  # the largest value that fits

    def __post_init__(self) -> None:
        # Precomputed: Field.read/write sit on the GHCB's and VMCB's hot paths,
        # several calls per #VC round trip.
        object.__setattr__(self, "byteorder", "big" if self.big_endian else "little")
        object.__setattr__(self, "end", self.offset + self.size)
        object.__setattr__(self, "mask", (1 << (8 * self.size)) - 1)

    def read(self, buf: bytes | bytearray | memoryview) -> int:
        return int.from_bytes(buf[self.offset : self.end], self.byteorder)

    def write(self, buf: bytearray | memoryview, value: int) -> None:
        if value < 0:
            value &= self.mask
        buf[self.offset : self.end] = value.to_bytes(self.size, self.byteorder)

    def read_bytes(self, buf: bytes | bytearray | memoryview) -> bytes:
        return bytes(buf[self.offset : self.end])

    def write_bytes(self, buf: bytearray | memoryview, data: bytes) -> None:
        if len(data) != self.size:
            raise ValueError(f"{self.name}: expected {self.size} bytes, got {len(data)}")
        buf[self.offset : self.end] = data


def segment(name: str, offset: int, doc: str = "") -> list[Field]:
    """The four parts of a segment register stored at ``offset``."""
    return [Field(f"{name}.{part}", offset + rel, size, doc) for part, rel, size in SEGMENT_PARTS]


class Layout:
    """A named structure of ``size`` bytes made of non-overlapping fields."""

    def __init__(self, name: str, size: int, fields: Iterable[Field | list[Field]]):
        self.name = name
        self.size = size
        flat: list[Field] = []
        for item in fields:
            flat.extend(item if isinstance(item, list) else [item])
        flat.sort(key=lambda f: f.offset)
        self._fields: dict[str, Field] = {}
        previous: Field | None = None
        for f in flat:
            if f.name in self._fields:
                raise ValueError(f"{name}: field {f.name} defined twice")
            if f.offset < 0 or f.end > size:
                raise ValueError(f"{name}: field {f.name} lies outside {size:#x} bytes")
            if previous is not None and f.offset < previous.end:
                raise ValueError(f"{name}: {f.name} overlaps {previous.name}")
            self._fields[f.name] = f
            previous = f

    def __getitem__(self, name: str) -> Field:
        try:
            return self._fields[name]
        except KeyError:
            raise KeyError(f"{self.name} has no field {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._fields

    def __iter__(self) -> Iterator[Field]:
        return iter(self._fields.values())

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"<Layout {self.name} {self.size:#x} bytes, {len(self)} fields>"

    def field_at(self, offset: int) -> Field | None:
        """The field covering byte ``offset``, if any."""
        for f in self._fields.values():
            if f.offset <= offset < f.end:
                return f
        return None

    def read(self, buf: bytes | bytearray | memoryview, name: str) -> int:
        return self[name].read(buf)

    def write(self, buf: bytearray | memoryview, name: str, value: int) -> None:
        self[name].write(buf, value)

    def new(self) -> bytearray:
        """A zero-filled buffer of this structure's size."""
        return bytearray(self.size)
