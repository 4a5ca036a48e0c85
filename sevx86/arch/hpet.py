"""The HPET registers (IA-PC HPET specification 1.0a, 2.3) as QEMU's ``hpet`` lays them out.

One 1 KiB block at 0xFED0_0000: general capabilities/ID at 0x000, general
configuration at 0x010, general interrupt status at 0x020, the main counter
at 0x0F0, and timer n's configuration, comparator and FSB route at 0x100 +
0x20 * n (+0, +8, +0x10). QEMU has 3 timers and a 100 MHz counter (10 ns per
tick); on its ``pc`` (PIIX) machine each timer can route only to IOAPIC
input 2 (``hpet-intcap`` 0x4, hw/i386/pc_piix.c).
"""

from __future__ import annotations

HPET_BASE = 0xFED0_0000
HPET_SIZE = 0x400
HPET_TIMERS = 3
HPET_PERIOD_FS = 10_000_000  # femtoseconds per tick (10 ns)
HPET_VENDOR_INTEL = 0x8086
HPET_REV = 0x01
HPET_PIIX_INTCAP = 0x4  # Tn_INT_ROUTE_CAP: IOAPIC input 2

REG_CAPABILITIES = 0x000
REG_CONFIG = 0x010
REG_INT_STATUS = 0x020
REG_COUNTER = 0x0F0
REG_TIMER0 = 0x100
TIMER_STRIDE = 0x20
TIMER_CONFIG = 0x00
TIMER_COMPARATOR = 0x08
TIMER_FSB_ROUTE = 0x10

CAP_NUM_TIM_SHIFT = 8
CAP_COUNT_SIZE_64 = 1 << 13
CAP_LEGACY_ROUTE = 1 << 15
CAP_VENDOR_SHIFT = 16
CAP_PERIOD_SHIFT = 32

CONF_ENABLE = 1 << 0
CONF_LEGACY_ROUTE = 1 << 1
CONF_WRITABLE = CONF_ENABLE | CONF_LEGACY_ROUTE

TN_INT_LEVEL = 1 << 1
TN_INT_ENABLE = 1 << 2
TN_PERIODIC = 1 << 3
TN_PERIODIC_CAP = 1 << 4
TN_SIZE_64_CAP = 1 << 5
TN_VAL_SET = 1 << 6
TN_32BIT = 1 << 8
TN_ROUTE_SHIFT = 9
TN_ROUTE_MASK = 0x1F << TN_ROUTE_SHIFT
TN_FSB_ENABLE = 1 << 14
TN_WRITABLE = 0x7F4E  # QEMU HPET_TN_CFG_WRITE_MASK: bits 1-3, 6, 8-14
TN_ROUTE_CAP_SHIFT = 32
# Legacy replacement route: timer 0 to ISA IRQ0 (IOAPIC 2), timer 1 to IRQ8.
LEGACY_IRQS = (0, 8)

__all__ = ["HPET_BASE", "HPET_PERIOD_FS", "HPET_SIZE", "HPET_TIMERS"]
