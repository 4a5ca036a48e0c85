"""The GHCB page as the hypervisor reads and answers it, through host memory.

The guest maps its GHCB page shared (C=0), so the host reads plaintext with
``host.memory.read``. One VMGEXIT = read the page (the shared buffer only if
used), validate and emulate on this copy, write the changed bytes back. As KVM does
(``sev_es_sync_from_ghcb``), the valid bitmap is cleared after the inputs
are taken, and every field the hypervisor returns sets its own valid bit, so
the guest can check that an answer register is really there (Linux's #VC
handler does).

Field names and offsets come from ``sevx86.arch.ghcb.GHCB`` (GHCB spec
56421, "GHCB Layout").
"""

from __future__ import annotations

from typing import Protocol

from sevx86.arch.ghcb import (
    GHCB,
    GHCB_REGISTER_NAMES,
    GHCB_SIZE,
    SHARED_BUFFER_OFFSET,
    SHARED_BUFFER_SIZE,
    valid_bit,
)

_VALID = GHCB["valid_bitmap"]
_VALID_SIZE = _VALID.size
SAVE_AREA_FIELDS: tuple[str, ...] = (
    *GHCB_REGISTER_NAMES,
    "sw_exit_code",
    "sw_exit_info_1",
    "sw_exit_info_2",
    "sw_scratch",
)
_BITS: tuple[tuple[int, str], ...] = tuple(
    sorted((valid_bit(name), name) for name in SAVE_AREA_FIELDS)
)
_NAME_OF_BIT: dict[int, str] = dict(_BITS)
SHARED_BUFFER_END = SHARED_BUFFER_OFFSET + SHARED_BUFFER_SIZE


class GuestMemory(Protocol):
    def read(self, gpa: int, size: int) -> bytes: ...

    def write(self, gpa: int, data: bytes) -> None: ...


# The page is read in parts: what every request needs (the save area with the
# valid bitmap; the last cipher block with the version and usage words) at
# once, the middle (x87 state GPA, shared buffer) only when a request uses
# it. Each part is one pass through the memory cipher, so a CPUID VMGEXIT
# costs about a quarter of a page.
_BLOCK = 16  # write back whole cipher blocks: no read-modify-write in DRAM
_HEAD = (0, _VALID.end)  # 0x000-0x3FF: save area + valid bitmap
_END = (GHCB_SIZE - _BLOCK, GHCB_SIZE)  # 0xFF0-0xFFF: protocol version, usage
_MIDDLE = (_VALID.end, GHCB_SIZE - _BLOCK)  # 0x400-0xFEF: x87 GPA, shared buffer
_PARTS = (_HEAD, _MIDDLE, _END)


class GhcbPage:
    """A copy of one GHCB page, read lazily, with dirty tracking for the write-back."""

    __slots__ = ("gpa", "buf", "_memory", "_have_middle", "_dirty")

    def __init__(self, gpa: int, data: bytes | bytearray, memory: GuestMemory | None = None):
        if len(data) != GHCB_SIZE:
            raise ValueError(f"a GHCB is {GHCB_SIZE:#x} bytes, got {len(data):#x}")
        self.gpa = gpa
        self.buf = bytearray(data)
        self._memory = memory
        self._have_middle = memory is None
        self._dirty: dict[int, list[int]] = {}  # part start -> [lo, hi]

    @classmethod
    def read(cls, memory: GuestMemory, gpa: int) -> GhcbPage:
        """The page at ``gpa``; the caller checked it is guest memory."""
        page = cls(gpa, bytes(GHCB_SIZE), memory)
        for start, end in (_HEAD, _END):
            page.buf[start:end] = memory.read(gpa + start, end - start)
        return page

    def _need(self, lo: int, hi: int) -> None:
        if not self._have_middle and lo < _MIDDLE[1] and hi > _MIDDLE[0]:
            assert self._memory is not None
            start, end = _MIDDLE
            self.buf[start:end] = self._memory.read(self.gpa + start, end - start)
            self._have_middle = True

    # -- fields ------------------------------------------------------------------
    def get(self, name: str) -> int:
        f = GHCB[name]
        self._need(f.offset, f.end)
        return f.read(self.buf)

    def set(self, name: str, value: int) -> None:
        """Write a field; a save-area field also gets its valid bit."""
        f = GHCB[name]
        self._need(f.offset, f.end)
        f.write(self.buf, value & f.mask)
        if f.offset < _VALID.offset:
            bit = valid_bit(name)
            self.buf[_VALID.offset + bit // 8] |= 1 << (bit % 8)
            self._touch(f.offset, _VALID.end)  # the field and the bitmap, both in the head
        else:
            self._touch(f.offset, f.end)

    # -- valid bitmap ------------------------------------------------------------
    @property
    def valid_bitmap(self) -> int:
        return _VALID.read(self.buf)

    def is_valid(self, name: str) -> bool:
        return bool(self.valid_bitmap >> valid_bit(name) & 1)

    def valid_names(self) -> list[str]:
        """Names of the valid save-area fields, in bit (offset) order."""
        # Visit only the set bits (a request marks a handful of ~40 fields).
        bitmap = self.valid_bitmap
        names = []
        while bitmap:
            low = bitmap & -bitmap
            name = _NAME_OF_BIT.get(low.bit_length() - 1)
            if name is not None:
                names.append(name)
            bitmap ^= low
        return names

    def clear_valid(self) -> None:
        self.buf[_VALID.offset : _VALID.end] = bytes(_VALID_SIZE)
        self._touch(_VALID.offset, _VALID.end)

    # -- the answer ----------------------------------------------------------------
    def answer(self, info1: int, info2: int) -> None:
        """SW_EXITINFO1/2 as the hypervisor's result (GHCB v2 convention)."""
        self.set("sw_exit_info_1", info1)
        self.set("sw_exit_info_2", info2)

    # -- raw bytes inside the page (the shared buffer) -------------------------------
    def read_bytes(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > GHCB_SIZE:
            raise ValueError(f"{offset:#x}+{size:#x} is outside the GHCB page")
        self._need(offset, offset + size)
        return bytes(self.buf[offset : offset + size])

    def write_bytes(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > GHCB_SIZE:
            raise ValueError(f"{offset:#x}+{len(data):#x} is outside the GHCB page")
        self._need(offset, offset + len(data))
        self.buf[offset : offset + len(data)] = data
        self._touch(offset, offset + len(data))

    def _touch(self, lo: int, hi: int) -> None:
        if hi <= _HEAD[1]:  # the common case: registers, answer, valid bitmap
            span = self._dirty.get(0)
            if span is None:
                self._dirty[0] = [lo, hi]
            else:
                if lo < span[0]:
                    span[0] = lo
                if hi > span[1]:
                    span[1] = hi
            return
        for start, end in _PARTS:
            a, b = max(lo, start), min(hi, end)
            if a >= b:
                continue
            span = self._dirty.get(start)
            if span is None:
                self._dirty[start] = [a, b]
            else:
                span[0], span[1] = min(span[0], a), max(span[1], b)

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def write_back(self, memory: GuestMemory) -> None:
        """Store the changed bytes back into the guest's page, whole cipher blocks at a time."""
        for lo, hi in self._dirty.values():
            lo &= ~(_BLOCK - 1)
            hi = (hi + _BLOCK - 1) & ~(_BLOCK - 1)
            memory.write(self.gpa + lo, bytes(self.buf[lo:hi]))
        self._dirty.clear()


__all__ = ["GhcbPage", "SAVE_AREA_FIELDS", "SHARED_BUFFER_END"]
