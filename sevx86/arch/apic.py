"""The local APIC registers the host emulates for several vCPUs: ID, EOI, ICR.

A multi-processor guest starts its APs and signals them with inter-processor
interrupts: it writes the Interrupt Command Register of its own local APIC
(AMD APM vol 2, 16.5 "Interprocessor Interrupts"; Intel SDM vol 3, 10.6.1).
Under SEV-ES that write is an NAE event like any MSR or MMIO access: the
guest's #VC handler forwards it through the GHCB and the hypervisor delivers
the IPI (KVM: ``kvm_apic_send_ipi`` in arch/x86/kvm/lapic.c).

Two register interfaces:

* x2APIC: MSRs 0x800 + (xAPIC offset >> 4); the ICR is one 64-bit MSR
  (0x830) with a 32-bit destination in bits 63:32;
* xAPIC: a 4 KiB MMIO page at ``APIC_DEFAULT_BASE``; the ICR is two 32-bit
  registers, low at 0x300 (writing it sends the IPI) and high at 0x310 with
  an 8-bit destination in bits 31:24.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag

from sevx86.arch.msr import APIC_DEFAULT_BASE, X2APIC_FIRST

XAPIC_PAGE_SIZE = 0x1000


class ApicReg(IntEnum):
    """Offsets of the xAPIC MMIO page (the x2APIC MSR is 0x800 + offset >> 4)."""

    ID = 0x020
    VERSION = 0x030
    TPR = 0x080
    APR = 0x090
    PPR = 0x0A0
    EOI = 0x0B0
    RRD = 0x0C0
    LDR = 0x0D0
    DFR = 0x0E0  # xAPIC only
    SVR = 0x0F0
    ISR = 0x100  # eight registers, 0x100..0x170 (256 bits)
    TMR = 0x180  # eight registers, 0x180..0x1F0
    IRR = 0x200  # eight registers, 0x200..0x270
    ESR = 0x280
    LVT_CMCI = 0x2F0
    ICR_LOW = 0x300
    ICR_HIGH = 0x310  # xAPIC only: x2APIC folds it into the 64-bit ICR MSR
    LVT_TIMER = 0x320
    LVT_THERMAL = 0x330
    LVT_PERF = 0x340
    LVT_LINT0 = 0x350
    LVT_LINT1 = 0x360
    LVT_ERROR = 0x370
    TIMER_INITIAL = 0x380
    TIMER_CURRENT = 0x390
    TIMER_DIVIDE = 0x3E0
    SELF_IPI = 0x3F0  # x2APIC only


# The local vector table (AMD APM vol 2, 16.4 "Local Interrupts").
LVT_REGS = (
    ApicReg.LVT_CMCI,
    ApicReg.LVT_TIMER,
    ApicReg.LVT_THERMAL,
    ApicReg.LVT_PERF,
    ApicReg.LVT_LINT0,
    ApicReg.LVT_LINT1,
    ApicReg.LVT_ERROR,
)
LVT_MASKED = 1 << 16  # the reset value of every LVT entry
LVT_TIMER_PERIODIC = 1 << 17
# Reset values (APM vol 2, 16.3.1; Intel SDM vol 3, 10.4.7.1): DFR flat model, SVR
# vector 0xFF with the APIC software-disabled.
DFR_RESET = 0xFFFF_FFFF
SVR_RESET = 0x0000_00FF
# Vectors 0..15 are reserved for exceptions: an APIC refuses to send or accept them.
APIC_FIRST_LEGAL_VECTOR = 16


class EsrBit(IntFlag):
    """Error status register bits (AMD APM vol 2, 16.4.6; Intel SDM vol 3, 10.5.3)."""

    SEND_ILLEGAL_VECTOR = 1 << 5  # a write to the ICR or SELF IPI named vector 0..15
    RECEIVE_ILLEGAL_VECTOR = 1 << 6  # an interrupt with vector 0..15 arrived
    ILLEGAL_REGISTER_ADDRESS = 1 << 7


def x2apic_msr(reg: ApicReg) -> int:
    """The x2APIC MSR of an xAPIC register (Intel SDM vol 3, table 10-6)."""
    return X2APIC_FIRST + (int(reg) >> 4)


X2APIC_ID = x2apic_msr(ApicReg.ID)  # 0x802
X2APIC_ICR = x2apic_msr(ApicReg.ICR_LOW)  # 0x830
X2APIC_EOI = x2apic_msr(ApicReg.EOI)  # 0x80B
X2APIC_SELF_IPI = x2apic_msr(ApicReg.SELF_IPI)  # 0x83F
XAPIC_BASE = APIC_DEFAULT_BASE
# Version register: version 0x14 (integrated APIC), max LVT entry 5 (as KVM).
APIC_VERSION = 0x0005_0014


class DeliveryMode(IntEnum):
    """ICR bits 10:8, the message type."""

    FIXED = 0b000
    LOWEST_PRIORITY = 0b001
    SMI = 0b010
    NMI = 0b100
    INIT = 0b101
    STARTUP = 0b110  # SIPI: the vector is the real-mode start page


class Shorthand(IntEnum):
    """ICR bits 19:18: who gets the IPI besides the destination field."""

    NONE = 0b00  # the destination field says
    SELF = 0b01
    ALL_INCLUDING_SELF = 0b10
    ALL_EXCLUDING_SELF = 0b11


ICR_VECTOR_MASK = 0xFF
ICR_MODE_SHIFT = 8
ICR_DEST_LOGICAL = 1 << 11
ICR_DELIVERY_PENDING = 1 << 12  # xAPIC only, read-only: never set here (delivery is immediate)
ICR_LEVEL_ASSERT = 1 << 14
ICR_TRIGGER_LEVEL = 1 << 15
ICR_SHORTHAND_SHIFT = 18
X2APIC_DEST_SHIFT = 32
XAPIC_DEST_SHIFT = 24  # in ICR_HIGH
BROADCAST_X2APIC = 0xFFFF_FFFF
BROADCAST_XAPIC = 0xFF


@dataclass(frozen=True)
class Icr:
    """One decoded ICR write."""

    vector: int
    mode: DeliveryMode | int
    logical: bool
    assert_level: bool
    level_triggered: bool
    shorthand: Shorthand
    destination: int
    x2apic: bool

    @property
    def is_init_deassert(self) -> bool:
        """INIT level de-assert: a no-op for all but ancient APICs (KVM ignores it)."""
        return self.mode == DeliveryMode.INIT and self.level_triggered and not self.assert_level

    @property
    def broadcast(self) -> bool:
        return self.destination == (BROADCAST_X2APIC if self.x2apic else BROADCAST_XAPIC)


def decode_icr(value: int, *, x2apic: bool) -> Icr:
    """The x2APIC ICR MSR value, or for xAPIC ``ICR_HIGH << 32 | ICR_LOW``."""
    mode = (value >> ICR_MODE_SHIFT) & 0b111
    dest = value >> X2APIC_DEST_SHIFT
    if not x2apic:
        dest = (dest >> XAPIC_DEST_SHIFT) & 0xFF
    return Icr(
        vector=value & ICR_VECTOR_MASK,
        mode=DeliveryMode(mode) if mode in DeliveryMode._value2member_map_ else mode,
        logical=bool(value & ICR_DEST_LOGICAL),
        assert_level=bool(value & ICR_LEVEL_ASSERT),
        level_triggered=bool(value & ICR_TRIGGER_LEVEL),
        shorthand=Shorthand((value >> ICR_SHORTHAND_SHIFT) & 0b11),
        destination=dest & 0xFFFF_FFFF,
        x2apic=x2apic,
    )


def encode_icr(
    mode: DeliveryMode,
    *,
    vector: int = 0,
    destination: int = 0,
    shorthand: Shorthand = Shorthand.NONE,
    x2apic: bool = True,
    assert_level: bool = True,
    level_triggered: bool = False,
) -> int:
    """An ICR value (x2APIC MSR form, or xAPIC ``high << 32 | low``)."""
    low = (vector & ICR_VECTOR_MASK) | (int(mode) << ICR_MODE_SHIFT)
    low |= int(shorthand) << ICR_SHORTHAND_SHIFT
    if assert_level:
        low |= ICR_LEVEL_ASSERT
    if level_triggered:
        low |= ICR_TRIGGER_LEVEL
    dest = destination if x2apic else (destination & 0xFF) << XAPIC_DEST_SHIFT
    return low | (dest << X2APIC_DEST_SHIFT)


__all__ = [
    "APIC_FIRST_LEGAL_VECTOR",
    "APIC_VERSION",
    "ApicReg",
    "DFR_RESET",
    "EsrBit",
    "LVT_MASKED",
    "LVT_REGS",
    "LVT_TIMER_PERIODIC",
    "SVR_RESET",
    "DeliveryMode",
    "Icr",
    "Shorthand",
    "X2APIC_EOI",
    "X2APIC_ICR",
    "X2APIC_ID",
    "X2APIC_SELF_IPI",
    "XAPIC_BASE",
    "XAPIC_PAGE_SIZE",
    "decode_icr",
    "encode_icr",
    "x2apic_msr",
]
