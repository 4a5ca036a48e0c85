"""A QEMU-like ``pc`` machine: the host-side devices firmware needs, on a hypervisor's buses.

``QemuPc(hv, memory=..., vcpus=...)`` adds to a ``Hypervisor`` what QEMU's
``pc`` machine (i440FX + PIIX) gives a guest such as OVMF, besides the
serial port and debug console the hypervisor always has:

========================  =====================================================
device                    where
========================  =====================================================
fw_cfg (+ DMA)            I/O 0x510 selector, 0x511 data, 0x514 DMA address
CMOS RAM + RTC            I/O 0x70 index, 0x71 data
PCI configuration         I/O 0xCF8 address, 0xCFC data (0xCF9 reset control)
  i440FX host bridge      00:00.0  8086:1237
  PIIX3 ISA bridge        00:01.0  8086:7000
  PIIX4 power management  00:01.3  8086:7113 -> ACPI PM block where PMBA says
ACPI PM block + timer     I/O PMBA + 0..0x3F (OVMF puts it at 0xB000: timer 0xB008)
APM control (SMI_CMD)     I/O 0xB2/0xB3: ACPI_ENABLE 0xF1 sets SCI_EN
ACPI tables               fw_cfg etc/table-loader, etc/acpi/tables, etc/acpi/rsdp
8259 PIC pair + ELCR      I/O 0x20/0x21, 0xA0/0xA1, 0x4D0/0x4D1
8254 PIT, port 0x61       I/O 0x40-0x43 (channel 0 on IRQ0), 0x61
IOAPIC                    MMIO 0xFEC0_0000 (IRQ0 on pin 2, IRQ n on pin n)
HPET                      MMIO 0xFED0_0000 (3 timers, 100 MHz; legacy route IRQ0/8)
COM1 interrupt            IRQ4 (the hypervisor's 16550A)
RTC / ACPI SCI            IRQ8 / IRQ9
local APIC (xAPIC)        MMIO 0xFEE0_0000
pflash1 (CFI flash)       the varstore below the code flash, if the launch mapped
                          one (RAM region ``pflash1``): ``PFlashCfi01``
========================  =====================================================

Every one of them is reached only through exits -- the GHCB (IOIO, MMIO
requests) for an SEV-ES guest, direct IOIO/NPF exits for the other modes.

Time is one platform clock (``sevx86.hv.clock``): a deterministic
``VirtualClock`` (the default) that advances by ``clock.step_ns`` at every
exit, or a ``RealtimeClock``. The TSC, the PIT, the HPET, the PM timer, the
RTC and the APIC timer all read it, so they agree, and with the virtual clock
every run is identical. After each exit's step the timers are polled
(``poll``), so a timer interrupt is raised at the first exit after it is due.
When a HLT leaves every vCPU halted, the clock jumps (virtual) or sleeps
(realtime) to the next timer deadline and the timers are polled again: a
guest waiting on a timer wakes at the right guest time. Interrupt lines are wired by
``sevx86.hv.devices.routing.PcInterrupts`` as QEMU's ``pc`` wires them.

The memory map follows QEMU: RAM from 0 (``etc/e820`` type 1, CMOS 0x34/0x35)
and the 16 KiB KVM reserves below the BIOS area (0xFEFF_C000). sevx86 maps
guest RAM as one block from address 0, so it must end below QEMU's PCI hole
(3.5 GiB).
"""

from __future__ import annotations

import datetime as dt

