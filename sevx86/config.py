"""Guest configuration, spelled as QEMU spells the SEV options.

QEMU's ``sev-guest`` object takes ``cbitpos`` and ``reduced-phys-bits``; the
machine takes a memory size. sevx86 accepts the same names (with ``-`` or
``_``) and refuses inconsistent values with a message naming the value, so a
command-line user sees what to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

PAGE_SIZE = 0x1000
MiB = 1 << 20
GiB = 1 << 30

# Largest physical address width x86-64 page tables can express (APM vol 2,
# 5.3.3: bits 51:12 of an entry hold the frame).
ARCH_MAX_PHYS_BITS = 52
# Physical address width of the platform before SEV's reduction: what CPUID
# 0x80000008 EAX[7:0] reports on EPYC parts (Rome, Milan, Genoa).
EPYC_PHYS_BITS = 48
# A guest must at least address the real-mode megabyte and its reset vector's
# RAM below; anything narrower cannot boot.
MIN_GUEST_PHYS_BITS = 20


class ConfigError(ValueError):
    """A configuration value that cannot describe a working guest."""


class GuestMode(StrEnum):
    """What the host can see (docs/design.md, "Trust boundary")."""

    NONE = "none"  # plain VM: memory and registers visible to the host
    SEV = "sev"  # memory encrypted, registers in the plaintext VMCB save area
    SEV_ES = "sev-es"  # registers in the encrypted, integrity-checked VMSA

    @property
    def encrypted(self) -> bool:
        return self is not GuestMode.NONE

    @property
    def encrypted_state(self) -> bool:
        return self is GuestMode.SEV_ES

    @classmethod
    def parse(cls, text: str) -> GuestMode:
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ConfigError(f"mode {text!r} is not one of {choices}") from None


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": MiB, "g": GiB, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"64M"``, ``"1G"``, ``"512MiB"`` or a byte count, as QEMU's ``-m`` reads them.

    A bare number is bytes when it is at least one page, else MiB (QEMU reads
    ``-m 64`` as 64 MiB).
    """
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"memory size {text!r} is not a size like 64M or 1G")
    number, unit = int(m.group(1)), m.group(2).lower()
    if not unit and number < PAGE_SIZE:
        unit = "m"
    return number * _SIZE_UNITS[unit]


@dataclass(frozen=True)
class GuestConfig:
    """The shape of one guest: its mode, the C-bit and its memory.

    ``phys_bits`` is the platform's physical address width before the SEV
    reduction (QEMU's ``phys-bits``); by default the EPYC value, capped just
    below the C-bit so that the C-bit never doubles as an address bit.
    """

    mode: GuestMode = GuestMode.SEV_ES
    cbitpos: int = 51
    reduced_phys_bits: int = 1
    memory: int = 64 * MiB
    phys_bits: int | None = None
    vcpus: int = 1
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.mode, str) and not isinstance(self.mode, GuestMode):
            object.__setattr__(self, "mode", GuestMode.parse(self.mode))
        if self.phys_bits is None:
            object.__setattr__(self, "phys_bits", min(EPYC_PHYS_BITS, self.cbitpos))
        self.validate()

    # -- derived values -------------------------------------------------
    @property
    def guest_phys_bits(self) -> int:
        """MAXPHYADDR the guest may use: reduced by SEV (APM vol 2, 7.10.1).

        With memory encryption on, CPUID 0x8000001F EBX[11:6] bits of physical
        address are lost; Linux subtracts them from CPUID 0x80000008's width.
        """
        assert self.phys_bits is not None
        if self.mode.encrypted:
            return self.phys_bits - self.reduced_phys_bits
        return self.phys_bits

    @property
    def c_bit(self) -> int:
        """The C-bit mask, or 0 when memory is not encrypted."""
        return 1 << self.cbitpos if self.mode.encrypted else 0

    # -- validation -----------------------------------------------------
    def validate(self) -> None:
        if not 32 <= self.cbitpos <= 63:
            raise ConfigError(f"cbitpos {self.cbitpos} is outside 32..63")
        if not 1 <= self.reduced_phys_bits <= 63:
            raise ConfigError(f"reduced-phys-bits {self.reduced_phys_bits} is outside 1..63")
        assert self.phys_bits is not None
        if not 32 <= self.phys_bits <= ARCH_MAX_PHYS_BITS:
            raise ConfigError(f"phys-bits {self.phys_bits} is outside 32..52")
        if self.phys_bits > self.cbitpos:
            raise ConfigError(
                f"phys-bits {self.phys_bits} would make cbitpos {self.cbitpos} an address bit"
            )
        if self.guest_phys_bits < MIN_GUEST_PHYS_BITS:
            raise ConfigError(
                f"reduced-phys-bits {self.reduced_phys_bits} leaves only "
                f"{self.guest_phys_bits} physical address bits (need {MIN_GUEST_PHYS_BITS})"
            )
        if self.memory <= 0 or self.memory % PAGE_SIZE:
            raise ConfigError(f"memory {self.memory:#x} is not a positive multiple of 4 KiB")
        self.check_range(0, self.memory, "memory")
        if self.vcpus < 1:
            raise ConfigError(f"vcpus {self.vcpus} must be at least 1")

    def check_range(self, base: int, size: int, what: str) -> None:
        """Refuse a guest-physical range reaching the C-bit or the reduced bits."""
        top = base + size
        limit = 1 << self.guest_phys_bits
        if top > limit:
            why = (
                f"the C-bit (cbitpos {self.cbitpos})"
                if self.guest_phys_bits >= self.cbitpos
                else f"the reduced address bits (guest MAXPHYADDR "
                f"{self.guest_phys_bits} = phys-bits {self.phys_bits} - "
                f"reduced-phys-bits {self.reduced_phys_bits})"
            )
            raise ConfigError(f"{what} up to {top:#x} reaches {why}")

    @classmethod
    def from_options(cls, **options: object) -> GuestConfig:
        """Build from QEMU-style names: ``cbitpos``, ``reduced-phys-bits``, ``memory``."""
        norm: dict[str, object] = {}
        for key, value in options.items():
            if value is None:
                continue
            name = key.replace("-", "_")
            if name == "memory":
                value = parse_size(value)  # type: ignore[arg-type]
            if name == "mode" and isinstance(value, str):
                value = GuestMode.parse(value)
            norm[name] = value
        return cls(**norm)  # type: ignore[arg-type]
