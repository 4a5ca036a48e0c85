"""The cascaded 8259A pair and the ELCR, programmed as Linux's ``init_8259A`` does.

Expected values from the Intel 8259A data sheet (fully nested priority,
EOI commands, poll, AEOI, special mask mode) and the PIIX ELCR register
descriptions (which IRQs can be level-triggered).
"""

from __future__ import annotations

from sevx86.hv.devices.pic import DualPic

M_CMD, M_DATA, S_CMD, S_DATA, ELCR1, ELCR2 = 0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1
READ_IRR, READ_ISR, POLL = 0x0A, 0x0B, 0x0C
EOI = 0x20


def init(aeoi: bool = False) -> tuple[DualPic, list[bool]]:
    outputs: list[bool] = []
    pic = DualPic(on_output=outputs.append)
    icw4 = 0x03 if aeoi else 0x01
    for port, value in (
        (M_CMD, 0x11), (M_DATA, 0x30), (M_DATA, 0x04), (M_DATA, icw4),
        (S_CMD, 0x11), (S_DATA, 0x38), (S_DATA, 0x02), (S_DATA, icw4),
        (M_DATA, 0x00), (S_DATA, 0x00),
    ):  # fmt: skip
        pic.io_write(port, 1, value)
    return pic, outputs


def edge(pic: DualPic, irq: int) -> None:
    pic.set_irq(irq, True)
    pic.set_irq(irq, False)


def reg(pic: DualPic, port: int, ocw3: int) -> int:
    pic.io_write(port, 1, ocw3)
    return pic.io_read(port, 1)


def test_an_edge_on_irq0_interrupts_and_acknowledge_gives_icw2_vector():
    pic, outputs = init()
    assert not pic.output
    edge(pic, 0)
    assert outputs == [True]
    assert reg(pic, M_CMD, READ_IRR) == 0x01
    assert pic.acknowledge() == 0x30
    assert not pic.output
    assert reg(pic, M_CMD, READ_ISR) == 0x01
    assert reg(pic, M_CMD, READ_IRR) == 0x00  # an edge request leaves IRR when acknowledged


def test_fully_nested_priority_and_non_specific_eoi():
    pic, _ = init()
    edge(pic, 3)
    edge(pic, 1)
    assert pic.acknowledge() == 0x31  # IRQ1 beats IRQ3
    assert not pic.output  # IRQ3 is lower than the IRQ1 in service
    pic.io_write(M_CMD, 1, EOI)  # non-specific EOI: clears IRQ1, the highest in service
    assert pic.output
    assert pic.acknowledge() == 0x33
    edge(pic, 1)  # a higher-priority request nests over IRQ3 in service
    assert pic.output
    assert pic.acknowledge() == 0x31
    assert reg(pic, M_CMD, READ_ISR) == 0x0A
    pic.io_write(M_CMD, 1, EOI)
    assert reg(pic, M_CMD, READ_ISR) == 0x08  # the highest (IRQ1) went first


def test_specific_eoi_clears_the_named_level():
    pic, _ = init()
    edge(pic, 3)
    edge(pic, 1)
    pic.acknowledge()
    edge(pic, 0)
    pic.acknowledge()
    assert reg(pic, M_CMD, READ_ISR) == 0x03
    pic.io_write(M_CMD, 1, 0x60 | 1)  # specific EOI, level 1
    assert reg(pic, M_CMD, READ_ISR) == 0x01


def test_slave_interrupt_cascades_through_master_input_2():
    pic, _ = init()
    edge(pic, 12)
    assert pic.output
    assert pic.acknowledge() == 0x38 + 4
    assert reg(pic, M_CMD, READ_ISR) == 0x04
    assert reg(pic, S_CMD, READ_ISR) == 0x10


def test_an_edge_input_held_high_requests_once():
    pic, _ = init()
    pic.set_irq(4, True)
    assert pic.acknowledge() == 0x34
    pic.io_write(M_CMD, 1, EOI)
    pic.set_irq(4, True)  # still high: no new edge
    assert not pic.output
    pic.set_irq(4, False)
    pic.set_irq(4, True)
    assert pic.output


