"""The 8254 PIT (ports 0x40-0x43) and port 0x61's timer-2 gate, speaker and OUT2 bits.

Behaviour per the Intel 8254 data sheet (register layout in
``sevx86.arch.pit``): three 16-bit down counters clocked at 1.193182 MHz,
six modes, counter latch and read-back commands, binary or BCD counting.
Time is the platform clock's (``TimeSource.now_ns``): a counter's value is
computed from the ticks elapsed since it was loaded, as QEMU's
``hw/timer/i8254.c`` does, rather than by counting clocks one by one.

What follows the data sheet and what is simplified:

* OUT per mode: 0 low until terminal count then high; 1 low from the gate
  trigger to terminal count; 2 high except one clock when the count is 1;
  3 high for the first half of the period (N+1)/2 clocks, low for the rest;
  4 and 5 low for one clock at terminal count.
* The gate: low suspends counting in modes 0, 2, 3, 4 (and forces OUT high in
  2 and 3); a rising edge reloads the count in 2 and 3 and triggers 1 and 5.
* Simplified: the count takes effect at once when written (the data sheet
  loads it at the next clock, and in modes 2 and 3 only at the end of the
  current period), and mode 3 with an odd count reads as QEMU's does.

Channel 0's OUT drives IRQ0. The timer cannot call into the guest, so
``poll`` -- called by the platform whenever time moves -- looks for rising
edges of OUT0 since the last poll and pulses the line once for them (several
periods between two polls coalesce into one interrupt, as a late timer tick
does in QEMU). ``next_event_ns`` says when the next one is due (for a clock
that warps over idle time).

Port 0x61 (PIIX "NMI Status and Control"): bit 0 the gate of channel 2,
bit 1 speaker data enable, bits 2-3 kept, bit 4 the refresh toggle, bit 5
OUT2. Linux's ``quick_pit_calibrate`` and ``pit_calibrate_tsc`` poll these.
"""

from __future__ import annotations

from sevx86.arch.pit import (
    CW_BCD,
    CW_MODE_SHIFT,
    CW_RW_SHIFT,
    CW_SELECT_READBACK,
    CW_SELECT_SHIFT,
    CW_STATUS_BITS,
    P61_REFRESH_TOGGLE,
    P61_TIMER2_GATE,
    P61_TIMER2_OUT,
    P61_WRITABLE,
    PIT_CHANNELS,
    PIT_CONTROL_PORT,
    PIT_HZ,
    PIT_PORT_BASE,
    READBACK_COUNTER_SHIFT,
    READBACK_NO_COUNT,
    READBACK_NO_STATUS,
    REFRESH_PERIOD_NS,
    STATUS_NULL_COUNT,
    STATUS_OUT,
    PitMode,
    RwMode,
    pit_mode,
)
from sevx86.hv.clock import TimeSource
from sevx86.hv.devices.irq import IrqLine

NS_PER_S = 1_000_000_000
GATED_MODES = (
    PitMode.INTERRUPT_ON_TERMINAL_COUNT,
    PitMode.RATE_GENERATOR,
    PitMode.SQUARE_WAVE,
    PitMode.SW_TRIGGERED_STROBE,
)
TRIGGERED_MODES = (PitMode.HW_RETRIGGERABLE_ONE_SHOT, PitMode.HW_TRIGGERED_STROBE)
PERIODIC_MODES = (PitMode.RATE_GENERATOR, PitMode.SQUARE_WAVE)


def _to_bcd(value: int) -> int:
    return int(str(value), 16)


def _from_bcd(value: int) -> int:
    digits = f"{value:04x}"
    return int(digits) if digits.isdigit() else 0


