"""Interrupt routing as QEMU's ``pc`` machine wires it: ISA IRQs to both the 8259s and the IOAPIC.

``PcInterrupts`` owns the global system interrupt lines (GSIs, ACPI 6.x
5.2.13) and what hangs off them (QEMU ``hw/i386/pc.c`` ``gsi_handler`` and
``hw/intc/ioapic.c`` ``ioapic_set_irq``):

* ISA IRQ n (0-15) goes to 8259 input n and to IOAPIC pin n, except IRQ0,
  which reaches the IOAPIC on pin 2 -- the interrupt source override the MADT
  announces. GSIs 16-23 (PCI) reach only the IOAPIC.
* The 8259 pair's INT output is the CPU's INTR: it reaches the bootstrap
  processor's local APIC LINT0, programmed as ExtINT ("virtual wire", MP spec
  1.4 3.6.2.2), and an IOAPIC entry with delivery mode ExtINT routes it as
  well. Either way the vector comes from the 8259's interrupt acknowledge.
* IOAPIC messages become the hypervisor's interrupt requests: fixed and
  lowest-priority to the destination vCPUs (physical APIC ID, 0xFF for all,
  or a flat logical bitmap), NMI to ``request_nmi``.

What this needs from the local APIC model (which owns acceptance,
IRR/ISR/TPR, LINT0 and the EOI): ``Hypervisor.request_interrupt(vcpu,
vector)`` and ``request_nmi(vcpu)`` to deliver; a way to ask whether LINT0
accepts ExtINT (``extint_accepted``; until then the 8259 output is taken
once the 8259 is initialized, which is what a BIOS's virtual-wire set-up gives); and a call to
``PcInterrupts.eoi(vector)`` when the guest EOIs a level-triggered vector
(the EOI broadcast that clears the IOAPIC's Remote IRR). The 8259's INTA
happens when its output rises, because the request API takes a vector: a
later interrupt window would acknowledge at injection instead.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol

from sevx86.arch.ioapic import IOAPIC_PINS, IoApicDelivery
from sevx86.hv.devices.ioapic import IoApic
from sevx86.hv.devices.irq import ApicInterrupt, IrqLine
from sevx86.hv.devices.pic import DualPic

ISA_IRQS = 16
ISA_IRQ0_IOAPIC_PIN = 2
BROADCAST_PHYSICAL = 0xFF
FIRST_LEGAL_VECTOR = 16  # vectors 0-15 are illegal for interrupts (SDM 10.5.3: ESR bit 6)
LogFn = Callable[..., None]


class InterruptTarget(Protocol):
    """The hypervisor's public interrupt-request API."""

    def request_interrupt(self, vcpu: int, vector: int) -> None: ...

    def request_nmi(self, vcpu: int) -> None: ...


def ioapic_pin(gsi: int) -> int:
    """The IOAPIC input of GSI/ISA IRQ ``gsi`` on QEMU's pc (IRQ0 -> pin 2)."""
    return ISA_IRQ0_IOAPIC_PIN if gsi == 0 else gsi


class PcInterrupts:
    """The GSI lines, the 8259 pair, the IOAPIC and where their outputs go."""

    def __init__(
        self,
        target: InterruptTarget,
        vcpus: int,
        *,
        log: LogFn | None = None,
        extint_accepted: Callable[[], bool] | None = None,
    ):
        self.target = target
        self.vcpus = vcpus
        self.log = log
        self.extint_accepted = extint_accepted or self._virtual_wire_set_up
        self.pic = DualPic(on_output=self._pic_output)
        self.ioapic = IoApic(self._deliver)
        self.gsi = [IrqLine(f"gsi{n}") for n in range(IOAPIC_PINS)]
        for n, line in enumerate(self.gsi):
            if n < ISA_IRQS:
                line.connect(partial(self.pic.set_irq, n))
            line.connect(partial(self.ioapic.set_irq, ioapic_pin(n)))
        self.dropped = 0  # interrupt messages no vCPU could take

    def _virtual_wire_set_up(self) -> bool:
        """Until the local APIC model says what LINT0 is: once the 8259 has a vector base.

        At reset LINT0 is masked (SDM 10.5.1) and the 8259 has no vectors; a BIOS
        sets up virtual wire while it initializes the 8259.
        """
        return self.pic.master.initialized

    def isa(self, irq: int) -> IrqLine:
        return self.gsi[irq]

    def eoi(self, vector: int) -> None:
        """A local APIC EOI'd a level-triggered ``vector``: the broadcast to the IOAPIC."""
        self.ioapic.eoi(vector)

    # -- the 8259's INT output ---------------------------------------------------------
    def _pic_output(self, level: bool) -> None:
        if level and self.extint_accepted():
            self._request(0, self.pic.acknowledge(), "8259 via LINT0")

    # -- IOAPIC messages ----------------------------------------------------------------
    def destinations(self, message: ApicInterrupt) -> list[int]:
        dest = message.destination
        if message.logical:  # flat model: one bit per local APIC (logical ID = 1 << index)
            return [i for i in range(min(self.vcpus, 8)) if dest & (1 << i)]
        if dest == BROADCAST_PHYSICAL:
            return list(range(self.vcpus))
        return [dest] if dest < self.vcpus else []

    def _deliver(self, message: ApicInterrupt) -> None:
        mode = message.delivery
        targets = self.destinations(message)
        if mode == IoApicDelivery.EXTINT:
            if self.pic.output:
                self._request(targets[0] if targets else 0, self.pic.acknowledge(), "ExtINT")
            return
        if not targets:
            self._drop(message, "no local APIC has that destination")
            return
        if mode == IoApicDelivery.NMI:
            for vcpu in targets:
                self.target.request_nmi(vcpu)
            return
        if mode == IoApicDelivery.LOWEST_PRIORITY:
            targets = targets[:1]  # without TPRs to compare, the first (KVM: round-robin)
        elif mode != IoApicDelivery.FIXED:
            self._drop(message, f"delivery mode {mode} is not routed to vCPUs")
            return
        for vcpu in targets:
            self._request(vcpu, message.vector, "IOAPIC")

    def _request(self, vcpu: int, vector: int, via: str) -> None:
        if vector < FIRST_LEGAL_VECTOR:
            self._drop(None, f"illegal vector {vector} from {via}")
            return
        self.target.request_interrupt(vcpu, vector)

    def _drop(self, message: ApicInterrupt | None, why: str) -> None:
        self.dropped += 1
        if self.log is not None:
            self.log("irq-dropped", f"interrupt not delivered: {why}", message=repr(message))


__all__ = ["InterruptTarget", "PcInterrupts", "ioapic_pin"]