from sevx86.arch.e820 import E820Type, encode_e820
from sevx86.arch.exits import SvmExit
from sevx86.arch.fw_cfg import FwCfgKey
from sevx86.arch.hpet import HPET_BASE, HPET_SIZE
from sevx86.arch.ioapic import IOAPIC_BASE, IOAPIC_SIZE
from sevx86.arch.pic import ELCR_PORT, ELCR_PORT_COUNT, PIC_MASTER, PIC_PORT_COUNT, PIC_SLAVE
from sevx86.arch.pit import PIT_PORT_BASE, PIT_PORT_COUNT, PORT_61
from sevx86.arch.uart import COM1_IRQ
from sevx86.hv.clock import RealtimeClock, TscClock, VirtualClock
from sevx86.hv.devices.acpi_pm import APM_CONTROL_PORT, APM_PORT_COUNT, AcpiPmBlock, ApmControl
from sevx86.hv.devices.acpi_tables import AcpiBlobs, AcpiConfig, build_acpi
from sevx86.hv.devices.cmos import CMOS_INDEX_PORT, DEFAULT_START, CmosRtc
from sevx86.hv.devices.fw_cfg import FW_CFG_IO_BASE, FW_CFG_IO_LENGTH, FwCfg
from sevx86.hv.devices.hpet import Hpet
from sevx86.hv.devices.i440fx import (
    HOST_BRIDGE_SLOT,
    PIIX3_ISA_SLOT,
    PIIX4_PM_SLOT,
    Piix4Pm,
    i440fx_host_bridge,
    piix3_isa_bridge,
)
from sevx86.hv.devices.irq import IrqLine
from sevx86.hv.devices.pci import PCI_IO_BASE, PCI_IO_LENGTH, PciHost
from sevx86.hv.devices.pflash import PFlashCfi01
from sevx86.hv.devices.pit import Pit8254, Port61
from sevx86.hv.devices.routing import PcInterrupts
from sevx86.hv.hypervisor import EXIT_TABLE, ExitEvent, Hypervisor, Proceed
from sevx86.hv.vcpu_state import MpState

# QEMU's pc machine keeps RAM below 3.5 GiB; the rest would go above 4 GiB.
PC_BELOW_4G_LIMIT = 0xE000_0000
# KVM's identity-map and TSS pages, reserved in the e820 map by QEMU on KVM.
KVM_RESERVED = (0xFEFF_C000, 0x4000)
# ISA IRQs of the RTC and of the PIIX4's SCI (QEMU pc; the FADT's SCI_INT).
# OVMF's PIIX4 PMBA (OvmfPkg I440FxPiix4.h), until the firmware has programmed one.
OVMF_PIIX4_PMBA = 0xB000
PIT_IRQ = 0
RTC_IRQ = 8
SCI_IRQ = 9
# ACPI sleep type 0 is S5 (soft off) on QEMU's PIIX4 (``acpi_pm1_cnt_write``).
PIIX4_SLP_TYP_S5 = 0
# "etc/system-states": one byte per S0..S5, bit 7 = the state is available,
# bits 2:0 = its SLP_TYP value (QEMU ``acpi_pm1_cnt_init``).
SYSTEM_STATE_ENABLED = 0x80
S3_SLP_TYP = 1
S4_SLP_TYP = 2


def system_states(*, s3: bool, s4: bool) -> bytes:
    return bytes(
        [
            SYSTEM_STATE_ENABLED,
            0,
            0,
            S3_SLP_TYP | (SYSTEM_STATE_ENABLED if s3 else 0),
            S4_SLP_TYP | (SYSTEM_STATE_ENABLED if s4 else 0),
            SYSTEM_STATE_ENABLED,
        ]
    )


