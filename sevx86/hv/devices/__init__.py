"""Emulated devices, reached only through IOIO and MMIO exits.

Always on a ``Hypervisor``: ``serial`` (COM1), ``debugcon`` (0x402),
``debug_exit`` (0xF4), ``mmio_test``. QEMU's pc machine adds, through
``sevx86.hv.machines.QemuPc``: ``fw_cfg``, ``cmos`` (CMOS RAM + RTC),
``pci`` (configuration mechanism #1) with the ``i440fx`` chipset functions,
``acpi_pm`` (PM1 registers and the PM timer), ``lapic`` (xAPIC page) and
``pflash`` (the CFI flash holding the UEFI varstore).
"""

from sevx86.hv.devices.bus import IoBus, IoDevice, MmioBus, MmioDevice
from sevx86.hv.devices.console import Console
from sevx86.hv.devices.debug_exit import DEBUG_EXIT_PORT, DebugExit
from sevx86.hv.devices.debugcon import DEBUGCON_PORT, DebugCon
from sevx86.hv.devices.mmio_test import MMIO_TEST_BASE, MMIO_TEST_ID, MmioTestDevice
from sevx86.hv.devices.serial import COM1, Serial16550

__all__ = [
    "COM1",
    "Console",
    "DEBUGCON_PORT",
    "DEBUG_EXIT_PORT",
    "DebugCon",
    "DebugExit",
    "IoBus",
    "IoDevice",
    "MMIO_TEST_BASE",
    "MMIO_TEST_ID",
    "MmioBus",
    "MmioDevice",
    "MmioTestDevice",
    "Serial16550",
]
