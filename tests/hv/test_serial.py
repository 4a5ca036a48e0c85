"""The 16550A against the PC16550D data sheet and the probes Linux's 8250 driver runs.

Expected values: Linux ``autoconfig`` (IER reads back 0x0F, loopback MCR 0x1A
gives MSR & 0xF0 == 0x90, FCR 0x01 gives IIR bits 7:6 == 3), the data sheet's
interrupt priority table (IIR 0x06 > 0x04/0x0C > 0x02 > 0x00), the loopback
wiring (CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2), and the PC's OUT2 IRQ gate.
"""

from __future__ import annotations

from sevx86.hv.devices import Console
from sevx86.hv.devices.serial import MAX_PENDING_INPUT, Serial16550

BASE = 0x3F8
THR = RBR = BASE
IER, LCR, MCR, LSR, MSR, SCR = (BASE + i for i in (1, 3, 4, 5, 6, 7))
IIR = FCR = BASE + 2


def make() -> tuple[Serial16550, Console]:
    console = Console()
    return Serial16550(console), console


def rd(u: Serial16550, port: int) -> int:
    return u.io_read(port, 1)


def wr(u: Serial16550, port: int, value: int) -> None:
    u.io_write(port, 1, value)


def test_linux_autoconfig_recognises_a_16550a():
    u, _ = make()
    wr(u, IER, 0)
    assert rd(u, IER) & 0x0F == 0
    wr(u, IER, 0x0F)
    assert rd(u, IER) & 0x0F == 0x0F
    wr(u, IER, 0)
    wr(u, MCR, 0x10 | 0x0A)  # loopback, OUT2, RTS
    assert rd(u, MSR) & 0xF0 == 0x90  # DCD (OUT2) and CTS (RTS)
    wr(u, MCR, 0)
    wr(u, FCR, 0x01)
    assert rd(u, IIR) >> 6 == 3  # FIFOs enabled: a 16550A
    wr(u, SCR, 0xA5)
    assert rd(u, SCR) == 0xA5


def test_modem_status_outside_loopback_is_a_connected_line():
    u, _ = make()
    assert rd(u, MSR) == 0xB0  # DCD, DSR, CTS; no deltas


def test_loopback_sends_the_transmitter_to_the_receiver_not_the_console():
    u, console = make()
    wr(u, MCR, 0x10)
    wr(u, THR, ord("x"))
    assert rd(u, LSR) & 0x01
    assert rd(u, RBR) == ord("x")
    assert not rd(u, LSR) & 0x01
    assert console.text() == ""
    wr(u, MCR, 0)
    wr(u, THR, ord("y"))
    assert console.text() == "y"


def test_msr_deltas_follow_the_loopback_lines_and_clear_on_read():
    u, _ = make()
    wr(u, MCR, 0x10)
    assert rd(u, MSR) & 0x0F == 0x0B  # entering loopback: CTS, DSR, DCD fell
    wr(u, MCR, 0x10 | 0x02)  # RTS -> CTS
    assert rd(u, MSR) == 0x10 | 0x01  # CTS and delta CTS
    assert rd(u, MSR) == 0x10  # the delta cleared by the read
    wr(u, MCR, 0x10 | 0x04)  # OUT1 -> RI, RTS off
    rd(u, MSR)
    wr(u, MCR, 0x10)  # RI falls: trailing edge
    assert rd(u, MSR) & 0x04


def test_fifo_holds_sixteen_bytes_and_host_input_waits_its_turn():
    u, _ = make()
    wr(u, FCR, 0x01)
    u.feed(bytes(range(20)))
    assert len(u.rx) == 16
    assert bytes(rd(u, RBR) for _ in range(20)) == bytes(range(20))
    assert not rd(u, LSR) & 0x03  # no data, no overrun


def test_fcr_clears_the_receive_fifo():
    u, _ = make()
    wr(u, FCR, 0x01)
    wr(u, MCR, 0x10)
    for b in b"abc":
        wr(u, THR, b)
    wr(u, FCR, 0x01 | 0x02)
    assert not rd(u, LSR) & 0x01


def test_overrun_without_fifo_overwrites_rbr_and_lsr_read_clears_it():
    u, _ = make()
    wr(u, MCR, 0x10)
    wr(u, THR, 1)
    wr(u, THR, 2)
    assert rd(u, LSR) & 0x03 == 0x03  # DR and OE
    assert not rd(u, LSR) & 0x02  # OE cleared by the read
    assert rd(u, RBR) == 2


def test_thre_interrupt_on_enable_cleared_by_iir_and_raised_by_thr_write():
    u, _ = make()
    wr(u, MCR, 0x08)  # OUT2: the PC's IRQ gate
    wr(u, IER, 0x02)
    assert u.irq.level
    assert rd(u, IIR) & 0x0F == 0x02
    assert not u.irq.level
    assert rd(u, IIR) & 0x0F == 0x01
    wr(u, THR, ord("a"))
    assert u.irq.level


def test_received_data_interrupt_until_the_byte_is_read():
    u, _ = make()
    wr(u, MCR, 0x08)
    wr(u, IER, 0x01)
    assert not u.irq.level
    u.feed(b"k")
    assert u.irq.level and rd(u, IIR) & 0x0F == 0x04
    assert rd(u, RBR) == ord("k")
    assert not u.irq.level


def test_trigger_level_decides_between_timeout_and_data_available():
    u, _ = make()
    wr(u, FCR, 0xC1)  # FIFOs, trigger at 14
    wr(u, IER, 0x01)
    u.feed(b"12345")
    assert rd(u, IIR) & 0x0F == 0x0C  # below the trigger: character timeout
    u.feed(b"678901234")
    assert rd(u, IIR) & 0x0F == 0x04


def test_line_status_has_the_highest_priority():
    u, _ = make()
    wr(u, IER, 0x0F)
    wr(u, MCR, 0x10)
    wr(u, THR, 1)
    wr(u, THR, 2)  # overrun
    assert rd(u, IIR) & 0x0F == 0x06
    rd(u, LSR)
    assert rd(u, IIR) & 0x0F == 0x04


def test_no_irq_without_out2():
    u, _ = make()
    wr(u, IER, 0x02)
    assert rd(u, IIR) & 0x0F == 0x02  # pending inside the chip ...
    assert not u.irq.level  # ... but the PC's OUT2 gate is closed


def test_host_input_is_bounded():
    u, _ = make()
    kept = u.feed(bytes(MAX_PENDING_INPUT + 100))
    assert kept == MAX_PENDING_INPUT
    assert u.dropped_input == 100
    assert len(u.pending_input) + len(u.rx) == MAX_PENDING_INPUT


def test_divisor_latch_does_not_transmit():
    u, console = make()
    wr(u, LCR, 0x83)
    wr(u, THR, 0x01)
    wr(u, IER, 0x00)
    assert (rd(u, THR), rd(u, IER)) == (0x01, 0x00)
    wr(u, LCR, 0x03)
    assert console.text() == ""
