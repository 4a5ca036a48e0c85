"""``sevx86 run`` as a user runs it: the examples, programs, exit codes, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from sevx86.asm import assemble
from sevx86.asm import fw_abi as abi

from .conftest import json_lines, one_line_error

STATUS_3 = """\
%include "include/platform.inc"
start:
    mov edx, DEBUG_EXIT_PORT
    mov eax, 3
    out dx, eax
"""


def test_example_hello_prints_and_exits_0(sevx86):
    done = sevx86("run", "example:hello")
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "Hello from an SEV-ES guest (C-bit 51)!\n",
        "",
    )


def test_example_option_other_mode_and_c_bit(sevx86):
    done = sevx86("run", "--example", "hello", "--mode", "sev", "--cbitpos", "47")
    assert (done.returncode, done.stdout) == (0, "Hello from an SEV guest (C-bit 47)!\n")
    done = sevx86("run", "example:hello", "--mode", "none")
    assert (done.returncode, done.stdout) == (0, "Hello from a guest without SEV!\n")


def test_list_examples(sevx86):
    done = sevx86("run", "--list-examples")
    assert done.returncode == 0
    names = [line.split()[0] for line in done.stdout.splitlines()]
    assert names == ["cpuid", "fault", "hello", "mmio", "portio", "secret", "smp"]


def test_assembly_program_and_flat_binary_give_their_status(sevx86, tmp_path):
    (tmp_path / "guest.S").write_text(STATUS_3)
    assert sevx86("run", "guest.S").returncode == 3
    binary = assemble(STATUS_3, base=abi.PAYLOAD_GPA).code
    (tmp_path / "guest.bin").write_bytes(binary)
    done = sevx86("run", "guest.bin", "--mode", "none", "--memory", "4M")
    assert (done.returncode, done.stderr) == (3, "")


def test_fault_example_exits_120_with_the_reason(sevx86):
    done = sevx86("run", "example:fault")
    assert done.returncode == 120
    assert "unhandled exception #PF error code 0x0 at RIP 0x10000e CR2 0x0" in done.stdout
    line = one_line_error(done, "run")
    assert "reason set 3 code 0x4e" in line and "#PF" in line
    done = sevx86("run", "example:fault", "--mode", "none")
    assert done.returncode == 120 and "code 0x4e" in one_line_error(done, "run")


def test_trace_file_is_json_lines_with_the_boot(sevx86, tmp_path):
    done = sevx86("run", "example:hello", "--trace", "boot.jsonl")
    assert done.returncode == 0
    events = json_lines(tmp_path / "boot.jsonl")
    kinds = [e["kind"] for e in events]
    for kind in ("launch", "vc", "msr-protocol", "paging", "ghcb-register", "vmgexit"):
        assert kind in kinds
    assert kinds[-1] == "run-end"


def test_verbose_shows_the_firmware_log_and_a_summary(sevx86):
    done = sevx86("run", "example:hello", "-v")
    assert done.returncode == 0
    assert "sevx86-fw: SEV-ES, C-bit 51, GHCB at 0x9000 (protocol 2)" in done.stderr
    assert "launch digest" in done.stderr.splitlines()[-1]


def test_saved_image_measures_like_sev_snp_measure(sevx86, tmp_path):
    # Two vCPUs: the launch measures a VMSA per vCPU, so --vcpus must reach it.
    done = sevx86("run", "example:hello", "--vcpus", "2", "--save-image", "hello.fd", "-v")
    assert done.returncode == 0
    launched = done.stderr.rpartition("launch digest ")[2].strip()
    measured = sevx86("measure", "--firmware", "hello.fd", "--vcpus", "2", "--vcpu-type", "EPYC-v4")
    assert measured.returncode == 0
    assert measured.stdout.strip() == launched
    measure = pytest.importorskip("sevsnpmeasure.guest")
    from sevsnpmeasure.sev_mode import SevMode

    from sevx86.boot.vcpu_types import vcpu_signature

    expected = measure.calc_launch_digest(
        SevMode.SEV_ES, 2, vcpu_signature("EPYC-v4"), str(tmp_path / "hello.fd"), *[None] * 3, 0
    )
    assert measured.stdout.strip() == expected.hex()


def test_help_teaches_usage_and_exit_statuses(sevx86):
    done = sevx86("run", "--help")
    assert done.returncode == 0
    for text in ("example:hello", "exit status:", "120", "124", "--trace FILE", "0x100000"):
        assert text in done.stdout


SPIN = "start:\n    jmp start\n"
TRIPLE = "start:\n    lidt [rel nothing]\n    int3\nnothing:\n    dq 0, 0\n"


@pytest.mark.parametrize(
    ("files", "args", "status", "expect"),
    [
        ({}, ("missing.S",), 2, "missing.S: no such file"),
        ({"bad.S": "start:\n    nop\n    bogus eax\n"}, ("bad.S",), 2, "bad.S:3: "),
        ({"big.bin": (3 << 20) + 1}, ("big.bin", "--memory", "4M"), 2, "does not fit"),
        ({"empty.bin": 0}, ("empty.bin",), 2, "empty program"),
        ({"spin.S": SPIN}, ("spin.S", "--max-instructions", "100000"), 125, "instruction"),
        ({"spin.S": SPIN}, ("spin.S", "--timeout", "0.5"), 124, "timeout"),
        ({"triple.S": TRIPLE}, ("triple.S",), 121, "triple fault"),
        ({}, ("example:hello", "--cbitpos", "99"), 2, "cbitpos 99 is outside 32..63"),
        ({}, ("example:hello", "--cbitpos", "x"), 2, "--cbitpos 'x' is not a number"),
        ({}, ("example:hello", "--memory", "12x"), 2, "'12x' is not a size"),
        ({}, ("example:hello", "--memory", "1M"), 2, "outside 2 MiB"),
        ({}, ("example:hello", "--mode", "snp"), 2, "mode 'snp' is not one of"),
        ({}, ("example:hello", "--policy", "0x1"), 2, "lacks the SEV-ES bit"),
        ({}, ("example:hello", "--mode", "none", "--policy", "5"), 2, "encrypted guest"),
        ({}, ("example:hello", "--timeout", "soon"), 2, "not a number of seconds"),
        ({}, ("example:nothing",), 2, "no example 'nothing'"),
        ({}, ("example:hello", "--vcpus", "0"), 2, "--vcpus 0 is outside 1..32"),
        ({}, ("example:hello", "--vcpus", "33"), 2, "--vcpus 33 is outside 1..32"),
        ({}, ("example:hello", "--scheduler", "foo"), 2, "--scheduler 'foo' is not one of"),
        ({}, ("example:hello", "--quantum", "0"), 2, "--quantum 0 must be at least 1"),
        ({}, ("example:hello", "--seed", "x"), 2, "--seed 'x' is not a number"),
        ({}, ("example:hello", "--ap-start", "soon"), 2, "--ap-start 'soon' is not one of"),
        ({}, (), 2, "no PROGRAM given"),
    ],
)
def test_bad_input_is_one_line_and_a_documented_status(
    sevx86, tmp_path, files, args, status, expect
):
    for name, content in files.items():
        if isinstance(content, int):
            (tmp_path / name).write_bytes(b"\x90" * content)
        else:
            (tmp_path / name).write_text(content)
    done = sevx86("run", *args)
    assert done.returncode == status, done.stderr
    assert expect in one_line_error(done, "run")


@pytest.mark.parametrize(
    ("source", "args", "status"),
    [(SPIN, ("--max-instructions", "50000"), 125), (TRIPLE, (), 121)],
)
def test_trace_file_survives_a_failed_run(sevx86, tmp_path, source, args, status):
    (tmp_path / "guest.S").write_text(source)
    done = sevx86("run", "guest.S", "--trace", "t.jsonl", "--mode", "sev-es", *args)
    assert done.returncode == status
    events = json_lines(tmp_path / "t.jsonl")
    assert events[0]["kind"] == "launch" and events[-1]["kind"] == "run-end"


def test_an_internal_error_is_one_line_status_1(monkeypatch, capsys):
    """A bug in sevx86 must not show the user a traceback (SEVX86_DEBUG does)."""
    from sevx86.cli import common, main

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.delenv("SEVX86_DEBUG", raising=False)
    monkeypatch.setattr(common, "boot_machine", broken)
    assert main.main(["run", "example:hello"]) == common.ExitStatus.INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: boom" in err
    monkeypatch.setenv("SEVX86_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main.main(["run", "example:hello"])


LIE = """\
from sevx86.arch.ghcb import GhcbMsr, msr_sev_info_response

