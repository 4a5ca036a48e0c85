"""The SEV guest policy: the 32-bit word given to LAUNCH_START.

SEV API (55766) chapter 3, "Guest Policy": bit 0 NODBG, bit 1 NOKS, bit 2 ES,
bit 3 NOSEND, bit 4 DOMAIN, bit 5 SEV, bits 15:6 reserved (must be zero),
bits 23:16 API_MAJOR and 31:24 API_MINOR, the minimum firmware API version the
guest accepts. The same bit positions are in AMD's SEV firmware
(``sev_guest.h``) and sev-tool's ``sevapi.h``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag


class PolicyFlag(IntFlag):
    """The single-bit policy fields."""

    NODBG = 1 << 0  # debugging (DBG_DECRYPT/DBG_ENCRYPT) is refused
    NOKS = 1 << 1  # no other guest may share this guest's key
    ES = 1 << 2  # SEV-ES: register state lives in the encrypted VMSA
    NOSEND = 1 << 3  # the guest may not be migrated out
    DOMAIN = 1 << 4  # migrate only within the platform owner's domain
    SEV = 1 << 5  # migrate only to SEV-capable platforms


POLICY_RESERVED_MASK = 0x0000_FFC0  # bits 15:6
POLICY_API_MAJOR_SHIFT = 16
POLICY_API_MINOR_SHIFT = 24
POLICY_BYTES = 4  # the policy is hashed and MACed as a little-endian dword


@dataclass(frozen=True)
class GuestPolicy:
    """A decoded policy word; ``value`` is the exact 32-bit word."""

    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.value <= 0xFFFF_FFFF:
            raise ValueError(f"policy {self.value:#x} is not a 32-bit value")

    @classmethod
    def make(
        cls,
        flags: PolicyFlag | int = 0,
        *,
        api_major: int = 0,
        api_minor: int = 0,
    ) -> GuestPolicy:
        if not (0 <= api_major <= 0xFF and 0 <= api_minor <= 0xFF):
            raise ValueError("API version parts must fit in a byte")
        return cls(
            int(flags)
            | (api_major << POLICY_API_MAJOR_SHIFT)
            | (api_minor << POLICY_API_MINOR_SHIFT)
        )

    @property
    def flags(self) -> PolicyFlag:
        return PolicyFlag(self.value & 0x3F)

    @property
    def nodbg(self) -> bool:
        return bool(self.value & PolicyFlag.NODBG)

    @property
    def noks(self) -> bool:
        return bool(self.value & PolicyFlag.NOKS)

    @property
    def es(self) -> bool:
        return bool(self.value & PolicyFlag.ES)

    @property
    def reserved(self) -> int:
        return self.value & POLICY_RESERVED_MASK

    @property
    def api_major(self) -> int:
        return (self.value >> POLICY_API_MAJOR_SHIFT) & 0xFF

    @property
    def api_minor(self) -> int:
        return (self.value >> POLICY_API_MINOR_SHIFT) & 0xFF

    def to_bytes(self) -> bytes:
        return self.value.to_bytes(POLICY_BYTES, "little")

    def __int__(self) -> int:
        return self.value

    def __str__(self) -> str:
        names = "|".join(f.name for f in PolicyFlag if self.value & f) or "0"
        return f"{self.value:#010x} ({names}, min API {self.api_major}.{self.api_minor})"
