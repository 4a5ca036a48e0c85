"""The QEMU-like pc machine's devices reached by real guest instructions (direct exits).

The guest does what OVMF's platform code does: probe fw_cfg, read the host
bridge's device ID, program the PIIX4 PMBA and read the ACPI PM timer, read
the memory size from CMOS and the local APIC's version over MMIO. In modes
none and sev every IN/OUT and the APIC access are plain exits; under SEV-ES
the same devices are reached through the GHCB (tests/boot/test_ovmf_boot.py).
"""

from __future__ import annotations

import pytest

from sevx86.hv import RunReason
from sevx86.hv.machines import QemuPc
from tests.hv.guests import PD_SCRATCH, build, exit_direct, map_mmio

OUT = 0x300000
C_BIT = {"none": 0, "sev": 1 << 51}


def store(i: int, reg: str = "rax") -> str:
    return f"    mov rdi, {OUT + 8 * i:#x}\n    mov [rdi], {reg}\n"


def pci_read(bus_dev_fn_reg: int, size: str = "eax") -> str:
    data = 0xCFC + (bus_dev_fn_reg & 3)
    return f"""
    mov dx, 0xCF8
    mov eax, {0x8000_0000 | (bus_dev_fn_reg & ~3):#x}
    out dx, eax
    xor eax, eax
    mov dx, {data:#x}
    in {size}, dx
"""


GUEST = (
    # fw_cfg: select the signature, read 4 bytes with REP INSB into OUT+0x100.
    """
    mov dx, 0x510
    mov ax, 0
    out dx, ax
    mov dx, 0x511
    mov rdi, 0x300100
    mov ecx, 4
    rep insb
"""
    # Host bridge device ID (00:00.0 reg 2).
    + pci_read(0x02, "ax")
    + store(0)
    # PIIX4 PM (00:01.3): PMBA <- 0xB000, PMREGMISC <- 1, then read the timer twice.
    + """
    mov dx, 0xCF8
    mov eax, 0x8000_0B40
    out dx, eax
    mov dx, 0xCFC
    mov eax, 0xB000
    out dx, eax
    mov dx, 0xCF8
    mov eax, 0x8000_0B80
    out dx, eax
    mov dx, 0xCFC
    mov al, 1
    out dx, al
    mov dx, 0xB008
    in eax, dx
"""
    + store(1)
    + """
    mov dx, 0xB008
    in eax, dx
"""
    + store(2)
    # CMOS 0x35:0x34, memory above 16 MiB in 64 KiB units.
    + """
    mov al, 0x35
    out 0x70, al
    in al, 0x71
    mov ah, al
    mov al, 0x34
    out 0x70, al
    in al, 0x71
    movzx eax, ax
"""
    + store(3)
)


def apic_version(c_bit: int) -> str:
    """Map the APIC page (PD[0x1F7] of the scratch PD map_mmio made) and read its version."""
    return (
        map_mmio(c_bit)
        + f"""
    mov rdi, {PD_SCRATCH:#x}
    mov rbx, {0xFEE0_0000 | 0x83:#x}
    mov [rdi + 0x1F7 * 8], rbx
    mov rax, cr3
    mov cr3, rax
    mov rsi, 0xFEE00030
    mov eax, [rsi]
"""
        + store(4)
    )


@pytest.mark.parametrize("mode", ["none", "sev"])
def test_ovmf_style_platform_probing_reaches_every_pc_device(mode):
    m, _, hv = build(GUEST + apic_version(C_BIT[mode]) + exit_direct(0), mode)
    pc = QemuPc(hv)
    result = hv.run(timeout=30)
    assert result.ok, result
    raw = m.memory.read_private(OUT, 40)
    vals = [int.from_bytes(raw[8 * i : 8 * i + 8], "little") for i in range(5)]
    if mode == "none":  # REP INSB into private memory is only readable in mode none
        assert m.memory.read_private(OUT + 0x100, 4) == b"QEMU"
    assert vals[0] == 0x1237
    assert vals[2] > vals[1]  # the PM timer moved between the reads (one exit apart)
    assert (vals[3] << 16) + (16 << 20) == m.config.memory
    assert vals[4] & 0xFF == 0x14
    assert pc.acpi_pm.base == 0xB000 and pc.acpi_pm.timer_reads == 2
    assert pc.fw_cfg.reads["SIGNATURE"] >= 1


def test_s5_power_off_stops_the_run():
    body = """
    mov dx, 0xCF8
    mov eax, 0x8000_0B40
    out dx, eax
    mov dx, 0xCFC
    mov eax, 0x0600
    out dx, eax
    mov dx, 0xCF8
    mov eax, 0x8000_0B80
    out dx, eax
    mov dx, 0xCFC
    mov al, 1
    out dx, al
    mov dx, 0x604
    mov ax, 0x2000
    out dx, ax
    hlt
"""
    _, _, hv = build(body, "none")
    QemuPc(hv)
    result = hv.run(timeout=30)
    assert result.reason is RunReason.POWERED_OFF and "S5" in result.detail
    assert result.exit_status == 0


def test_memory_reaching_the_pci_hole_is_refused():
    _, _, hv = build(exit_direct(0), "none", config={"memory": 0xE000_1000})
    with pytest.raises(ValueError, match="PCI hole"):
        QemuPc(hv)
