"""A local APIC in xAPIC mode: its MMIO page at 0xFEE0_0000.

Register map (AMD APM vol 2, 16.3 "Local APIC Registers"; Intel SDM vol 3,
table 11-1): each register is 32 bits at a 16-byte-aligned offset. What a
firmware touches is modelled -- ID, version, TPR, PPR, EOI, LDR, DFR, the
spurious-interrupt vector register, ISR/TMR/IRR, ESR, the ICR, every LVT
entry and the timer (initial count, current count, divide configuration).
Reset values follow the specification: LVT entries masked (0x0001_0000),
DFR all ones, SVR 0xFF (APIC software-disabled).

The timer counts down at the APIC bus clock divided by the divide
configuration; like QEMU and KVM, sevx86 uses a 1 GHz bus clock (one tick
per nanosecond of the platform's ``VirtualClock``). One-shot timers stop at
0; periodic ones reload. No interrupt is delivered (the event-injection path
does not exist yet): a firmware polling the current count sees time pass,
one waiting for the interrupt waits in vain -- the trace shows it. IPIs
written to the ICR are recorded (``ipis``) and reported to ``on_ipi``.

Under SEV-ES the page is not guest RAM: each access is a nested page fault,
a #VC, and the guest's handler forwards it as a GHCB MMIO request.
"""

from __future__ import annotations

from collections.abc import Callable

from sevx86.hv.clock import VirtualClock

APIC_BASE = 0xFEE0_0000
APIC_SIZE = 0x1000

REG_ID = 0x020
REG_VERSION = 0x030
REG_TPR = 0x080
REG_APR = 0x090
REG_PPR = 0x0A0
REG_EOI = 0x0B0
REG_RRD = 0x0C0
REG_LDR = 0x0D0
REG_DFR = 0x0E0
REG_SVR = 0x0F0
REG_ISR = 0x100  # eight registers, 0x100..0x170
REG_TMR = 0x180
REG_IRR = 0x200
REG_ESR = 0x280
REG_LVT_CMCI = 0x2F0
REG_ICR_LO = 0x300
REG_ICR_HI = 0x310
REG_LVT_TIMER = 0x320
REG_LVT_THERMAL = 0x330
REG_LVT_PERF = 0x340
REG_LVT_LINT0 = 0x350
REG_LVT_LINT1 = 0x360
REG_LVT_ERROR = 0x370
REG_TIMER_INITIAL = 0x380
REG_TIMER_CURRENT = 0x390
REG_TIMER_DIVIDE = 0x3E0

LVT_MASKED = 0x0001_0000
LVT_TIMER_PERIODIC = 0x0002_0000
LVT_REGS = (
    REG_LVT_CMCI,
    REG_LVT_TIMER,
    REG_LVT_THERMAL,
    REG_LVT_PERF,
    REG_LVT_LINT0,
    REG_LVT_LINT1,
    REG_LVT_ERROR,
)
# Version 0x14 (integrated APIC) with 6 LVT entries (max LVT index 5): QEMU's value.
APIC_VERSION = 0x14 | (5 << 16)
SVR_RESET = 0x0000_00FF
ICR_DELIVERY_STATUS = 1 << 12
ICR_DELIVERY_MODE_SHIFT = 8
DELIVERY_MODES = {0: "fixed", 1: "lowest", 2: "SMI", 4: "NMI", 5: "INIT", 6: "SIPI"}
WRITABLE = {
    REG_ID,
    REG_TPR,
    REG_LDR,
    REG_DFR,
    REG_SVR,
    REG_ESR,
    REG_ICR_HI,
    REG_TIMER_DIVIDE,
    *LVT_REGS,
}

IpiHook = Callable[[int, int], None]  # (icr_low, icr_high)


class LocalApic:
    name = "lapic"

    def __init__(self, clock: VirtualClock, apic_id: int = 0, on_ipi: IpiHook | None = None):
        self.clock = clock
        self.on_ipi = on_ipi
        self.regs: dict[int, int] = {
            REG_ID: apic_id << 24,
            REG_VERSION: APIC_VERSION,
            REG_DFR: 0xFFFF_FFFF,
            REG_SVR: SVR_RESET,
            **{r: LVT_MASKED for r in LVT_REGS},
        }
        self.isr = [0] * 8
        self.timer_initial = 0
        self.timer_loaded_ns = 0
        self.ipis: list[tuple[int, int]] = []

    # -- timer ------------------------------------------------------------------------
    @property
    def divide_shift(self) -> int:
        """log2 of the divider: DCR bits 0,1,3 -> 2, 4, ..., 128, 1 (APM 16.4.1)."""
        dcr = self.regs.get(REG_TIMER_DIVIDE, 0)
        v = (dcr & 3) | ((dcr >> 1) & 4)
        return (v + 1) & 7

    def timer_current(self) -> int:
        if not self.timer_initial:
            return 0
        ticks = (self.clock.now_ns() - self.timer_loaded_ns) >> self.divide_shift
        if self.regs[REG_LVT_TIMER] & LVT_TIMER_PERIODIC:
            return self.timer_initial - ticks % self.timer_initial
        return max(self.timer_initial - ticks, 0)

    # -- registers ----------------------------------------------------------------------
    def read_reg(self, reg: int) -> int:
        if REG_ISR <= reg < REG_ISR + 0x80:
            return self.isr[(reg - REG_ISR) >> 4]
        if reg == REG_TIMER_CURRENT:
            return self.timer_current()
        if reg == REG_TIMER_INITIAL:
            return self.timer_initial
        if reg == REG_PPR:
            return self.regs.get(REG_TPR, 0) & 0xF0
        return self.regs.get(reg, 0)

    def write_reg(self, reg: int, value: int) -> None:
        value &= 0xFFFF_FFFF
        if reg == REG_EOI:
            for i in reversed(range(8)):  # end the highest in-service interrupt
                if self.isr[i]:
                    self.isr[i] &= ~(1 << (self.isr[i].bit_length() - 1))
                    break
        elif reg == REG_TIMER_INITIAL:
            self.timer_initial = value
            self.timer_loaded_ns = self.clock.now_ns()
        elif reg == REG_ICR_LO:
            self.regs[REG_ICR_LO] = value & ~ICR_DELIVERY_STATUS  # delivered at once
            high = self.regs.get(REG_ICR_HI, 0)
            self.ipis.append((value, high))
            if self.on_ipi is not None:
                self.on_ipi(value, high)
        elif reg in WRITABLE:
            self.regs[reg] = value

    # -- MMIO ---------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        reg, sub = offset & ~0xF, offset & 0xF
        if sub >= 4:
            return 0  # the other 12 bytes of each 16-byte slot are reserved
        return self.read_reg(reg) >> (8 * sub)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        reg, sub = offset & ~0xF, offset & 0xF
        if sub == 0 and size >= 4:
            self.write_reg(reg, value)


def describe_ipi(icr_low: int, icr_high: int) -> str:
    mode = DELIVERY_MODES.get((icr_low >> ICR_DELIVERY_MODE_SHIFT) & 7, "reserved")
    shorthand = ("", " to self", " to all", " to all others")[(icr_low >> 18) & 3]
    dest = "" if shorthand else f" to APIC {icr_high >> 24}"
    return f"{mode} IPI vector {icr_low & 0xFF:#x}{shorthand}{dest}"


__all__ = ["APIC_BASE", "APIC_SIZE", "LocalApic", "describe_ipi"]
