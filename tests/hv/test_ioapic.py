"""The IOAPIC through IOREGSEL/IOWIN, against the 82093AA data sheet (and QEMU's version 0x20).

Expected values: the version register (version 0x20, 24 entries -> max
redirection entry 0x17), reset entries masked, edge interrupts once per
rising edge and ignored while masked, level interrupts gated by Remote IRR
until the EOI for their vector.
"""

from __future__ import annotations

from sevx86.arch.ioapic import IoApicDelivery
from sevx86.hv.devices.ioapic import IoApic
from sevx86.hv.devices.irq import ApicInterrupt

SEL, WIN, EOI = 0x00, 0x10, 0x40


def make() -> tuple[IoApic, list[ApicInterrupt]]:
    got: list[ApicInterrupt] = []
    return IoApic(got.append), got


def rd(io: IoApic, index: int) -> int:
    io.mmio_write(SEL, 4, index)
    return io.mmio_read(WIN, 4)


def wr(io: IoApic, index: int, value: int) -> None:
    io.mmio_write(SEL, 4, index)
    io.mmio_write(WIN, 4, value)


def route(io: IoApic, pin: int, low: int, dest: int = 0) -> None:
    wr(io, 0x11 + 2 * pin, dest << 24)
    wr(io, 0x10 + 2 * pin, low)


def test_version_and_reset_state():
    io, _ = make()
    assert rd(io, 0x01) == 0x0017_0020
    assert io.mmio_read(SEL, 4) == 0x01
    for pin in range(24):
        assert rd(io, 0x10 + 2 * pin) == 0x0001_0000  # masked
        assert rd(io, 0x11 + 2 * pin) == 0
    wr(io, 0x00, 0xFFFF_FFFF)
    assert rd(io, 0x00) == 0x0F00_0000  # only the ID bits 27:24


def test_edge_pin_sends_one_message_per_rising_edge():
    io, got = make()
    route(io, 2, 0x30, dest=1)  # fixed, physical, edge, active high, unmasked
    io.set_irq(2, True)
    io.set_irq(2, True)  # no new edge
    io.set_irq(2, False)
    io.set_irq(2, True)
    assert got == [ApicInterrupt(0x30, IoApicDelivery.FIXED, 1, False, False)] * 2


def test_edges_on_a_masked_pin_are_ignored_not_held():
    io, got = make()
    route(io, 4, 0x34 | 1 << 16)
    io.set_irq(4, True)
    io.set_irq(4, False)
    route(io, 4, 0x34)
    assert got == []


def test_level_pin_waits_for_the_eoi_with_remote_irr():
    io, got = make()
    route(io, 9, 0x39 | 1 << 15)  # level, active high
    io.set_irq(9, True)
    assert len(got) == 1 and got[0].level
    assert rd(io, 0x10 + 18) & (1 << 14)  # Remote IRR
    io.set_irq(9, True)
    assert len(got) == 1  # Remote IRR blocks a second message
    io.eoi(0x39)
    assert len(got) == 2  # still asserted: again
    io.set_irq(9, False)
    io.mmio_write(EOI, 4, 0x39)  # the version-0x20 EOI register
    assert len(got) == 2
    assert not rd(io, 0x10 + 18) & (1 << 14)


def test_eoi_of_another_vector_leaves_remote_irr():
    io, got = make()
    route(io, 10, 0x3A | 1 << 15)
    io.set_irq(10, True)
    io.eoi(0x3B)
    assert rd(io, 0x10 + 20) & (1 << 14)
    assert len(got) == 1


def test_active_low_polarity():
    io, got = make()
    route(io, 11, 0x3B | 1 << 15 | 1 << 13)  # level, active low
    io.set_irq(11, False)  # low = asserted
    assert len(got) == 1
    io.set_irq(11, True)
    io.eoi(0x3B)
    assert len(got) == 1


def test_unmasking_an_asserted_level_pin_interrupts():
    io, got = make()
    route(io, 5, 0x35 | 1 << 15 | 1 << 16)
    io.set_irq(5, True)
    assert got == []
    route(io, 5, 0x35 | 1 << 15)
    assert len(got) == 1


def test_read_only_bits_and_the_destination_fields():
    io, got = make()
    wr(io, 0x10, 0x0000_5000 | 0x40 | 5 << 8 | 1 << 11)  # try to set delivery status, remote IRR
    assert rd(io, 0x10) == 0x40 | 5 << 8 | 1 << 11
    route(io, 0, 0x40 | IoApicDelivery.LOWEST_PRIORITY << 8 | 1 << 11, dest=0x0F)
    io.set_irq(0, True)
    assert got == [ApicInterrupt(0x40, IoApicDelivery.LOWEST_PRIORITY, 0x0F, True, False)]