def test_a_level_triggered_input_requests_while_high():
    pic, _ = init()
    pic.io_write(ELCR2, 1, 0x08)  # IRQ11 level-triggered
    pic.set_irq(11, True)
    assert pic.acknowledge() == 0x38 + 3
    assert reg(pic, S_CMD, READ_IRR) == 0x08  # a level request stays in IRR
    pic.io_write(S_CMD, 1, EOI)
    pic.io_write(M_CMD, 1, EOI)
    assert pic.output  # still high: it interrupts again
    pic.set_irq(11, False)
    assert reg(pic, S_CMD, READ_IRR) == 0x00
    # The master latched the cascade edge; with the request gone before the
    # INTA the 8259A answers level 7 of the slave (data sheet: "too short").
    assert pic.acknowledge() == 0x38 + 7


def test_elcr_reserved_bits_read_as_zero():
    pic, _ = init()
    pic.io_write(ELCR1, 1, 0xFF)
    pic.io_write(ELCR2, 1, 0xFF)
    assert pic.io_read(ELCR1, 1) == 0xF8  # IRQ0-2 are always edge
    assert pic.io_read(ELCR2, 1) == 0xDE  # IRQ8 and IRQ13 too


def test_a_masked_request_waits_in_irr_until_unmasked():
    pic, _ = init()
    pic.io_write(M_DATA, 1, 0x20)  # mask IRQ5
    edge(pic, 5)
    assert not pic.output
    assert reg(pic, M_CMD, READ_IRR) == 0x20
    assert pic.io_read(M_DATA, 1) == 0x20
    pic.io_write(M_DATA, 1, 0x00)
    assert pic.output
    assert pic.acknowledge() == 0x35


def test_poll_command_acknowledges_and_returns_the_level():
    pic, _ = init()
    pic.io_write(M_CMD, 1, POLL)
    assert pic.io_read(M_CMD, 1) & 0x80 == 0  # nothing pending
    edge(pic, 6)
    pic.io_write(M_CMD, 1, POLL)
    assert pic.io_read(M_CMD, 1) == 0x80 | 6
    assert reg(pic, M_CMD, READ_ISR) == 0x40


def test_acknowledge_without_a_request_is_the_spurious_irq7():
    pic, _ = init()
    assert pic.acknowledge() == 0x37
    assert reg(pic, M_CMD, READ_ISR) == 0  # a spurious IRQ 7 sets no ISR bit


def test_rotate_on_non_specific_eoi_makes_the_served_level_lowest():
    pic, _ = init()
    edge(pic, 0)
    pic.acknowledge()
    pic.io_write(M_CMD, 1, 0xA0)  # rotate on non-specific EOI
    edge(pic, 0)
    edge(pic, 5)
    assert pic.acknowledge() == 0x35  # IRQ0 is now the lowest priority
    pic.io_write(M_CMD, 1, 0xC0 | 4)  # set priority: IRQ4 lowest, so IRQ5 highest
    pic.io_write(M_CMD, 1, 0x60 | 5)
    edge(pic, 5)
    assert pic.acknowledge() == 0x35


def test_auto_eoi_leaves_no_isr_bit():
    pic, _ = init(aeoi=True)
    edge(pic, 1)
    assert pic.acknowledge() == 0x31
    assert reg(pic, M_CMD, READ_ISR) == 0
    edge(pic, 3)
    assert pic.output  # nothing in service blocks it


def test_special_mask_mode_lets_lower_levels_past_a_masked_in_service_level():
    pic, _ = init()
    edge(pic, 1)
    pic.acknowledge()
    edge(pic, 3)
    assert not pic.output
    pic.io_write(M_DATA, 1, 0x02)  # mask IRQ1 (in service)
    pic.io_write(M_CMD, 1, 0x68)  # OCW3: set special mask mode
    assert pic.output
    assert pic.acknowledge() == 0x33


def test_icw1_clears_the_mask_and_the_in_service_register():
    pic, _ = init()
    pic.io_write(M_DATA, 1, 0xFF)
    edge(pic, 3)
    pic.io_write(M_DATA, 1, 0x00)
    pic.acknowledge()
    pic.io_write(M_CMD, 1, 0x11)
    assert pic.io_read(M_DATA, 1) == 0  # IMR cleared ... (read before ICW2 is IMR)
    for value in (0x30, 0x04, 0x01):
        pic.io_write(M_DATA, 1, value)
    assert reg(pic, M_CMD, READ_ISR) == 0
