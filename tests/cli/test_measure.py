"""``sevx86 measure`` run as a user runs it, against the sev-snp-measure CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.boot import synthetic_firmware as fw
from tests.oracle import sev_snp_measure as oracle_module
from tests.ovmf import OVMF_CODE, needs_ovmf


def sevx86(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sevx86.cli.main", *args], capture_output=True, text=True
    )


def sev_snp_measure(firmware: Path, vcpus: int, vcpu_type: str) -> str:
    oracle_module("cli")  # skips the calling test without sev-snp-measure
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sevsnpmeasure.cli",
            "--mode",
            "seves",
            "--ovmf",
            str(firmware),
            "--vcpus",
            str(vcpus),
            "--vcpu-type",
            vcpu_type,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@needs_ovmf
@pytest.mark.ovmf
@pytest.mark.parametrize(("vcpus", "vcpu_type"), [(2, "EPYC-v4"), (1, "EPYC-Genoa")])
def test_prints_what_sev_snp_measure_prints(vcpus, vcpu_type):
    done = sevx86(
        "measure", "--firmware", str(OVMF_CODE), "--vcpus", str(vcpus), "--vcpu-type", vcpu_type
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == sev_snp_measure(OVMF_CODE, vcpus, vcpu_type)
    assert done.stderr == ""


def test_json_output(tmp_path):
    path = tmp_path / "fw.fd"
    path.write_bytes(fw.build())
    done = sevx86(
        "measure", "--firmware", str(path), "--vcpus", "3", "--vcpu-sig", "0xa00f11", "--json"
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["launch_digest"] == sev_snp_measure(path, 3, "EPYC-Milan")
    assert out["vcpus"] == 3 and out["vcpu_signature"] == "0xa00f11"
    assert out["ap_reset_addr"] == f"{fw.DEFAULT_AP_RESET:#x}"
    assert out["firmware_size"] == len(fw.build())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--firmware", "/no/such/file", "--vcpus", "2", "--vcpu-type", "EPYC"], "cannot read"),
        (["--firmware", "{fw}", "--vcpus", "2", "--vcpu-type", "Pentium-II"], "unknown vCPU type"),
        (["--firmware", "{fw}", "--vcpus", "0", "--vcpu-type", "EPYC"], "at least 1"),
        (["--firmware", "{fw}", "--vcpus", "-3", "--vcpu-type", "EPYC"], "at least 1"),
        (["--firmware", "{fw}", "--vcpus", "two", "--vcpu-type", "EPYC"], "not a number"),
        (["--firmware", "{fw}", "--vcpus", "2"], "--vcpu-type"),
        (["--vcpus", "2", "--vcpu-type", "EPYC"], "--firmware"),
        (["--firmware", "{noblock}", "--vcpus", "2", "--vcpu-type", "EPYC"], "reset block"),
        (["--firmware", "{dir}", "--vcpus", "2", "--vcpu-type", "EPYC"], "cannot read"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    good = tmp_path / "fw.fd"
    good.write_bytes(fw.build())
    noblock = tmp_path / "noblock.fd"
    noblock.write_bytes(fw.build(ap_reset=None))
    args = [a.format(fw=good, noblock=noblock, dir=tmp_path) for a in args]
    done = sevx86("measure", *args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sevx86 measure: ") and message in lines[0]
    assert "Traceback" not in done.stderr


def test_help_teaches():
    done = sevx86("measure", "--help")
    assert done.returncode == 0
    for word in ("--firmware", "--vcpus", "--vcpu-type", "--json", "EPYC-Milan", "sev-snp-measure"):
        assert word in done.stdout
