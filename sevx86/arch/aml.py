"""Just enough AML (ACPI 6.x chapter 20, "ACPI Machine Language Specification") for a small DSDT.

Each function returns the encoded bytes of one term, so a DSDT reads like
its ASL: ``scope("\\\\_SB_", device("PCI0", name("_HID", eisa_id("PNP0A03"))))``.
Encodings (20.2): NameOp 0x08, ScopeOp 0x10, BufferOp 0x11, PackageOp
0x12, DeviceOp 0x5B 0x82; integers as ZeroOp/OneOp or Byte/Word/DWord/
QWordPrefix 0x0A/0x0B/0x0C/0x0E; PkgLength in 1-4 bytes (20.2.4); name
strings of 4-character segments, with the root prefix ``\\`` and the
dual/multi-name prefixes 0x2E/0x2F. Resource descriptors (6.4): I/O port
(0x47), IRQ without flags (0x22), 32-bit fixed memory (0x86), end tag (0x79).
"""

from __future__ import annotations

NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82
ZERO_OP = 0x00
ONE_OP = 0x01
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
QWORD_PREFIX = 0x0E
ROOT_CHAR = ord("\\")
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F

IO_DECODE16 = 0x01
MEMORY_READ_WRITE = 0x01


def pkg_length(body_length: int) -> bytes:
    """The PkgLength of a package whose contents after it are ``body_length`` bytes."""
    for extra in range(4):
        total = body_length + 1 + extra
        if extra == 0 and total < 0x40:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            lead = (extra << 6) | (total & 0x0F)
            rest = (total >> 4).to_bytes(extra, "little")
            return bytes([lead]) + rest
    raise ValueError(f"AML package of {body_length} bytes is too large")


def name_string(path: str) -> bytes:
    """``\\_SB_.PCI0`` or ``COM1``: segments padded with ``_`` to four characters."""
    out = bytearray()
    if path.startswith("\\"):
        out.append(ROOT_CHAR)
        path = path[1:]
    segs = [s.ljust(4, "_").encode() for s in path.split(".") if s]
    if any(len(s) != 4 for s in segs):
        raise ValueError(f"AML name {path!r}: a segment is longer than 4 characters")
    if len(segs) == 2:
        out.append(DUAL_NAME_PREFIX)
    elif len(segs) > 2:
        out += bytes([MULTI_NAME_PREFIX, len(segs)])
    for s in segs:
        out += s
    return bytes(out)


def integer(value: int) -> bytes:
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4), (QWORD_PREFIX, 8)):
        if value < 1 << (8 * size):
            return bytes([prefix]) + value.to_bytes(size, "little")
    raise ValueError(f"AML integer {value:#x} is wider than 64 bits")


def eisa_id(text: str) -> bytes:
    """A compressed EISA ID such as ``PNP0A03`` (ACPI 6.x 19.6.35): a DWord integer."""
    if len(text) != 7:
        raise ValueError(f"EISA ID {text!r} is not 3 letters and 4 hex digits")
    c1, c2, c3 = (ord(c) - 0x40 for c in text[:3])
    vendor = (c1 << 10 | c2 << 5 | c3).to_bytes(2, "big")
    product = int(text[3:], 16).to_bytes(2, "big")
    return bytes([DWORD_PREFIX]) + vendor + product


def name(path: str, value: bytes) -> bytes:
    return bytes([NAME_OP]) + name_string(path) + value


def package(*elements: bytes) -> bytes:
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


# -- resource descriptors (ResourceTemplate () is a buffer of them, end tag last) ------
def io_port(base: int, length: int, align: int = 1) -> bytes:
    """IO (Decode16, base, base, align, length): fixed range (6.4.2.5)."""
    b = base.to_bytes(2, "little")
    return bytes([0x47, IO_DECODE16]) + b + b + bytes([align, length])


def irq_no_flags(*irqs: int) -> bytes:
    """IRQNoFlags () {irqs}: edge, active high, exclusive (6.4.2.1)."""
    mask = sum(1 << irq for irq in irqs)
    return bytes([0x22]) + mask.to_bytes(2, "little")


def memory32_fixed(base: int, length: int, *, writable: bool = True) -> bytes:
    """Memory32Fixed (ReadWrite|ReadOnly, base, length) (6.4.3.4)."""
    info = MEMORY_READ_WRITE if writable else 0
    fields = base.to_bytes(4, "little") + length.to_bytes(4, "little")
    return bytes([0x86, 0x09, 0x00, info]) + fields


def resource_template(*descriptors: bytes) -> bytes:
    """The descriptors and an end tag whose checksum byte is 0 ("ignore", 6.4.2.9)."""
    return buffer(b"".join(descriptors) + bytes([0x79, 0x00]))


__all__ = [
    "buffer",
    "device",
    "eisa_id",
    "integer",
    "io_port",
    "irq_no_flags",
    "memory32_fixed",
    "name",
    "name_string",
    "package",
    "pkg_length",
    "resource_template",
    "scope",
]
