"""The i440FX/PIIX chipset of QEMU's ``pc`` machine, as PCI functions on bus 0.

What OVMF's platform code looks at (``OvmfPkg/Include/OvmfPlatforms.h``,
``PlatformInitLib``, ``AcpiTimerLib``): the host bridge's device ID at
00:00.0 decides the platform (0x1237 = i440FX; anything else but Q35 stops
it), and the PIIX4 power-management function at 00:01.3 holds the ACPI PM
I/O base in PMBA (0x40, bits 15:6; bit 0 reads as 1, "I/O space") and its
decode enable in PMREGMISC (0x80, bit 0 PMIOSE). When the guest enables it,
the ACPI PM block (``acpi_pm``) appears on the I/O bus at that base; QEMU's
``piix4_pm`` does the same in ``pm_io_space_update``.

IDs and reset values: QEMU ``hw/pci-host/i440fx.c``, ``hw/isa/piix.c``,
``hw/acpi/piix4.c``; PIIX4 data sheet, "Power Management Registers".
"""

from __future__ import annotations

from sevx86.hv.devices.acpi_pm import ACPI_PM_BLOCK_SIZE, AcpiPmBlock
from sevx86.hv.devices.bus import IoBus
from sevx86.hv.devices.pci import PciFunction

INTEL = 0x8086
I440FX_DEVICE_ID = 0x1237  # 82441FX PMC
PIIX3_ISA_DEVICE_ID = 0x7000
PIIX4_PM_DEVICE_ID = 0x7113
# QEMU's subsystem IDs for its emulated chipset (Red Hat, "QEMU").
QEMU_SUBSYSTEM = (0x1AF4, 0x1100)

CLASS_HOST_BRIDGE = 0x06_00_00
CLASS_ISA_BRIDGE = 0x06_01_00
CLASS_BRIDGE_OTHER = 0x06_80_00

# Where each function sits (bus 0): QEMU's pc machine layout.
HOST_BRIDGE_SLOT = (0, 0)
PIIX3_ISA_SLOT = (1, 0)
PIIX4_PM_SLOT = (1, 3)

PIIX4_PMBA = 0x40
PIIX4_PMBA_IO_SPACE = 0x0001  # read-only 1: the base is an I/O address
PIIX4_PMBA_MASK = 0xFFC0
PIIX4_PMREGMISC = 0x80
PIIX4_PMREGMISC_PMIOSE = 0x01
I440FX_SMRAM = 0x72
I440FX_SMRAM_RESET = 0x02
PIIX3_PIRQRC = 0x60  # four PIRQ route control bytes, 0x80 = disabled
PIIX3_PIRQ_DISABLED = 0x80


def i440fx_host_bridge() -> PciFunction:
    fn = PciFunction(
        "i440fx",
        INTEL,
        I440FX_DEVICE_ID,
        CLASS_HOST_BRIDGE,
        revision=0x02,
        subsystem=QEMU_SUBSYSTEM,
    )
    fn.set(I440FX_SMRAM, 1, I440FX_SMRAM_RESET)
    return fn


def piix3_isa_bridge() -> PciFunction:
    fn = PciFunction(
        "piix3-isa",
        INTEL,
        PIIX3_ISA_DEVICE_ID,
        CLASS_ISA_BRIDGE,
        header_type=0x80,  # multi-function: the PM function is at .3
        subsystem=QEMU_SUBSYSTEM,
    )
    fn.set(PIIX3_PIRQRC, 4, int.from_bytes(bytes([PIIX3_PIRQ_DISABLED] * 4), "little"))
    return fn


class Piix4Pm(PciFunction):
    """PIIX4 ACPI function: maps ``block`` on ``io_bus`` where the guest puts PMBA."""

    def __init__(self, io_bus: IoBus, block: AcpiPmBlock):
        super().__init__(
            "piix4-pm",
            INTEL,
            PIIX4_PM_DEVICE_ID,
            CLASS_BRIDGE_OTHER,
            revision=0x03,
            subsystem=QEMU_SUBSYSTEM,
            interrupt_pin=1,
        )
        self.io_bus = io_bus
        self.block = block
        self.set(PIIX4_PMBA, 4, PIIX4_PMBA_IO_SPACE)
        self.on_write.append(self._update)

    def write(self, offset: int, size: int, value: int) -> None:
        super().write(offset, size, value)
        # Bit 0 of PMBA is hardwired to 1.
        self.config[PIIX4_PMBA] |= PIIX4_PMBA_IO_SPACE

    def _update(self, _fn: PciFunction, offset: int, size: int) -> None:
        touches = offset < PIIX4_PMBA + 4 and PIIX4_PMBA < offset + size
        if not touches and not offset <= PIIX4_PMREGMISC < offset + size:
            return
        self.io_bus.unregister(self.block)
        self.block.base = None
        if self.get(PIIX4_PMREGMISC, 1) & PIIX4_PMREGMISC_PMIOSE:
            base = self.get(PIIX4_PMBA, 4) & PIIX4_PMBA_MASK
            if base:
                self.block.base = base
                self.io_bus.register(base, ACPI_PM_BLOCK_SIZE, self.block)


__all__ = [
    "I440FX_DEVICE_ID",
    "PIIX4_PMBA",
    "PIIX4_PMREGMISC",
    "Piix4Pm",
    "i440fx_host_bridge",
    "piix3_isa_bridge",
]
