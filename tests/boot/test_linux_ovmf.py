"""OVMF finds a direct-boot kernel in fw_cfg and starts it (Debian's OVMF and cloud kernel)."""

from __future__ import annotations

import pytest

from sevx86.boot.firmware_run import FirmwareBoot
from sevx86.boot.linux import add_to_fw_cfg, from_files
from sevx86.trace.events import TraceEvent, Tracer
from tests.linux import build_initramfs, default_init, find_busybox, find_vmlinuz, needs_linux
from tests.ovmf import OVMF_CODE, OVMF_VARS, needs_ovmf_vars

pytestmark = [pytest.mark.ovmf, pytest.mark.slow]


@needs_ovmf_vars
@needs_linux
def test_ovmf_loads_the_fw_cfg_kernel_and_initrd_and_linux_starts(tmp_path):
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(build_initramfs(default_init(), find_busybox()))
    lines: list[str] = []
    boot: FirmwareBoot | None = None

    def watch(event: TraceEvent) -> None:
        if event.kind != "console":
            return
        lines.append(event.summary)
        if "Linux version" in event.summary and boot is not None:
            boot.hv.stop("the kernel is running")

    boot = FirmwareBoot(OVMF_CODE, varstore=OVMF_VARS, tracer=Tracer([watch], keep=False))
    load = from_files(find_vmlinuz(), initrd, "console=ttyS0", ram_below_4g=boot.config.memory)
    add_to_fw_cfg(load, boot.pc.fw_cfg)
    result = boot.run(timeout=1200)  # about 2 minutes on a busy 2-core machine
    console = "\n".join(lines)
    assert result.run.detail == "the kernel is running", result.run.detail
    # QemuKernelLoaderFsDxe read the items; the EFI stub found the initrd it exposed.
    reads = boot.pc.fw_cfg.reads
    assert reads.get("KERNEL_SIZE") and reads.get("SETUP_SIZE") and reads.get("INITRD_SIZE")
    assert "EFI stub: Loaded initrd" in console
    assert "Linux version 6.1" in console
