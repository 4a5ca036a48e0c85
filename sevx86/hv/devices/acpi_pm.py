"""The ACPI power-management register block: PM1 event/control and the PM timer.

Layout inside the block (QEMU ``hw/acpi/core.c`` as the PIIX4 maps it, ACPI
spec 6.x, 4.8.3 "PM1 Event/Control Grouping" and 4.8.3.3 "Power Management
Timer"): PM1a_STS at +0 (write 1 to clear), PM1a_EN at +2, PM1a_CNT at +4,
PM_TMR at +8. The timer is a 24-bit counter at 3.579545 MHz (the PIIX4's
width; firmware sees TMR_VAL_EXT clear), computed from the platform's
deterministic ``VirtualClock``. Writing PM1a_CNT with SLP_EN set reports the
sleep type to ``on_sleep`` (on the PIIX4, QEMU powers off for type 0).

The block's base is not fixed: the guest programs it in the PIIX4 PM
function's PMBA register (``sevx86.hv.devices.i440fx``).
"""

from __future__ import annotations

from collections.abc import Callable

from sevx86.hv.clock import VirtualClock

ACPI_PM_BLOCK_SIZE = 0x40
PM1_STS = 0x00
PM1_EN = 0x02
PM1_CNT = 0x04
PM_TMR = 0x08
PM_TIMER_HZ = 3_579_545
PM_TIMER_MASK = 0xFF_FFFF  # 24 bits
PM1_CNT_SCI_EN = 0x0001
PM1_CNT_SLP_TYP_SHIFT = 10
PM1_CNT_SLP_TYP_MASK = 0x7 << PM1_CNT_SLP_TYP_SHIFT
PM1_CNT_SLP_EN = 0x2000
PM1_STS_TMR = 0x0001
NS_PER_S = 1_000_000_000


class AcpiPmBlock:
    name = "acpi-pm"

    def __init__(self, clock: VirtualClock, on_sleep: Callable[[int], None] | None = None):
        self.clock = clock
        self.on_sleep = on_sleep
        self.base: int | None = None
        self.sts = 0
        self.en = 0
        self.cnt = 0
        self.timer_reads = 0

    def timer(self) -> int:
        return (self.clock.now_ns() * PM_TIMER_HZ // NS_PER_S) & PM_TIMER_MASK

    def io_read(self, port: int, size: int) -> int:
        assert self.base is not None
        off = port - self.base
        if PM_TMR <= off < PM_TMR + 4:
            self.timer_reads += 1
            return self.timer() >> (8 * (off - PM_TMR))
        regs = self.sts | self.en << 16 | self.cnt << 32
        return regs >> (8 * off) if off < PM_TMR else 0

    def io_write(self, port: int, size: int, value: int) -> None:
        assert self.base is not None
        off = port - self.base
        for i in range(size):
            self._write_byte(off + i, (value >> (8 * i)) & 0xFF)
        if off <= PM1_CNT + 1 < off + size and self.cnt & PM1_CNT_SLP_EN:
            self.cnt &= ~PM1_CNT_SLP_EN  # SLP_EN reads as 0
            if self.on_sleep is not None:
                self.on_sleep((self.cnt & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT)

    def _write_byte(self, off: int, byte: int) -> None:
        if off in (PM1_STS, PM1_STS + 1):
            self.sts &= ~(byte << (8 * (off - PM1_STS)))  # write 1 to clear
        elif off in (PM1_EN, PM1_EN + 1):
            shift = 8 * (off - PM1_EN)
            self.en = (self.en & ~(0xFF << shift)) | byte << shift
        elif off in (PM1_CNT, PM1_CNT + 1):
            shift = 8 * (off - PM1_CNT)
            self.cnt = (self.cnt & ~(0xFF << shift)) | byte << shift


__all__ = ["ACPI_PM_BLOCK_SIZE", "AcpiPmBlock", "PM_TIMER_HZ", "PM_TMR"]
