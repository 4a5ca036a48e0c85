"""The ACPI power-management register block: PM1 event/control and the PM timer.

Layout inside the block (QEMU ``hw/acpi/core.c`` as the PIIX4 maps it, ACPI
spec 6.x, 4.8.3 "PM1 Event/Control Grouping" and 4.8.3.3 "Power Management
Timer"): PM1a_STS at +0 (write 1 to clear), PM1a_EN at +2, PM1a_CNT at +4,
PM_TMR at +8. The timer is a 24-bit counter at 3.579545 MHz (the PIIX4's
width; firmware sees TMR_VAL_EXT clear), computed from the platform's
deterministic ``VirtualClock``. Writing PM1a_CNT with SLP_EN set reports the
sleep type to ``on_sleep`` (on the PIIX4, QEMU powers off for type 0).

The SCI (IRQ9 on a PIIX4, QEMU ``acpi_pm1_evt_get_sts`` / ``pm_update_sci``):
PM1_STS.TMR_STS is set each time bit 23 of the timer changes (ACPI 6.x
4.8.3.3, every 2.34 s), and the SCI line is high while a status bit and its
enable in PM1_EN are both set (timer, global, power button, RTC), until the
guest clears the status by writing 1 to it. As in QEMU the SCI is not gated
by SCI_EN.

The block's base is not fixed: the guest programs it in the PIIX4 PM
function's PMBA register (``sevx86.hv.devices.i440fx``).
"""

from __future__ import annotations

from collections.abc import Callable

from sevx86.hv.clock import TimeSource
from sevx86.hv.devices.irq import IrqLine

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
PM1_SCI_EVENTS = 0x0001 | 0x0020 | 0x0100 | 0x0400  # TMR, GBL, PWRBTN, RTC (STS and EN)
PM_TIMER_MSB_SHIFT = 23
NS_PER_S = 1_000_000_000


class AcpiPmBlock:
    name = "acpi-pm"

    def __init__(
        self,
        clock: TimeSource,
        on_sleep: Callable[[int], None] | None = None,
        sci: IrqLine | None = None,
    ):
        self.clock = clock
        self.on_sleep = on_sleep
        self.sci = sci if sci is not None else IrqLine("sci")
        self._msb_changes_seen = 0
        self.base: int | None = None
        self.sts = 0
        self.en = 0
        self.cnt = 0
        self.timer_reads = 0

    def ticks(self) -> int:
        return self.clock.now_ns() * PM_TIMER_HZ // NS_PER_S

    def timer(self) -> int:
        return self.ticks() & PM_TIMER_MASK

    def poll(self) -> None:
        """Time moved: TMR_STS for every change of timer bit 23 since the last poll."""
        changes = self.ticks() >> PM_TIMER_MSB_SHIFT
        if changes > self._msb_changes_seen:
            self._msb_changes_seen = changes
            self.sts |= PM1_STS_TMR
        self._update_sci()

    def _update_sci(self) -> None:
        level = bool(self.sts & self.en & PM1_SCI_EVENTS)
        if level != self.sci.level:
            self.sci.set_level(level)

    def next_event_ns(self) -> int | None:
        if not self.en & PM1_STS_TMR:
            return None
        nxt = (self._msb_changes_seen + 1) << PM_TIMER_MSB_SHIFT
        return -(-nxt * NS_PER_S // PM_TIMER_HZ)

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
        self._update_sci()
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


APM_CONTROL_PORT = 0xB2  # the FADT's SMI_CMD
APM_PORT_COUNT = 2  # control at 0xB2, status at 0xB3
APM_ACPI_ENABLE = 0xF1  # the FADT's ACPI_ENABLE / ACPI_DISABLE values (QEMU's PIIX4)
APM_ACPI_DISABLE = 0xF0


class ApmControl:
    """The APM control/status ports (0xB2/0xB3): the FADT's SMI_CMD on a PIIX4.

    On QEMU's PIIX4 a write to 0xB2 raises an SMI, whose handler switches
    between legacy and ACPI mode; without SMM, QEMU (``piix4_apm_ctrl_changed``)
    does it directly: ACPI_ENABLE sets PM1_CNT.SCI_EN, ACPI_DISABLE clears it --
    what an OS's ``acpi_enable()`` writes and then waits to see (ACPI 6.x
    4.8.2.5, 16.3.1). 0xB3 is a scratch status byte; 0xB2 reads back.
    """

    name = "apm"

    def __init__(self, pm: AcpiPmBlock):
        self.pm = pm
        self.control = 0
        self.status = 0

    def io_read(self, port: int, size: int) -> int:
        return self.control if port == APM_CONTROL_PORT else self.status

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port != APM_CONTROL_PORT:
            self.status = value
            return
        self.control = value
        if value == APM_ACPI_ENABLE:
            self.pm.cnt |= PM1_CNT_SCI_EN
        elif value == APM_ACPI_DISABLE:
            self.pm.cnt &= ~PM1_CNT_SCI_EN


__all__ = ["ACPI_PM_BLOCK_SIZE", "AcpiPmBlock", "ApmControl", "PM_TIMER_HZ", "PM_TMR"]