def setup(hv):
    def lie(req, proceed):
        proceed()
        req.response = msr_sev_info_response(2, 1, 47)
    hv.on_msr_protocol(GhcbMsr.SEV_INFO_REQ, lie)
"""

HIDE_SEV = """\
from sevx86.hv import Hypervisor as Honest
from sevx86.hv.handlers import cpuid


class Hypervisor(Honest):
    def handle_cpuid(self, req):
        leaf = req.reg("rax") & 0xFFFFFFFF
        cpuid(self, req)
        if leaf == 0x8000001F:
            req.set_reg("rax", 0)
"""


def test_a_malicious_hypervisor_from_a_file_meets_the_firmware_s_refusal(sevx86, tmp_path):
    (tmp_path / "lie.py").write_text(LIE)
    done = sevx86("run", "example:hello", "--hv", "lie.py")
    assert (done.returncode, done.stdout) == (120, "")
    assert "code 0x5 (sevx86 firmware: SEV information C-bit differs" in one_line_error(done, "run")
    (tmp_path / "hide.py").write_text(HIDE_SEV)
    done = sevx86("trace", "example:hello", "--mode", "sev", "--hv", "hide.py")
    assert done.returncode == 120
    assert "serial: sevx86-fw: fatal: reason set 0x03 code 0x01" in done.stdout


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("x = (\n", "SyntaxError"),
        ("Hypervisor = 3\n", "not a subclass"),
        ("y = 1\n", "neither setup(hv) nor"),
        ("def setup(hv):\n    raise KeyError('no')\n", "setup(hv) raised KeyError"),
    ],
)
def test_a_broken_hypervisor_file_is_a_usage_error(sevx86, tmp_path, content, expect):
    (tmp_path / "hv.py").write_text(content)
    done = sevx86("run", "example:hello", "--hv", "hv.py")
    assert done.returncode == 2 and expect in one_line_error(done, "run")


@pytest.mark.parametrize("command", ["run", "trace"])
def test_a_reader_that_stops_early_is_no_error(cli_env, tmp_path, command):
    """`sevx86 run ... | head -1`: the echo stops, the guest's status stays."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "sevx86.cli.main", command, "example:cpuid"],
        cwd=tmp_path,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == ""


def _readme_block(name: str) -> str:
    """The README's Python example that starts with ``# name``."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index(f"# {name} --")
    return text[start : text.index("```", start)]


def test_the_readmes_cpuid_lie_is_refused_by_the_firmware(sevx86, tmp_path):
    (tmp_path / "lie_cpuid.py").write_text(_readme_block("lie_cpuid.py"))
    done = sevx86("run", "example:hello", "--hv", "lie_cpuid.py")
    assert (done.returncode, done.stdout) == (120, "")
    assert "C-bit" in one_line_error(done, "run")
