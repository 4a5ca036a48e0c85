"""``--gdb`` and ``--symbols`` on the command line: the files written and the usage errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sevx86.asm import assemble
from sevx86.boot.firmware import assemble_firmware
from sevx86.gdb.session import parse_address
from tests.gdb.conftest import needs_gdb

SECRET_S = Path(__file__).with_name("secret.S")


def _sevx86(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sevx86.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("text", "address"),
    [("1234", ("127.0.0.1", 1234)), ("0.0.0.0:99", ("0.0.0.0", 99)), ("[::1]:5", ("::1", 5))],
)
def test_the_address_is_loopback_unless_a_host_is_given(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--gdb", "nine"], "the port must be a number"),
        (["--gdb", "70000"], "is not 0..65535"),
        (["--gdb", "0", "--scheduler", "parallel"], "--scheduler deterministic"),
    ],
)
def test_bad_gdb_options_are_one_line_usage_errors(args, says):
    done = _sevx86("run", "example:hello", *args)
    assert done.returncode == 2
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


@needs_gdb
def test_run_symbols_has_the_firmware_the_handlers_and_the_payload(tmp_path):
    elf = tmp_path / "syms.elf"
    done = _sevx86("run", str(SECRET_S), "--symbols", str(elf))
    assert done.returncode == 0, done.stderr
    firmware = assemble_firmware()
    payload = assemble(path=SECRET_S, base=0x100000, bits=64)
    expected = {
        "start16": firmware.reset.symbols["start16"],  # reset.S, real mode
        "vc_do_cpuid": firmware.runtime.symbols["vc_do_cpuid"],  # guest_asm/vc_handler64.S
        "the_cpuid": payload.symbols["the_cpuid"],  # the payload
    }
    args = ["gdb", "-nx", "-batch", "-ex", f"file {elf}"]
    for name in expected:
        args += ["-ex", f"info address {name}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60).stdout
    for name, addr in expected.items():
        assert f'Symbol "{name}" is at {addr:#x}' in out, out
