"""``sevx86 boot`` as a user runs it."""

from __future__ import annotations

import json

import pytest

from sevx86.cli.main import main
from sevx86.trace.events import read_jsonl
from tests.ovmf import OVMF_CODE, OVMF_VARS, needs_ovmf


def test_help_teaches_the_milestones(capsys):
    with pytest.raises(SystemExit) as done:
        main(["boot", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for word in ("pei-core", "--until", "--varstore", "exit status", "fw_cfg"):
        assert word in out


def test_unreadable_firmware_and_bad_sizes_are_usage_errors(tmp_path, capsys):
    assert main(["boot", str(tmp_path / "missing.fd")]) == 2
    assert "cannot read firmware" in capsys.readouterr().err
    image = tmp_path / "fw.fd"
    image.write_bytes(bytes(0x1000))
    assert main(["boot", str(image), "--memory", "lots"]) == 2
    assert main(["boot", str(image)]) == 2  # no SEV-ES reset block: QEMU refuses too
    assert "reset block" in capsys.readouterr().err


@needs_ovmf
def test_boot_to_the_ghcb_milestone_with_a_json_trace(tmp_path, capsys):
    trace = tmp_path / "boot.jsonl"
    status = main(
        ["boot", str(OVMF_CODE), "--until", "ghcb-mmio", "--quiet", "--json", "--trace", str(trace)]
    )
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["reason"] == "stopped" and summary["furthest"] == "ghcb-mmio"
    assert list(summary["milestones"])[:4] == ["cbit", "long-mode", "sec", "ghcb"]
    assert summary["exit_kinds"]["msr-protocol:CPUID_REQ"] == 8
    events = read_jsonl(trace)
    # The launch traces itself, before the first VMRUN (SEV API order, QEMU's sev.c).
    first_vmrun = next(i for i, e in enumerate(events) if e.kind == "vmrun")
    launch = [e.summary.split()[0] for e in events[:first_vmrun] if e.kind == "launch"]
    assert launch == [
        "LAUNCH_START",
        "LAUNCH_UPDATE_DATA",
        "LAUNCH_UPDATE_VMSA",
        "LAUNCH_MEASURE:",
        "LAUNCH_FINISH",
    ]
    assert all(e.kind in ("launch", "load") for e in events[:first_vmrun])
    assert [e.data["milestone"] for e in events if e.kind == "milestone"][-1] == "ghcb-mmio"


@needs_ovmf
def test_a_milestone_not_reached_in_time_exits_1(capsys):
    status = main(["boot", str(OVMF_CODE), "--until", "shell", "--quiet", "--timeout", "0.5"])
    assert status == 1
    assert "timeout" in capsys.readouterr().err


def test_save_varstore_needs_a_varstore(tmp_path, capsys):
    image = tmp_path / "fw.fd"
    image.write_bytes(bytes(0x1000))
    assert main(["boot", str(image), "--save-varstore", str(tmp_path / "out.fd")]) == 2
    assert "--save-varstore needs --varstore" in capsys.readouterr().err


@needs_ovmf
def test_save_varstore_writes_the_flash_back(tmp_path, capsys):
    varstore = OVMF_VARS
    out = tmp_path / "vars.fd"
    status = main(
        [
            "boot",
            str(OVMF_CODE),
            "--varstore",
            str(varstore),
            "--save-varstore",
            str(out),
            "--until",
            "ghcb",
            "--quiet",
        ]
    )
    assert status == 0
    # Stopped long before the variable driver: the flash is as it came.
    assert out.read_bytes() == varstore.read_bytes()


def test_a_bad_clock_is_a_usage_error(tmp_path, capsys):
    image = tmp_path / "fw.fd"
    image.write_bytes(bytes(0x1000))
    assert main(["boot", str(image), "--clock", "sundial"]) == 2
    assert "--clock" in capsys.readouterr().err
    assert main(["boot", str(image), "--clock", "icount", "--clock-step", "0"]) == 2
    assert main(["run", "example:hello", "--clock", "icount:x"]) == 2
    assert "SHIFT" in capsys.readouterr().err


def test_run_takes_both_clocks():
    assert main(["run", "example:hello", "--clock", "realtime"]) == 0
    assert main(["run", "example:hello", "--clock", "icount:3"]) == 0
