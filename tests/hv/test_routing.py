"""ISA IRQs reach the 8259s and the IOAPIC as QEMU's pc wires them (IRQ0 -> IOAPIC pin 2).

The expected routing is QEMU's (``gsi_handler``, ``ioapic_set_irq``) and what
its MADT announces (an interrupt source override IRQ0 -> GSI 2); vector
numbers come from the guest's own programming of the 8259 (ICW2) and the
IOAPIC redirection entries.
"""

from __future__ import annotations

from sevx86.hv.devices.routing import PcInterrupts


class Target:
    def __init__(self) -> None:
        self.requests: list[tuple[int, int]] = []
        self.nmis: list[int] = []

    def request_interrupt(self, vcpu: int, vector: int) -> None:
        self.requests.append((vcpu, vector))

    def request_nmi(self, vcpu: int) -> None:
        self.nmis.append(vcpu)


def make(vcpus: int = 2) -> tuple[PcInterrupts, Target]:
    target = Target()
    return PcInterrupts(target, vcpus), target


def init_pic(irq: PcInterrupts, mask: int) -> None:
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, mask)):
        irq.pic.io_write(port, 1, value)
    for port, value in ((0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01), (0xA1, 0xFF)):
        irq.pic.io_write(port, 1, value)


def redirect(irq: PcInterrupts, pin: int, low: int, dest: int = 0) -> None:
    irq.ioapic.write_register(0x11 + 2 * pin, dest << 24)
    irq.ioapic.write_register(0x10 + 2 * pin, low)


def test_irq0_reaches_ioapic_pin_2_and_the_masked_8259_stays_quiet():
    irq, target = make()
    init_pic(irq, 0xFF)  # Linux in APIC mode masks the 8259
    redirect(irq, 2, 0x30)
    redirect(irq, 0, 0x99)  # pin 0 must not see IRQ0
    irq.isa(0).pulse()
    assert target.requests == [(0, 0x30)]


def test_legacy_irqs_1_to_15_reach_the_same_ioapic_pin():
    irq, target = make()
    init_pic(irq, 0xFF)
    for n in (1, 4, 8, 12, 15):
        redirect(irq, n, 0x40 + n)
        irq.isa(n).pulse()
    assert target.requests == [(0, 0x40 + n) for n in (1, 4, 8, 12, 15)]


def test_pic_virtual_wire_when_the_ioapic_is_not_programmed():
    irq, target = make()
    init_pic(irq, 0x00)
    irq.isa(1).pulse()
    assert target.requests == [(0, 0x21)]  # ICW2 base 0x20 + IRQ1, on the BSP
    irq.pic.io_write(0x20, 1, 0x20)  # EOI
    irq.isa(0).pulse()
    assert target.requests[-1] == (0, 0x20)


def test_ioapic_extint_entry_takes_the_vector_from_the_8259():
    irq, target = make()
    irq.extint_accepted = lambda: False  # LINT0 masked: only the IOAPIC path
    init_pic(irq, 0x00)
    redirect(irq, 3, 7 << 8)  # ExtINT
    irq.isa(3).pulse()  # the 8259 and the IOAPIC pin 3 both see it
    assert target.requests == [(0, 0x23)]


def test_destinations_physical_logical_broadcast_and_nmi():
    irq, target = make(vcpus=3)
    redirect(irq, 5, 0x50, dest=2)
    redirect(irq, 6, 0x60 | 1 << 11, dest=0b011)  # logical: APICs 0 and 1
    redirect(irq, 7, 0x70, dest=0xFF)
    redirect(irq, 9, 4 << 8, dest=1)  # NMI
    for n in (5, 6, 7, 9):
        irq.gsi[n].pulse()
    assert target.requests == [(2, 0x50), (0, 0x60), (1, 0x60), (0, 0x70), (1, 0x70), (2, 0x70)]
    assert target.nmis == [1]


def test_an_illegal_vector_or_absent_destination_is_dropped_not_raised():
    irq, target = make()
    init_pic(irq, 0xFF)
    redirect(irq, 4, 0x05)  # vector 5: illegal for an interrupt
    redirect(irq, 5, 0x55, dest=9)  # no such APIC
    irq.isa(4).pulse()
    irq.isa(5).pulse()
    assert target.requests == [] and irq.dropped == 2


def test_level_gsi_redelivers_after_the_eoi_broadcast():
    irq, target = make()
    redirect(irq, 20, 0x80 | 1 << 15)  # a PCI GSI, level
    irq.gsi[20].raise_()
    irq.eoi(0x80)
    irq.gsi[20].lower()
    irq.eoi(0x80)
    assert target.requests == [(0, 0x80), (0, 0x80)]


def test_an_uninitialized_8259_interrupts_nobody():
    # At reset LINT0 is masked and the 8259 has no vector base: an edge on IRQ0
    # before the firmware initialized it must not become "vector 0".
    irq, target = make()
    irq.isa(0).pulse()
    assert target.requests == [] and irq.dropped == 0
