"""OVMF's flash probe finds the CFI flash: Debian's OVMF booted as an SEV guest (no ES).

Under SEV-ES, OVMF's ``QemuFlashDetected`` skips its probe and assumes flash
("SEV-ES enabled, assuming FD behaves as FLASH": a plain store to the
read-only flash would be an NPF the hypervisor cannot emulate). Under SEV
the registers are the host's to read, so OVMF probes with plain stores as
on any QEMU guest: write CLEAR_STATUS and read (RAM would now hold 0x50),
write READ_STATUS and read 0x00 (the cleared status): "FD behaves as FLASH"
(OvmfPkg/QemuFlashFvbServicesRuntimeDxe/QemuFlash.c, edk2-stable202211).
Each store hits a read-only page (an NPF exit with the registers, decoded
by the hypervisor); the status read traps because the device is in command
mode. Debian's release build prints no DEBUG lines, so the test watches the
device instead, and stops at the first variable byte OVMF programs: only a
detected flash gets a writable FVB.
"""

from __future__ import annotations

import pytest

from sevx86.arch.cfi import FlashCmd
from sevx86.arch.exits import SwExit
from sevx86.boot.firmware_run import FirmwareBoot
from sevx86.hv import RunReason
from sevx86.trace.events import Tracer
from tests.ovmf import OVMF_CODE, OVMF_VARS, ExitBudget, needs_ovmf_vars

pytestmark = [
    pytest.mark.ovmf,
    pytest.mark.slow,
    needs_ovmf_vars,
]


def test_ovmf_probes_the_varstore_and_finds_a_flash():
    budget = ExitBudget()  # a limit in exits, not seconds (tests/ovmf.py)
    boot = FirmwareBoot(
        OVMF_CODE, varstore=OVMF_VARS, mode="sev", tracer=Tracer([budget], keep=False)
    )
    budget.hv = boot.hv
    flash = boot.pc.pflash1
    assert flash is not None
    accesses: list[tuple[str, int, int]] = []
    device_read = flash.mmio_read

    def read(offset: int, size: int) -> int:
        value = device_read(offset, size)
        accesses.append(("read", flash.base + offset, value))
        return value

    flash.mmio_read = read  # type: ignore[method-assign]

    def on_write(req, proceed) -> None:  # type: ignore[no-untyped-def]
        value = int.from_bytes(req.read_data(req.info2) or b"", "little")
        proceed()
        if flash.base <= req.info1 < flash.base + flash.size:
            accesses.append(("write", req.info1, value))
            if value == FlashCmd.PROGRAM_ALT:
                boot.hv.stop("OVMF programs the flash")

    boot.hv.on_request(SwExit.MMIO_WRITE, on_write)
    result = boot.run()
    assert result.run.reason is RunReason.STOPPED, result.report()
    probe = flash.base + 0x10  # the first byte not 0x00/0x50/0x70: the FV's GUID
    assert accesses == [
        ("write", probe, FlashCmd.CLEAR_STATUS),  # a store to read-only RAM: NPF
        ("write", probe, FlashCmd.READ_STATUS),
        ("read", probe, 0x00),  # command mode: the load traps; CLEARED_ARRAY_STATUS
        ("write", probe, FlashCmd.READ_ARRAY),  # "FD behaves as FLASH"
        ("write", accesses[4][1], FlashCmd.PROGRAM_ALT),  # the variable driver's first byte
    ]
    assert flash.base <= accesses[4][1] < flash.base + flash.size
    # No GHCB under SEV: every flash access was a direct NPF exit.
    assert result.counters["NPF"] >= 5 and "VMGEXIT" not in result.counters
    assert boot.machine.vcpus[0].vc_count == 0
