"""Register and address widths as masks (AMD APM vol 1, 3.1 "Registers").

One definition for the whole package: an x86-64 general-purpose register
holds 64 bits, its 32-bit form (EAX, ...) 32; a guest physical address plus
a length must stay below 2**64.
"""

from __future__ import annotations

U8_MASK = (1 << 8) - 1
U16_MASK = (1 << 16) - 1
U32_MASK = (1 << 32) - 1
U64_MASK = (1 << 64) - 1
ADDRESS_LIMIT = 1 << 64  # one past the highest 64-bit address

__all__ = ["ADDRESS_LIMIT", "U16_MASK", "U32_MASK", "U64_MASK", "U8_MASK"]