class PitChannel:
    """One 8254 counter: its mode, count, gate, latches and the OUT it drives."""

    def __init__(self, clock: TimeSource, *, gate: bool = True):
        self.clock = clock
        # The data sheet leaves the state after power-up undefined; as QEMU's
        # pit_reset_common, start in mode 3 -- but with no count, so idle with
        # OUT high: the first control word then makes no spurious IRQ0 edge.
        self.mode = PitMode.SQUARE_WAVE
        self.rw = RwMode.LSB_MSB
        self.bcd = False
        self.count = 0x10000  # N: the initial count (0 means 2^16, or 10^4 in BCD)
        self.loaded = False  # a full count was written since the control word
        self.gate = gate
        self.triggered = False  # modes 1 and 5: the gate rose since the count was loaded
        self.null_count = True
        self._ticks = 0  # ticks counted up to _since_ns (or all, when stopped)
        self._since_ns: int | None = None  # counting since then, or None: stopped
        self._write_lsb: int | None = None  # LSB written, MSB awaited (RW mode 3)
        self._read_msb_next = False
        self._latched: list[int] = []  # bytes of a latched count still to be read
        self._status: int | None = None  # a latched status byte
        self._seen_ticks = 0  # where ``poll`` last looked

    # -- time -----------------------------------------------------------------------
    def _now_ticks(self) -> int:
        if self._since_ns is None:
            return self._ticks
        return self._ticks + (self.clock.now_ns() - self._since_ns) * PIT_HZ // NS_PER_S

    def _start(self) -> None:
        self._ticks, self._seen_ticks = 0, 0
        self._since_ns = self.clock.now_ns()

    def _pause(self) -> None:
        self._ticks = self._now_ticks()
        self._since_ns = None

    def _resume(self) -> None:
        if self._since_ns is None:
            self._since_ns = self.clock.now_ns()

    @property
    def counting(self) -> bool:
        return self._since_ns is not None

    @property
    def modulus(self) -> int:
        return 10_000 if self.bcd else 0x10000

    # -- OUT and the counting element ----------------------------------------------------
    def out_at(self, d: int) -> bool:
        n, mode = self.count, self.mode
        if not self.loaded:
            return mode != PitMode.INTERRUPT_ON_TERMINAL_COUNT
        if mode == PitMode.INTERRUPT_ON_TERMINAL_COUNT:
            return d >= n
        if mode in TRIGGERED_MODES and not self.triggered:
            return True
        if mode == PitMode.HW_RETRIGGERABLE_ONE_SHOT:
            return d >= n
        if mode in PERIODIC_MODES and not self.gate:
            return True
        if mode == PitMode.RATE_GENERATOR:
            return d % n != n - 1
        if mode == PitMode.SQUARE_WAVE:
            return d % n < (n + 1) // 2
        return d != n  # modes 4 and 5: one clock low at terminal count

    def out(self) -> bool:
        return self.out_at(self._now_ticks())

    def rising_edges(self, d0: int, d1: int) -> int:
        """How many times OUT rose in the ticks (d0, d1]."""
        if not self.loaded or d1 <= d0:
            return 0
        n, mode = self.count, self.mode
        if mode in TRIGGERED_MODES and not self.triggered:
            return 0
        if mode in PERIODIC_MODES:
            return 0 if n < 2 else d1 // n - d0 // n
        return int(d0 < self._terminal_edge() <= d1)

    def _terminal_edge(self) -> int:
        """The tick at which OUT rises in the one-shot modes (4 and 5: after one low clock)."""
        strobe = self.mode in (PitMode.SW_TRIGGERED_STROBE, PitMode.HW_TRIGGERED_STROBE)
        return self.count + 1 if strobe else self.count

    def value(self) -> int:
        """The counting element, as a counter read shows it (BCD-encoded if so programmed)."""
        n, d, mod = self.count, self._now_ticks(), self.modulus
        if not self.loaded or (self.mode in TRIGGERED_MODES and not self.triggered):
            v = n % mod
        elif self.mode == PitMode.RATE_GENERATOR:
            v = (n - d % n) % mod
        elif self.mode == PitMode.SQUARE_WAVE:
            v = (n - (2 * d) % n) % mod
        else:
            v = (n - d) % mod
        return _to_bcd(v) if self.bcd else v

    def next_edge_ns(self) -> int | None:
        """When OUT next rises (platform ns), or None if it will not without the guest."""
        if not self.counting:
            return None
        d = self._now_ticks()
        n = self.count
        if self.mode in PERIODIC_MODES:
            if n < 2:
                return None
            target = (d // n + 1) * n
        else:
            edge = self._terminal_edge()
            if d >= edge or not self.loaded:
                return None
            target = edge
        assert self._since_ns is not None
        ticks_from_since = target - self._ticks
        return self._since_ns + -(-ticks_from_since * NS_PER_S // PIT_HZ)

    # -- the guest's accesses ------------------------------------------------------------
    def control(self, value: int) -> None:
        """A control word for this counter (not a latch command)."""
        self.rw = RwMode((value >> CW_RW_SHIFT) & 0b11)
        self.mode = pit_mode(value >> CW_MODE_SHIFT)
        self.bcd = bool(value & CW_BCD)
        self.loaded = self.triggered = False
        self.null_count = True
        self._write_lsb = None
        self._read_msb_next = False
        self._latched, self._status = [], None
        self._ticks, self._since_ns, self._seen_ticks = 0, None, 0

    def latch_count(self) -> None:
        if self._latched:
            return  # a second latch before the first is read is ignored
        v = self.value()
        lsb, msb = v & 0xFF, (v >> 8) & 0xFF
        self._latched = {RwMode.LSB: [lsb], RwMode.MSB: [msb]}.get(self.rw, [lsb, msb])

    def latch_status(self) -> None:
        if self._status is not None:
            return
        bits = (self.rw << CW_RW_SHIFT) | (self.mode << CW_MODE_SHIFT) | int(self.bcd)
        status = bits & CW_STATUS_BITS
        if self.out():
            status |= STATUS_OUT
        if self._null_count():
            status |= STATUS_NULL_COUNT
        self._status = status

    def _null_count(self) -> bool:
        # NULL COUNT clears when the count reaches the counting element: here,
        # one clock after the count was loaded (modes 1, 5: after the trigger).
        if self.null_count and self.loaded and self.counting and self._now_ticks() >= 1:
            self.null_count = False
        return self.null_count

    def read(self) -> int:
        if self._status is not None:
            status, self._status = self._status, None
            return status
        if self._latched:
            return self._latched.pop(0)
        v = self.value()
        if self.rw == RwMode.LSB:
            return v & 0xFF
        if self.rw == RwMode.MSB:
            return (v >> 8) & 0xFF
        msb, self._read_msb_next = self._read_msb_next, not self._read_msb_next
        return (v >> 8) & 0xFF if msb else v & 0xFF

    def write(self, byte: int) -> None:
        if self.rw == RwMode.LSB:
            self._load(byte)
        elif self.rw == RwMode.MSB:
            self._load(byte << 8)
        elif self._write_lsb is None:
            self._write_lsb = byte
            if self.mode == PitMode.INTERRUPT_ON_TERMINAL_COUNT:
                self._pause()  # "writing the first byte disables counting"
        else:
            lsb, self._write_lsb = self._write_lsb, None
            self._load(byte << 8 | lsb)

    def _load(self, raw: int) -> None:
        n = _from_bcd(raw) if self.bcd else raw
        self.count = n or self.modulus
        self.loaded = True
        self.null_count = True
        if self.mode in TRIGGERED_MODES:
            if self.triggered:
                self._start()  # 1 and 5 retrigger on the gate; a new count waits for it
            return
        self._start()
        if not self.gate:
            self._pause()

    def set_gate(self, level: bool) -> None:
        rising = level and not self.gate
        self.gate = level
        if self.mode in TRIGGERED_MODES:
            if rising and self.loaded:
                self.triggered = True
                self._start()
            return
        if not self.loaded:
            return
        if not level:
            self._pause()
        elif rising and self.mode in PERIODIC_MODES:
            self._start()  # modes 2 and 3 reload on the gate's rising edge
        else:
            self._resume()

    def take_edges(self) -> int:
        """Rising edges of OUT since the last call (``poll``)."""
        d = self._now_ticks()
        edges = self.rising_edges(self._seen_ticks, d)
        self._seen_ticks = d
        return edges


class Pit8254:
    """The three counters and the control port; channel 0's OUT drives ``irq0``."""

    name = "pit"

    def __init__(self, clock: TimeSource, irq0: IrqLine | None = None):
        self.clock = clock
        self.irq0 = irq0 if irq0 is not None else IrqLine("irq0")
        # Channels 0 and 1 have their gates tied high on a PC; 2's is port 0x61 bit 0.
        self.channels = [PitChannel(clock, gate=i != 2) for i in range(PIT_CHANNELS)]

    def io_read(self, port: int, size: int) -> int:
        if port == PIT_CONTROL_PORT:
            return 0xFF  # the control word register is write-only
        return self.channels[port - PIT_PORT_BASE].read()

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port != PIT_CONTROL_PORT:
            self.channels[port - PIT_PORT_BASE].write(value)
            self.poll()
            return
        select = value >> CW_SELECT_SHIFT
        if select == CW_SELECT_READBACK:
            for i, ch in enumerate(self.channels):
                if not value & (1 << (READBACK_COUNTER_SHIFT + i)):
                    continue
                if not value & READBACK_NO_STATUS:
                    ch.latch_status()
                if not value & READBACK_NO_COUNT:
                    ch.latch_count()
            return
        ch = self.channels[select]
        if (value >> CW_RW_SHIFT) & 0b11 == RwMode.LATCH:
            ch.latch_count()
            return
        ch.control(value)
        self.poll()

    def poll(self) -> None:
        """Time moved: IRQ0 follows OUT0, with a pulse for each rising edge since last time."""
        ch = self.channels[0]
        if ch.take_edges():
            self.irq0.set_level(False)
            self.irq0.set_level(True)
        out = ch.out()
        if out != self.irq0.level:
            self.irq0.set_level(out)

    def next_event_ns(self) -> int | None:
        return self.channels[0].next_edge_ns()


class Port61:
    """Port 0x61: the gate of PIT channel 2, the speaker, the refresh toggle, OUT2."""

    name = "port61"

    def __init__(self, pit: Pit8254, clock: TimeSource):
        self.pit = pit
        self.clock = clock
        self.bits = 0

    def io_read(self, port: int, size: int) -> int:
        refresh = (self.clock.now_ns() // REFRESH_PERIOD_NS) & 1
        out2 = self.pit.channels[2].out()
        return (
            (self.bits & P61_WRITABLE)
            | (P61_REFRESH_TOGGLE if refresh else 0)
            | (P61_TIMER2_OUT if out2 else 0)
        )

    def io_write(self, port: int, size: int, value: int) -> None:
        self.bits = value & P61_WRITABLE
        self.pit.channels[2].set_gate(bool(value & P61_TIMER2_GATE))


__all__ = ["Pit8254", "PitChannel", "Port61"]
