"""The local APIC: one per vCPU, reached as the xAPIC page and as the x2APIC MSRs.

There is one model of the local APIC (``LocalApic``) and the hypervisor
always creates one per vCPU (``LocalApics``, ``Hypervisor.lapic``). Both
register interfaces reach the same register file (AMD APM vol 2, 16.3 "Local
APIC Registers"; Intel SDM vol 3, table 10-1 and 10.12 for x2APIC):

* the xAPIC MMIO page at 0xFEE0_0000: 32-bit registers at 16-byte-aligned
  offsets; the ICR is two registers, writing the low one sends the IPI;
* the x2APIC MSRs 0x800 + (offset >> 4): the ICR is one 64-bit MSR, SELF IPI
  (0x83F) sends a fixed interrupt to this APIC, ID/VERSION/LDR are read-only
  and a write to them is a #GP, EOI and SELF IPI are write-only.

Under SEV-ES neither is guest RAM nor a passthrough MSR: each access is a
#VC the guest's handler forwards as a GHCB MMIO or MSR request.

What is modelled: ID, version, TPR/PPR, EOI, LDR, DFR, SVR, ISR/TMR/IRR as
readable registers, ESR with its write-to-latch protocol, every LVT entry
(reset masked), the ICR and the timer. The timer counts down at the APIC bus
clock divided by the divide configuration, a 1 GHz bus clock as QEMU and KVM
use (one tick per nanosecond of the ``VirtualClock``); one-shot timers stop at
0, periodic ones reload. Its interrupt is not delivered yet.

The interface other host code uses (the platform's interrupt controllers,
``sevx86.hv.smp``):

* ``accept_interrupt(vector)``: an interrupt message for this APIC (from an
  IOAPIC, an MSI, an IPI): an illegal vector sets "receive illegal vector";
  a legal one goes to ``deliver``, the hypervisor's event path;
* ``eoi()``, ``tpr``, ``ppr``, ``lvt(reg)``, ``timer_current()``;
* ``send_ipi(source, icr)``, the callback an ICR write calls: ``sevx86.hv.smp``
  routes the IPI to its targets. An ICR or SELF IPI write with a fixed or
  lowest-priority vector 0..15 is not sent: "send illegal vector" is set in
  ESR and the guest goes on (Intel SDM vol 3, 10.5.3), as a real APIC does.

The in-service / priority arbitration of injected interrupts is not yet
done here: the hypervisor's event path (``sevx86.hv.smp``) injects the
highest requested vector once the guest can take it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sevx86.arch.apic import (
    APIC_FIRST_LEGAL_VECTOR,
    APIC_VERSION,
    DFR_RESET,
    ICR_DELIVERY_PENDING,
    LVT_MASKED,
    LVT_REGS,
    LVT_TIMER_PERIODIC,
    SVR_RESET,
    X2APIC_ICR,
    X2APIC_ID,
    XAPIC_BASE,
    XAPIC_PAGE_SIZE,
    ApicReg,
    DeliveryMode,
    EsrBit,
    Icr,
    Shorthand,
    decode_icr,
    x2apic_msr,
)
from sevx86.arch.bits import U32_MASK as _U32
from sevx86.arch.msr import X2APIC_FIRST, X2APIC_LAST
from sevx86.hv.clock import VirtualClock

APIC_BASE = XAPIC_BASE
APIC_SIZE = XAPIC_PAGE_SIZE
# A register slot is 16 bytes; only its first 4 are the register.
_SLOT = 0x10
_BANK = 8  # ISR, TMR and IRR are 8 registers of 32 bits each

# Registers a guest may write in xAPIC mode (the rest are read-only or actions).
_WRITABLE = frozenset(
    {
        ApicReg.ID,
        ApicReg.TPR,
        ApicReg.LDR,
        ApicReg.DFR,
        ApicReg.SVR,
        ApicReg.ICR_HIGH,
        ApicReg.TIMER_DIVIDE,
        *LVT_REGS,
    }
)
# x2APIC: read-only registers (a WRMSR is a #GP) and write-only ones (an RDMSR is).
_X2APIC_READ_ONLY = frozenset(x2apic_msr(r) for r in (ApicReg.ID, ApicReg.VERSION, ApicReg.LDR))
_X2APIC_WRITE_ONLY = frozenset(x2apic_msr(r) for r in (ApicReg.EOI, ApicReg.SELF_IPI))
_FIXED_MODES = (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY)
DELIVERY_NAMES = {
    DeliveryMode.FIXED: "fixed",
    DeliveryMode.LOWEST_PRIORITY: "lowest",
    DeliveryMode.SMI: "SMI",
    DeliveryMode.NMI: "NMI",
    DeliveryMode.INIT: "INIT",
    DeliveryMode.STARTUP: "SIPI",
}

SendIpi = Callable[[int, Icr], None]  # (source APIC ID, the decoded ICR)
Deliver = Callable[[int, int], None]  # (APIC ID, vector): the hypervisor's event path
LogFn = Callable[..., None]


class LocalApic:
    """The local APIC of one vCPU (see the module docstring for its interface)."""

    name = "lapic"

    def __init__(
        self,
        clock: VirtualClock,
        apic_id: int = 0,
        *,
        send_ipi: SendIpi | None = None,
        deliver: Deliver | None = None,
        log: LogFn | None = None,
    ):
        self.clock = clock
        self.apic_id = apic_id
        self.send_ipi = send_ipi
        self.deliver = deliver
        self.log = log
        self.regs: dict[int, int] = {
            ApicReg.ID: apic_id << 24,
            ApicReg.VERSION: APIC_VERSION,
            ApicReg.DFR: DFR_RESET,
            ApicReg.SVR: SVR_RESET,
            **{r: LVT_MASKED for r in LVT_REGS},
        }
        self.isr = [0] * _BANK
        self.esr = 0  # what a read of ESR returns: the errors latched at its last write
        self.errors = 0  # errors since the last ESR write (not yet visible)
        self.timer_initial = 0
        self.timer_loaded_ns = 0

    # -- interrupts -----------------------------------------------------------------------
    def accept_interrupt(self, vector: int) -> bool:
        """An interrupt message for this APIC; False (and an ESR bit) for vectors 0..15."""
        if vector < APIC_FIRST_LEGAL_VECTOR:
            self._error(EsrBit.RECEIVE_ILLEGAL_VECTOR, f"received illegal vector {vector:#x}")
            return False
        if self.deliver is not None:
            self.deliver(self.apic_id, vector)
        return True

    def eoi(self) -> None:
        """End the highest in-service interrupt."""
        for i in reversed(range(_BANK)):
            if self.isr[i]:
                self.isr[i] &= ~(1 << (self.isr[i].bit_length() - 1))
                return

    @property
    def tpr(self) -> int:
        return self.regs.get(ApicReg.TPR, 0)

    @property
    def ppr(self) -> int:
        """Processor priority: the TPR's class (no in-service arbitration yet)."""
        return self.tpr & 0xF0

    def lvt(self, reg: ApicReg) -> int:
        return self.regs[reg]

    def _error(self, bit: EsrBit, what: str) -> None:
        self.errors |= bit
        if self.log is not None:
            summary = f"local APIC {self.apic_id}: {what} (ESR {bit.name})"
            self.log("apic-error", summary, vcpu=self.apic_id)
        lvt = self.regs[ApicReg.LVT_ERROR]
        if not lvt & LVT_MASKED and lvt & 0xFF >= APIC_FIRST_LEGAL_VECTOR and self.deliver:
            self.deliver(self.apic_id, lvt & 0xFF)

    # -- timer ----------------------------------------------------------------------------
    @property
    def divide_shift(self) -> int:
        """log2 of the divider: DCR bits 0,1,3 -> 2, 4, ..., 128, 1 (APM 16.4.1)."""
        dcr = self.regs.get(ApicReg.TIMER_DIVIDE, 0)
        v = (dcr & 3) | ((dcr >> 1) & 4)
        return (v + 1) & 7

    def timer_current(self) -> int:
        if not self.timer_initial:
            return 0
        ticks = (self.clock.now_ns() - self.timer_loaded_ns) >> self.divide_shift
        if self.regs[ApicReg.LVT_TIMER] & LVT_TIMER_PERIODIC:
            return self.timer_initial - ticks % self.timer_initial
        return max(self.timer_initial - ticks, 0)

    # -- the register file (xAPIC offsets) ---------------------------------------------------
    def read_reg(self, reg: int) -> int:
        if ApicReg.ISR <= reg < ApicReg.ISR + _BANK * _SLOT:
            return self.isr[(reg - ApicReg.ISR) // _SLOT]
        if reg == ApicReg.TIMER_CURRENT:
            return self.timer_current()
        if reg == ApicReg.TIMER_INITIAL:
            return self.timer_initial
        if reg == ApicReg.PPR:
            return self.ppr
        if reg == ApicReg.ESR:
            return self.esr
        return self.regs.get(reg, 0)

    def write_reg(self, reg: int, value: int) -> None:
        value &= _U32
        if reg == ApicReg.EOI:
            self.eoi()
        elif reg == ApicReg.ESR:
            # A write latches the errors seen since the previous one (SDM 10.5.3).
            self.esr, self.errors = self.errors, 0
        elif reg == ApicReg.TIMER_INITIAL:
            self.timer_initial = value
            self.timer_loaded_ns = self.clock.now_ns()
        elif reg == ApicReg.ICR_LOW:
            self.regs[ApicReg.ICR_LOW] = value & ~ICR_DELIVERY_PENDING  # delivered at once
            high = self.regs.get(ApicReg.ICR_HIGH, 0)
            self._send(decode_icr(high << 32 | value, x2apic=False))
        elif reg in _WRITABLE:
            self.regs[reg] = value

    def _send(self, icr: Icr) -> None:
        if icr.mode in _FIXED_MODES and icr.vector < APIC_FIRST_LEGAL_VECTOR:
            self._error(EsrBit.SEND_ILLEGAL_VECTOR, f"IPI with illegal vector {icr.vector:#x}")
            return
        if self.send_ipi is not None:
            self.send_ipi(self.apic_id, icr)

    # -- xAPIC page (MmioDevice protocol) ---------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        reg, sub = offset & ~(_SLOT - 1), offset & (_SLOT - 1)
        if sub >= 4:
            return 0  # the other 12 bytes of each 16-byte slot are reserved
        return self.read_reg(reg) >> (8 * sub)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        reg, sub = offset & ~(_SLOT - 1), offset & (_SLOT - 1)
        if sub == 0 and size >= 4:
            self.write_reg(reg, value)

    # -- x2APIC MSRs ------------------------------------------------------------------------
    def msr_read(self, msr: int) -> int | None:
        """RDMSR of an x2APIC register; None is a #GP."""
        if msr in _X2APIC_WRITE_ONLY:
            return None
        if msr == X2APIC_ID:
            return self.apic_id  # the full 32-bit x2APIC ID
        if msr == x2apic_msr(ApicReg.LDR):
            return 1 << self.apic_id if self.apic_id < 32 else 0
        if msr == X2APIC_ICR:
            return self.regs.get(ApicReg.ICR_LOW, 0) | self.regs.get(ApicReg.ICR_HIGH, 0) << 32
        return self.read_reg((msr - X2APIC_FIRST) * _SLOT)

    def msr_write(self, msr: int, value: int) -> bool:
        """WRMSR of an x2APIC register; False is a #GP."""
        if msr in _X2APIC_READ_ONLY:
            return False
        if msr == X2APIC_ICR:
            self.regs[ApicReg.ICR_LOW] = value & _U32 & ~ICR_DELIVERY_PENDING
            self.regs[ApicReg.ICR_HIGH] = value >> 32 & _U32
            self._send(decode_icr(value, x2apic=True))
            return True
        if msr == x2apic_msr(ApicReg.SELF_IPI):
            # A fixed, edge-triggered IPI to this APIC (SDM 10.12.11).
            self._send(
                Icr(
                    vector=value & 0xFF,
                    mode=DeliveryMode.FIXED,
                    logical=False,
                    assert_level=True,
                    level_triggered=False,
                    shorthand=Shorthand.SELF,
                    destination=self.apic_id,
                    x2apic=True,
                )
            )
            return True
        if msr == x2apic_msr(ApicReg.ESR) and value:
            return False  # only 0 may be written in x2APIC mode (SDM 10.5.3)
        self.write_reg((msr - X2APIC_FIRST) * _SLOT, value)
        return True


class LocalApics:
    """Every vCPU's ``LocalApic``: the xAPIC page routed to the accessing vCPU, the MSRs."""

    name = "lapic"

    def __init__(self, apics: Sequence[LocalApic], current: Callable[[], int]):
        self.apics = list(apics)
        self._current = current

    def __getitem__(self, index: int) -> LocalApic:
        return self.apics[index]

    def __len__(self) -> int:
        return len(self.apics)

    def use_clock(self, clock: VirtualClock) -> None:
        """Time the APIC timers by the platform's clock (``QemuPc``)."""
        for apic in self.apics:
            apic.clock = clock

    @staticmethod
    def owns_msr(msr: int) -> bool:
        return X2APIC_FIRST <= msr <= X2APIC_LAST

    def msr_read(self, vcpu: int, msr: int) -> int | None:
        return self.apics[vcpu].msr_read(msr)

    def msr_write(self, vcpu: int, msr: int, value: int) -> bool:
        return self.apics[vcpu].msr_write(msr, value)

    def mmio_read(self, offset: int, size: int) -> int:
        return self.apics[self._current()].mmio_read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.apics[self._current()].mmio_write(offset, size, value)


def describe_ipi(icr: Icr) -> str:
    mode = DELIVERY_NAMES.get(icr.mode, "reserved")  # type: ignore[call-overload]
    shorthand = {
        Shorthand.NONE: "",
        Shorthand.SELF: " to self",
        Shorthand.ALL_INCLUDING_SELF: " to all",
        Shorthand.ALL_EXCLUDING_SELF: " to all others",
    }[icr.shorthand]
    dest = "" if shorthand else f" to APIC {icr.destination}"
    return f"{mode} IPI vector {icr.vector:#x}{shorthand}{dest}"


__all__ = ["APIC_BASE", "APIC_SIZE", "LocalApic", "LocalApics", "describe_ipi"]