class QemuPc:
    """The devices of QEMU's ``pc`` machine, attached to ``hv``."""

    def __init__(
        self,
        hv: Hypervisor,
        *,
        memory: int | None = None,
        vcpus: int | None = None,
        clock: VirtualClock | RealtimeClock | None = None,
        rtc_start: dt.datetime = DEFAULT_START,
        s3: bool = False,
        s4: bool = False,
        fw_cfg_files: dict[str, bytes] | None = None,
        acpi: bool = True,
    ):
        self.hv = hv
        self.memory = hv.config.memory if memory is None else memory
        self.vcpus = len(hv.host.vcpus) if vcpus is None else vcpus
        if self.memory > PC_BELOW_4G_LIMIT:
            raise ValueError(
                f"memory {self.memory:#x} reaches QEMU's PCI hole at {PC_BELOW_4G_LIMIT:#x}: "
                "sevx86 maps guest RAM in one block from 0"
            )
        self.clock = clock if clock is not None else hv.platform_clock
        # One clock: the TSC the guest reads derives from the platform clock too.
        hv.msrs.clock = TscClock(source=self.clock)
        log = hv.host.log

        self.fw_cfg = FwCfg(hv.host.memory, log=log)
        self._fill_fw_cfg(s3=s3, s4=s4, files=fw_cfg_files or {})
        hv.io_bus.register(FW_CFG_IO_BASE, FW_CFG_IO_LENGTH, self.fw_cfg)

        # Interrupt controllers and the PIT (QEMU pc: i8259 x2, ioapic, i8254, pcspk's 0x61).
        self.irq = PcInterrupts(hv, self.vcpus, log=log)

        # The HPET; its legacy replacement route takes IRQ0 and IRQ8 from the PIT and
        # the RTC (HPET spec 2.3.8.1; QEMU hpet_pit_disable and the RTC's irq gate).
        self.hpet = Hpet(self.clock, self._set_gsi)
        hv.mmio_bus.register(HPET_BASE, HPET_SIZE, self.hpet)

        self.cmos = CmosRtc(self.clock, start=rtc_start, irq=self._legacy_line(RTC_IRQ))
        self.cmos.set_pc_memory(self.memory, 0, self.vcpus)
        hv.io_bus.register(CMOS_INDEX_PORT, 2, self.cmos)

        for base in (PIC_MASTER, PIC_SLAVE):
            hv.io_bus.register(base, PIC_PORT_COUNT, self.irq.pic)
        hv.io_bus.register(ELCR_PORT, ELCR_PORT_COUNT, self.irq.pic)
        hv.mmio_bus.register(IOAPIC_BASE, IOAPIC_SIZE, self.irq.ioapic)
        self.pit = Pit8254(self.clock, self._legacy_line(PIT_IRQ))
        hv.io_bus.register(PIT_PORT_BASE, PIT_PORT_COUNT, self.pit)
        hv.io_bus.register(PORT_61, 1, Port61(self.pit, self.clock))
        serial = getattr(hv, "serial", None)
        if serial is not None:
            serial.irq.connect(self.irq.isa(COM1_IRQ).set_level)
        self.acpi_pm = AcpiPmBlock(self.clock, on_sleep=self._sleep, sci=self.irq.isa(SCI_IRQ))
        self.timers = [self.pit, self.cmos, self.acpi_pm, self.hpet]

        self.pci = PciHost(on_reset=self._reset)
        self.pci.add(*HOST_BRIDGE_SLOT, i440fx_host_bridge())
        self.pci.add(*PIIX3_ISA_SLOT, piix3_isa_bridge())
        self.pm = self.pci.add(*PIIX4_PM_SLOT, Piix4Pm(hv.io_bus, self.acpi_pm))
        self.apm = ApmControl(self.acpi_pm)
        hv.io_bus.register(APM_CONTROL_PORT, APM_PORT_COUNT, self.apm)
        if acpi:
            self._add_acpi_tables()
        hv.io_bus.register(PCI_IO_BASE, PCI_IO_LENGTH, self.pci)

        # QEMU's pc has one local APIC per vCPU: the hypervisor's, timed by this clock,
        # which becomes the hypervisor's platform clock (one time base for every timer).
        hv.platform_clock = self.clock
        self.lapic = hv.lapic
        self.lapic.use_clock(self.clock)

        # The varstore flash (QEMU's pflash1, hw/i386/pc_sysfw.c): a CFI device
        # over the RAM the launch mapped for it, writable. pflash0 (the code)
        # is not modelled: nothing writes it.
        self.pflash1 = self._varstore_flash(hv)

        for code in EXIT_TABLE:
            hv.on_exit(code, self._tick)

    @staticmethod
    def _varstore_flash(hv: Hypervisor) -> PFlashCfi01 | None:
        memory = hv.host.memory
        region = next((r for r in memory.regions() if r.name == "pflash1"), None)
        if region is None:
            return None
        flash = PFlashCfi01(memory, region.base, region.size, name="pflash1", log=hv.host.log)
        hv.mmio_bus.register(region.base, region.size, flash)
        return flash

    def _fill_fw_cfg(self, *, s3: bool, s4: bool, files: dict[str, bytes]) -> None:
        fw = self.fw_cfg
        fw.add_bytes(FwCfgKey.UUID, bytes(16))
        fw.add_i64(FwCfgKey.RAM_SIZE, self.memory)
        fw.add_i16(FwCfgKey.NOGRAPHIC, 0)
        fw.add_i16(FwCfgKey.NB_CPUS, self.vcpus)
        fw.add_i16(FwCfgKey.MAX_CPUS, self.vcpus)
        fw.add_i16(FwCfgKey.BOOT_MENU, 0)
        # NUMA: a node count of 0, then one (zero) node per possible APIC ID.
        fw.add_bytes(FwCfgKey.NUMA, bytes(8 * (1 + self.vcpus)))
        fw.add_i32(FwCfgKey.IRQ0_OVERRIDE, 1)
        e820 = [(0, self.memory, E820Type.RAM), (*KVM_RESERVED, E820Type.RESERVED)]
        fw.add_file("etc/e820", encode_e820(e820))
        fw.add_file("etc/system-states", system_states(s3=s3, s4=s4))
        for name, data in files.items():
            fw.add_file(name, data)

    # -- ACPI ---------------------------------------------------------------------------
    def acpi_blobs(self) -> AcpiBlobs:
        """The tables as they describe the machine now (the PM base the firmware chose)."""
        pm_base = self.acpi_pm.base if self.acpi_pm.base is not None else OVMF_PIIX4_PMBA
        hpet_id = self.hpet.capabilities & 0xFFFF_FFFF
        return build_acpi(AcpiConfig(self.vcpus, pm_base, hpet_id))

    def _add_acpi_tables(self) -> None:
        # As QEMU's acpi_build_update: rebuilt whenever the firmware selects one.
        for name, data in self.acpi_blobs().files().items():
            self.fw_cfg.add_file(name, data)
            self.fw_cfg.on_select(name, lambda name=name: self.acpi_blobs().files()[name])

    # -- interrupt lines ----------------------------------------------------------------
    def _set_gsi(self, gsi: int, level: bool) -> None:
        self.irq.gsi[gsi].set_level(level)

    def _legacy_line(self, isa_irq: int) -> IrqLine:
        """The output of the PIT or the RTC: on its ISA IRQ unless the HPET took it over."""
        line = IrqLine(f"irq{isa_irq}-source")

        def forward(level: bool) -> None:
            if not self.hpet.legacy:
                self.irq.isa(isa_irq).set_level(level)

        line.connect(forward)
        return line

    # -- platform events ----------------------------------------------------------------
    def _tick(self, event: ExitEvent, proceed: Proceed) -> None:
        instructions = event.exit.data.get("instructions")
        self.clock.on_exit(instructions if isinstance(instructions, int) else None)
        self._poll_timers()
        proceed()
        if event.code == SvmExit.HLT and self._idle():
            self._wait_for_timer()

    def _poll_timers(self) -> None:
        for timer in self.timers:
            timer.poll()

    def _idle(self) -> bool:
        """No vCPU can run and none has an event waiting: only a timer can end the wait."""
        for index in range(len(self.hv.host.vcpus)):
            st = self.hv.vcpu_state(index)
            if st.dead is not None:
                continue
            ev = st.events
            if ev.mp_state is MpState.RUNNABLE or ev.irr or ev.nmi_pending:
                return False
        return True

    def next_deadline_ns(self) -> int | None:
        """The earliest time a platform timer will interrupt, if any is armed."""
        due = [d for t in self.timers if (d := t.next_event_ns()) is not None]
        return min(due) if due else None

    def _wait_for_timer(self) -> None:
        deadline = self.next_deadline_ns()
        if deadline is None:
            return  # nothing will wake the guest: the run ends "halted"
        before = self.clock.now_ns()
        self.clock.idle_until(deadline)
        self._poll_timers()
        how = "slept" if self.clock.realtime else "warped"
        self.hv.host.log(
            "clock",
            f"every vCPU halted: {how} {max(deadline - before, 0)} ns to the next timer",
            deadline_ns=deadline,
        )

    def _sleep(self, slp_typ: int) -> None:
        if slp_typ == PIIX4_SLP_TYP_S5:
            self.hv.host.log("power", "guest powered off (ACPI S5)")
            self.hv.power_off("guest powered off (ACPI S5)")
        else:
            self.hv.host.log("power", f"guest asked for sleep type {slp_typ}: ignored")

    def _reset(self, value: int) -> None:
        self.hv.host.log("power", f"guest asked for a reset (port 0xCF9 <- {value:#x})")
        self.hv.stop(f"guest asked for a reset (port 0xCF9 <- {value:#x})")


__all__ = ["PC_BELOW_4G_LIMIT", "QemuPc", "system_states"]
