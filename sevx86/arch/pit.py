"""The 8254 programmable interval timer and the PC's port 0x61 (Intel 8254 data sheet).

Ports (PC/AT): counters 0-2 at 0x40-0x42, the control word register at
0x43 (write only). Channel 0 drives IRQ0, channel 1 was DRAM refresh,
channel 2's gate and output are wired to port 0x61 (NMI status and control,
as the PIIX/ICH datasheets document it).

Control word (8254 data sheet, "Control Word Format"): bits 7:6 select the
counter (3 = read-back command), bits 5:4 the read/write mode (0 = counter
latch command), bits 3:1 the mode (6 and 7 are modes 2 and 3), bit 0 BCD.
Read-back command: bit 5 clear = latch counts, bit 4 clear = latch status,
bits 3:1 select counters 2, 1, 0. Status byte: bit 7 OUT, bit 6 NULL COUNT,
bits 5:0 as written in the counter's last control word.
"""

from __future__ import annotations

from enum import IntEnum

PIT_HZ = 1_193_182  # the PC's 14.31818 MHz crystal / 12
PIT_PORT_BASE = 0x40
PIT_CHANNELS = 3
PIT_CONTROL_PORT = 0x43
PIT_PORT_COUNT = 4

CW_SELECT_SHIFT = 6
CW_SELECT_READBACK = 0b11
CW_RW_SHIFT = 4
CW_MODE_SHIFT = 1
CW_BCD = 0x01
CW_STATUS_BITS = 0x3F  # what the status byte echoes of the control word

READBACK_NO_COUNT = 1 << 5  # active low: clear = latch the counts
READBACK_NO_STATUS = 1 << 4  # active low: clear = latch the status
READBACK_COUNTER_SHIFT = 1  # bits 1, 2, 3 select counters 0, 1, 2

STATUS_OUT = 0x80
STATUS_NULL_COUNT = 0x40


class RwMode(IntEnum):
    """Control word bits 5:4."""

    LATCH = 0b00  # counter latch command
    LSB = 0b01
    MSB = 0b10
    LSB_MSB = 0b11


class PitMode(IntEnum):
    """Control word bits 3:1 (6 and 7 alias 2 and 3)."""

    INTERRUPT_ON_TERMINAL_COUNT = 0
    HW_RETRIGGERABLE_ONE_SHOT = 1
    RATE_GENERATOR = 2
    SQUARE_WAVE = 3
    SW_TRIGGERED_STROBE = 4
    HW_TRIGGERED_STROBE = 5


def pit_mode(bits: int) -> PitMode:
    """Bits 3:1 of a control word as a mode: x10 is mode 2, x11 mode 3."""
    bits &= 0b111
    return PitMode(bits & 0b011 if bits >= 6 else bits)


# Port 0x61, "NMI Status and Control" (Intel PIIX4 datasheet 4.1.x / ICH NMI_SC).
PORT_61 = 0x61
P61_TIMER2_GATE = 0x01  # R/W: channel 2 gate
P61_SPEAKER_DATA = 0x02  # R/W: channel 2 output to the speaker
P61_WRITABLE = 0x0F  # bits 3:2 are the IOCHK/SERR NMI enables
P61_REFRESH_TOGGLE = 0x10  # RO: toggles every refresh cycle
P61_TIMER2_OUT = 0x20  # RO: channel 2 OUT
REFRESH_PERIOD_NS = 15_085  # one DRAM refresh request (about 15 us, as QEMU's pcspk)

__all__ = [
    "CW_BCD",
    "PIT_CONTROL_PORT",
    "PIT_HZ",
    "PIT_PORT_BASE",
    "PORT_61",
    "PitMode",
    "RwMode",
    "pit_mode",
]
