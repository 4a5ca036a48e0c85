"""The PC's CMOS RAM and real-time clock (MC146818) on ports 0x70 (index) and 0x71 (data).

Registers (MC146818A data sheet; QEMU ``hw/rtc/mc146818rtc.c``): 0x00-0x09
seconds .. year, 0x0A-0x0D status registers A-D, 0x0E-0x7F battery-backed
RAM. Bit 7 of an index write is the NMI mask, not part of the index; the
index port reads as 0xFF. Time comes from the platform's deterministic
``VirtualClock`` on top of a fixed start date, in BCD and 24-hour form
unless the guest changes register B. Register A never shows an update in
progress; a guest that sets the time does so with register B's SET bit.

Interrupts on IRQ8 (MC146818A "Interrupts"; QEMU ``rtc_periodic_timer``,
``rtc_update_timer``): register C's PF is set at the periodic rate register
A's RS bits select (32768 >> (RS - 1) Hz; RS 1 and 2 are 256 and 128 Hz, 0
is off), UF at every update (each second, unless SET), AF when an update
makes the time match the alarm bytes (0xC0-0xFF in one of them: "don't
care"). The flags are set whatever register B enables; IRQF (bit 7) and the
IRQ8 line follow (PF & PIE) | (AF & AIE) | (UF & UIE); reading register C
clears them and drops the line. ``poll`` is called when the platform clock
moves; several periods between two polls coalesce into one interrupt.

The RAM holds what PC firmware reads (QEMU ``hw/i386/pc.c`` ``pc_cmos_init``):
base memory at 0x15/0x16, extended memory at 0x17/0x18 and 0x30/0x31 (KiB
above 1 MiB, at most 65535), memory above 16 MiB at 0x34/0x35 and above
4 GiB at 0x5B-0x5D (64 KiB units), the CPU count minus one at 0x5F and the
century at 0x32. OVMF sizes low memory from 0x34/0x35 when fw_cfg has no
``etc/e820``.
"""

from __future__ import annotations

import datetime as dt

from sevx86.hv.clock import TimeSource
from sevx86.hv.devices.irq import IrqLine

CMOS_INDEX_PORT = 0x70
CMOS_DATA_PORT = 0x71
CMOS_SIZE = 128
NMI_DISABLE = 0x80

REG_SECONDS = 0x00
REG_SECONDS_ALARM = 0x01
REG_MINUTES = 0x02
REG_MINUTES_ALARM = 0x03
REG_HOURS = 0x04
REG_HOURS_ALARM = 0x05
REG_DAY_OF_WEEK = 0x06
REG_DAY_OF_MONTH = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
REG_BASE_MEM_LO = 0x15
REG_EXT_MEM_LO = 0x17
REG_CENTURY = 0x32
REG_EXT_MEM2_LO = 0x30
REG_MEM_ABOVE_16M_LO = 0x34
REG_MEM_ABOVE_4G_LO = 0x5B
REG_CPU_COUNT = 0x5F

REG_A_UIP = 0x80
REG_A_RS_MASK = 0x0F  # periodic rate select
REG_B_PIE = 0x40
REG_B_AIE = 0x20
REG_B_UIE = 0x10
REG_C_IRQF = 0x80
REG_C_PF = 0x40
REG_C_AF = 0x20
REG_C_UF = 0x10
ALARM_DONT_CARE = 0xC0  # an alarm byte >= 0xC0 matches any value
RTC_BASE_HZ = 32_768
NS_PER_S = 1_000_000_000
REG_A_RESET = 0x26  # 32.768 kHz time base, 1024 Hz periodic rate (QEMU's reset value)
REG_B_SET = 0x80
REG_B_DM_BINARY = 0x04
REG_B_24H = 0x02
REG_B_RESET = REG_B_24H
REG_D_VRT = 0x80  # valid RAM and time

TIME_REGS = (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY_OF_WEEK, REG_DAY_OF_MONTH)
DATE_REGS = (REG_MONTH, REG_YEAR, REG_CENTURY)
DEFAULT_START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0xF)


