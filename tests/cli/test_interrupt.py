"""Ctrl-C during ``run`` and ``trace`` (issue 17, "Booting OVMF": Ctrl-C reported a fake
"emulation error: UcError" during ``trace --json``).

A user's Ctrl-C is SIGINT to the process (POSIX): the run must end as interrupted --
exit status 130, as a shell reports 128 + SIGINT -- with the trace written so far still
valid JSON Lines, never as an emulation error and never with a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

# An exit on every iteration (CPUID: #VC + VMGEXIT under SEV-ES), forever.
EXITING_LOOP = "start:\n.again:\n    xor eax, eax\n    cpuid\n    jmp .again\n"
# No exit at all: Unicorn runs it without calling back into Python.
TIGHT_LOOP = "start:\n.again:\n    inc rax\n    jmp .again\n"


def _spawn(tmp_path, source: str, *argv: str) -> subprocess.Popen:
    program = tmp_path / "loop.S"
    program.write_text(source)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("SEVX86_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "sevx86.cli.main", *argv, str(program), "--timeout", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def _interrupt(child: subprocess.Popen, wait_for_output: bool) -> tuple[bytes, str]:
    try:
        first = b""
        if wait_for_output:
            while b'"vc"' not in first:  # the guest's loop is under way
                line = child.stdout.readline()
                assert line, child.stderr.read().decode()
                first += line
        else:
            time.sleep(3)  # imports, assembly and boot, then the tight loop
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    return first + out, err.decode()


@pytest.mark.slow
def test_i17_ctrl_c_during_trace_json_is_an_interruption_not_an_emulation_error(tmp_path):
    child = _spawn(tmp_path, EXITING_LOOP, "trace", "--json")
    out, err = _interrupt(child, wait_for_output=True)
    assert child.returncode == 130, err
    assert "interrupted" in err
    assert "emulation error" not in err and "UcError" not in err and "Traceback" not in err
    events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert any(e["kind"] == "vc" for e in events)  # the trace so far, every line valid


@pytest.mark.slow
def test_i17_ctrl_c_stops_a_guest_that_never_exits(tmp_path):
    child = _spawn(tmp_path, TIGHT_LOOP, "run")
    _, err = _interrupt(child, wait_for_output=False)
    assert child.returncode == 130, err
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err
