"""The built-in examples (guest_asm/examples) under the firmware, mode by mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from sevx86.asm import assemble
from sevx86.asm import fw_abi as abi
from sevx86.asm.preprocess import guest_asm_dir
from sevx86.boot.firmware import boot_machine
from sevx86.cli.common import firmware_fatal, list_examples
from sevx86.config import GuestConfig, GuestMode
from sevx86.hv import Hypervisor, RunReason

EXAMPLES = guest_asm_dir() / "examples"


def run_example(name: str, mode: str, vcpus: int = 1):
    payload = assemble(path=EXAMPLES / f"{name}.S", base=abi.PAYLOAD_GPA).code
    booted = boot_machine(payload, GuestConfig(mode=GuestMode(mode), vcpus=vcpus))
    result = Hypervisor(booted.machine.host_view()).run(timeout=30)
    serial = result.outputs.get("serial", b"").decode()
    debugcon = result.outputs.get("debugcon", b"").decode()
    return result, serial, debugcon


def test_the_examples_are_the_documented_seven():
    expected = ["cpuid", "fault", "hello", "mmio", "portio", "secret", "smp"]
    assert sorted(list_examples()) == expected
    for path in EXAMPLES.glob("*.S"):
        assert Path(path).read_text().startswith(f"; {path.stem}: ")


@pytest.mark.parametrize(
    ("mode", "line"),
    [
        ("sev-es", "Hello from an SEV-ES guest (C-bit 51)!\n"),
        ("sev", "Hello from an SEV guest (C-bit 51)!\n"),
        ("none", "Hello from a guest without SEV!\n"),
    ],
)
def test_hello(mode, line):
    result, serial, debugcon = run_example("hello", mode)
    assert (result.reason, result.exit_status) == (RunReason.EXIT_STATUS, 0)
    assert serial == line
    assert debugcon.startswith("sevx86-fw: ")  # the firmware's log, not on the serial port


@pytest.mark.parametrize("mode", ["sev-es", "none"])
def test_cpuid(mode):
    result, serial, _ = run_example("cpuid", mode)
    assert (result.reason, result.exit_status) == (RunReason.EXIT_STATUS, 0)
    lines = serial.splitlines()
    assert lines[0].startswith("CPUID 0x00000000: eax=0x00000010 ebx=0x68747541")
    assert "vendor: AuthenticAMD" in lines
    if mode == "sev-es":
        assert "CPUID 0x8000001f: eax=0x0000000a ebx=0x00000073" in serial
        assert lines[-1] == (
            "0x8000001f: SEV yes, SEV-ES yes, C-bit position 51, physical address bits lost 1"
        )
    else:
        assert lines[-1].startswith("0x8000001f: SEV no, SEV-ES no, C-bit position 0")


@pytest.mark.parametrize("mode", ["sev-es", "sev", "none"])
def test_portio(mode):
    result, serial, debugcon = run_example("portio", mode)
    assert (result.reason, result.exit_status) == (RunReason.EXIT_STATUS, 0)
    assert "UART scratch register: wrote 0x5a, read 0x0000005a  ok" in serial
    assert "debug console readback: 0x000000e9  ok" in serial
    if mode == "sev":
        assert "skipped under plain SEV" in serial
        assert "REP OUTSB" not in debugcon
    else:
        assert "portio: hello through REP OUTSB\n" in debugcon


@pytest.mark.parametrize("mode", ["sev-es", "sev", "none"])
def test_mmio(mode):
    result, serial, _ = run_example("mmio", mode)
    assert (result.reason, result.exit_status) == (RunReason.EXIT_STATUS, 0), serial
    assert "MMIO test device ID: 0x58564553  ok" in serial
    assert "0x1122334455667788: 0x1122334455667788  ok" in serial
    assert "FAILED" not in serial


@pytest.mark.parametrize("mode", ["sev-es", "none"])
def test_fault_is_reported_and_ends_the_guest(mode):
    result, serial, _ = run_example("fault", mode)
    assert "sevx86-fw: unhandled exception #PF error code 0x0 at RIP 0x10000e CR2 0x0" in serial
    reason = (abi.FW_REASON_SET, abi.FwReason.EXCEPTION + 14)
    assert firmware_fatal(serial) == reason
    if mode == "sev-es":
        assert result.reason is RunReason.TERMINATED
        term = result.termination
        assert term is not None and (term.reason_set, term.reason_code) == reason
    else:
        assert result.reason is RunReason.HALTED


def test_the_payload_in_guest_asm_readme_runs():
    readme = (guest_asm_dir() / "README.md").read_text()
    section = readme.split("## Payloads for sevx86's firmware", 1)[1]
    source = section.split("```\n", 2)[1]
    payload = assemble(source, base=abi.PAYLOAD_GPA, name="README.md").code
    booted = boot_machine(payload, GuestConfig())
    result = Hypervisor(booted.machine.host_view()).run(timeout=30)
    assert (result.reason, result.exit_status) == (RunReason.EXIT_STATUS, 0)
    assert result.outputs["serial"] == b"hi\n"


@pytest.mark.parametrize(
    ("mode", "vcpus", "last"),
    [
        ("sev-es", 3, "2 AP(s) woken through the AP jump table"),
        ("none", 2, "no AP jump table (it exists under SEV-ES only)"),
        ("sev-es", 1, "1 vCPU(s) up"),
    ],
)
def test_smp(mode, vcpus, last):
    result, serial, _ = run_example("smp", mode, vcpus)
    assert (result.reason, result.exit_status) == (RunReason.EXIT_STATUS, 0), result
    lines = serial.splitlines()
    assert f"{vcpus} vCPU(s) up" in lines and lines[-1] == last


def test_hello_with_several_vcpus():
    result, serial, debugcon = run_example("hello", "sev-es", vcpus=2)
    assert result.exit_status == 0
    assert serial.splitlines() == [
        "sevx86-fw: AP 1 up, GHCB at 0x20000",
        "Hello from an SEV-ES guest (C-bit 51) with 2 vCPUs!",
    ]
    assert "; 2 vCPUs; payload" in debugcon