class CmosRtc:
    name = "cmos-rtc"

    def __init__(
        self,
        clock: TimeSource,
        *,
        start: dt.datetime = DEFAULT_START,
        irq: IrqLine | None = None,
    ):
        self.clock = clock
        self.irq = irq if irq is not None else IrqLine("irq8")
        self.start = start
        self.start_ns = clock.now_ns()
        self._periodic_base_ns = self.start_ns
        self._periodic_seen = 0
        self._seconds_seen = 0
        self.index = 0
        self.ram = bytearray(CMOS_SIZE)
        self.ram[REG_A] = REG_A_RESET
        self.ram[REG_B] = REG_B_RESET
        self.ram[REG_D] = REG_D_VRT
        self.ram[REG_CENTURY] = _bcd(start.year // 100)

    # -- what a PC BIOS table holds --------------------------------------------------
    def set_pc_memory(self, below_4g: int, above_4g: int = 0, cpus: int = 1) -> None:
        """Fill the memory-size and CPU-count bytes as QEMU's ``pc_cmos_init`` does."""
        self._set16(REG_BASE_MEM_LO, 640)  # KiB of conventional memory
        ext_kib = min(max(below_4g // KiB - 1024, 0), 0xFFFF)
        self._set16(REG_EXT_MEM_LO, ext_kib)
        self._set16(REG_EXT_MEM2_LO, ext_kib)
        above_16m = min(max(below_4g - 16 * MiB, 0) // (64 * KiB), 0xFFFF)
        self._set16(REG_MEM_ABOVE_16M_LO, above_16m)
        high = above_4g // (64 * KiB)
        for i in range(3):
            self.ram[REG_MEM_ABOVE_4G_LO + i] = (high >> (8 * i)) & 0xFF
        self.ram[REG_CPU_COUNT] = (cpus - 1) & 0xFF

    def _set16(self, reg: int, value: int) -> None:
        self.ram[reg] = value & 0xFF
        self.ram[reg + 1] = (value >> 8) & 0xFF

    # -- the clock -------------------------------------------------------------------
    def now(self) -> dt.datetime:
        elapsed = (self.clock.now_ns() - self.start_ns) // 1000
        return self.start + dt.timedelta(microseconds=elapsed)

    def _encode(self, value: int) -> int:
        return value if self.ram[REG_B] & REG_B_DM_BINARY else _bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.ram[REG_B] & REG_B_DM_BINARY else _from_bcd(value)

    def _time_reg(self, reg: int) -> int:
        if self.ram[REG_B] & REG_B_SET:
            return self.ram[reg]  # the guest is setting the time: show what it wrote
        t = self.now()
        if reg == REG_SECONDS:
            return self._encode(t.second)
        if reg == REG_MINUTES:
            return self._encode(t.minute)
        if reg == REG_HOURS:
            if self.ram[REG_B] & REG_B_24H:
                return self._encode(t.hour)
            hour12 = (t.hour % 12) or 12
            return self._encode(hour12) | (0x80 if t.hour >= 12 else 0)
        if reg == REG_DAY_OF_WEEK:
            return self._encode(t.isoweekday() % 7 + 1)  # 1 = Sunday
        if reg == REG_DAY_OF_MONTH:
            return self._encode(t.day)
        if reg == REG_MONTH:
            return self._encode(t.month)
        if reg == REG_YEAR:
            return self._encode(t.year % 100)
        return self._encode(t.year // 100)  # REG_CENTURY

    def _latch_time(self) -> None:
        """SET cleared: the registers the guest wrote become the current time."""
        r = self.ram
        try:
            hours = self._decode(r[REG_HOURS] & 0x7F)
            if not r[REG_B] & REG_B_24H:
                hours = hours % 12 + (12 if r[REG_HOURS] & 0x80 else 0)
            new = dt.datetime(
                self._decode(r[REG_CENTURY]) * 100 + self._decode(r[REG_YEAR]),
                self._decode(r[REG_MONTH]),
                self._decode(r[REG_DAY_OF_MONTH]),
                hours,
                self._decode(r[REG_MINUTES]),
                self._decode(r[REG_SECONDS]),
                tzinfo=dt.UTC,
            )
        except ValueError:
            return  # an impossible date: keep the clock running as it was
        self.start, self.start_ns = new, self.clock.now_ns()
        self._seconds_seen = 0

    # -- interrupts ------------------------------------------------------------------
    def periodic_hz(self) -> int:
        """The periodic interrupt rate register A selects (0: off)."""
        rs = self.ram[REG_A] & REG_A_RS_MASK
        if rs == 0:
            return 0
        return RTC_BASE_HZ >> (rs + 6 if rs <= 2 else rs - 1)

    def poll(self) -> None:
        """Time moved: set PF, UF and AF for what happened since the last poll."""
        now = self.clock.now_ns()
        hz = self.periodic_hz()
        if hz:
            periods = (now - self._periodic_base_ns) * hz // NS_PER_S
            if periods > self._periodic_seen:
                self._periodic_seen = periods
                self.ram[REG_C] |= REG_C_PF
        seconds = (now - self.start_ns) // NS_PER_S
        if seconds > self._seconds_seen and not self.ram[REG_B] & REG_B_SET:
            self._seconds_seen = seconds
            self.ram[REG_C] |= REG_C_UF
            if self._alarm_matches():
                self.ram[REG_C] |= REG_C_AF
        self._update_irq()

    def _alarm_matches(self) -> bool:
        pairs = (
            (REG_SECONDS_ALARM, REG_SECONDS),
            (REG_MINUTES_ALARM, REG_MINUTES),
            (REG_HOURS_ALARM, REG_HOURS),
        )
        return all(
            self.ram[alarm] >= ALARM_DONT_CARE or self.ram[alarm] == self._time_reg(reg)
            for alarm, reg in pairs
        )

    def _update_irq(self) -> None:
        c, b = self.ram[REG_C], self.ram[REG_B]
        pending = c & b & (REG_C_PF | REG_C_AF | REG_C_UF)  # PIE/AIE/UIE sit at the same bits
        if pending:
            self.ram[REG_C] = c | REG_C_IRQF
        if bool(pending) != self.irq.level:
            self.irq.set_level(bool(pending))

    def next_event_ns(self) -> int | None:
        """When the next enabled interrupt is due (for a clock that skips idle time)."""
        b = self.ram[REG_B]
        due: list[int] = []
        hz = self.periodic_hz()
        if b & REG_B_PIE and hz:
            nxt = self._periodic_seen + 1
            due.append(self._periodic_base_ns + -(-nxt * NS_PER_S // hz))
        if b & (REG_B_UIE | REG_B_AIE) and not b & REG_B_SET:
            due.append(self.start_ns + (self._seconds_seen + 1) * NS_PER_S)
        return min(due) if due else None

    # -- the ports -------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        if port == CMOS_INDEX_PORT:
            return 0xFF
        reg = self.index
        if reg in TIME_REGS or reg in DATE_REGS:
            return self._time_reg(reg)
        if reg == REG_A:
            return self.ram[REG_A] & ~REG_A_UIP
        if reg == REG_C:
            self.poll()
            value, self.ram[REG_C] = self.ram[REG_C], 0  # reading clears the flags
            self._update_irq()
            return value
        return self.ram[reg]

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == CMOS_INDEX_PORT:
            self.index = value & ~NMI_DISABLE & (CMOS_SIZE - 1)
            return
        reg = self.index
        if reg in (REG_C, REG_D):
            return  # read-only
        if reg == REG_A:
            self.ram[REG_A] = value & ~REG_A_UIP
            self._periodic_base_ns, self._periodic_seen = self.clock.now_ns(), 0
            return
        if reg == REG_B:
            was_set = self.ram[REG_B] & REG_B_SET
            if value & REG_B_SET and not was_set:
                for r in TIME_REGS + DATE_REGS:  # freeze the current time for editing
                    self.ram[r] = self._time_reg(r)
            self.ram[REG_B] = value
            if was_set and not value & REG_B_SET:
                self._latch_time()
            self._update_irq()
            return
        editing_now = reg in TIME_REGS + DATE_REGS and not self.ram[REG_B] & REG_B_SET
        if editing_now:  # one field changes; the others keep their current value
            for r in TIME_REGS + DATE_REGS:
                self.ram[r] = self._time_reg(r)
        self.ram[reg] = value
        if editing_now:
            self._latch_time()


__all__ = ["CMOS_DATA_PORT", "CMOS_INDEX_PORT", "CmosRtc"]
