"""``sevx86 boot`` while it works: milestones as they come, a status line, Ctrl-C, bad sizes.

Run as a user runs it (a real process) on a flash image of our own firmware,
so each boot takes a second, not OVMF's minutes: its payload prints OVMF's
shell banner (or nothing) and then spins.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sevx86.asm import assemble
from sevx86.asm import fw_abi as abi
from sevx86.boot.firmware import flash_image

ROOT = Path(__file__).resolve().parents[2]
MEMORY = "128M"
SPIN = "start:\n    jmp start\n"
BANNER_THEN_SPIN = """
start:
    lea rsi, [rel banner]
    call pl_puts
.spin:
    jmp .spin
banner: db "UEFI Interactive Shell v2.2", 10, 0
%include "payload.S"
"""


def _image(tmp_path: Path, source: str, name: str) -> Path:
    payload = assemble(source, base=abi.PAYLOAD_GPA).code
    path = tmp_path / name
    path.write_bytes(flash_image(payload, memory=128 << 20))
    return path


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sevx86.cli.main", "boot", *args]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SEVX86_DEBUG", None)
    return env


def _boot(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(*args), capture_output=True, text=True, timeout=timeout, env=_env()
    )


def test_boot_prints_each_milestone_on_stderr_as_it_is_reached(tmp_path):
    image = _image(tmp_path, SPIN, "spin.fd")
    done = _boot(str(image), "--memory", MEMORY, "--until", "ghcb-io", "--quiet")
    assert done.returncode == 0, done.stderr
    lines = [
        x for x in done.stderr.splitlines() if x.startswith("sevx86 boot: ") and " milestone " in x
    ]
    names = [line.split(" milestone ")[1].split(":")[0] for line in lines]
    assert names == ["cbit", "long-mode", "ghcb", "ghcb-io"]
    # Piped: no status line (no carriage returns, no escape codes), plain lines only.
    assert "\r" not in done.stderr and "\033" not in done.stderr


@pytest.mark.slow
def test_boot_without_until_stops_at_the_shell_banner_with_exit_0(tmp_path):
    image = _image(tmp_path, BANNER_THEN_SPIN, "banner.fd")
    done = _boot(str(image), "--memory", MEMORY, "--timeout", "100")
    assert done.returncode == 0, done.stderr
    assert "milestone shell: UEFI shell banner" in done.stderr
    assert "UEFI Interactive Shell v2.2" in done.stdout  # the guest's console
    # --until none runs on past the banner (here into the --timeout: exit 1).
    done = _boot(str(image), "--memory", MEMORY, "--until", "none", "--timeout", "2")
    assert done.returncode == 1 and "milestone shell" in done.stderr
    assert "run ended: timeout" in done.stderr


@pytest.mark.slow
def test_ctrl_c_prints_the_summary_and_still_writes_the_varstore(tmp_path):
    image = _image(tmp_path, SPIN, "spin.fd")
    varstore = tmp_path / "vars.fd"
    varstore.write_bytes(bytes(range(256)) * 64)  # 16 KiB
    saved = tmp_path / "saved.fd"
    child = subprocess.Popen(
        _command(
            str(image),
            "--memory",
            MEMORY,
            "--until",
            "none",
            "--timeout",
            "600",
            "--varstore",
            str(varstore),
            "--save-varstore",
            str(saved),
            "--quiet",
        ),
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        first = child.stderr.readline()  # the guest runs: its first milestone
        assert " milestone cbit" in first
        time.sleep(0.5)  # now in the payload's tight loop
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130
    assert "run ended: stopped interrupted (Ctrl-C)" in err
    assert "milestone          time" in err and "ghcb-io" in err  # the milestone table
    assert "Traceback" not in err and err.rstrip().endswith("sevx86 boot: interrupted")
    assert saved.read_bytes() == varstore.read_bytes()  # the flash, as the guest left it


@pytest.mark.slow
def test_the_status_line_shows_only_on_a_terminal(tmp_path):
    image = _image(tmp_path, SPIN, "spin.fd")
    master, slave = pty.openpty()
    child = subprocess.Popen(
        _command(str(image), "--memory", MEMORY, "--until", "none", "--timeout", "3", "--quiet"),
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=_env(),
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif child.poll() is not None:
                break
        child.wait(timeout=60)
    finally:
        os.close(master)
        if child.poll() is None:
            child.kill()
    text = seen.decode("utf-8", "replace")
    assert "\r\033[K[" in text and " exits (" in text and "phase: ghcb-io" in text
    assert "milestone cbit" in text  # milestone lines on a terminal too


@pytest.mark.parametrize(
    ("memory", "expect"),
    [
        ("1T", "below QEMU's PCI hole at 3584M"),
        ("8G", "below QEMU's PCI hole at 3584M"),
        ("1M", "OVMF needs at least 128M"),
    ],
)
def test_memory_sizes_the_pc_machine_cannot_hold_are_usage_errors(tmp_path, memory, expect):
    image = _image(tmp_path, SPIN, "spin.fd")
    done = _boot(str(image), "--memory", memory)
    assert done.returncode == 2
    assert done.stderr.startswith(f"sevx86 boot: --memory {memory}: ") and expect in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


def test_a_bad_varstore_is_reported_under_its_own_name(tmp_path):
    image = _image(tmp_path, SPIN, "spin.fd")
    bad = tmp_path / "vars.txt"
    bad.write_text("not a flash image\n")
    done = _boot(str(image), "--memory", MEMORY, "--varstore", str(bad))
    assert done.returncode == 2
    assert done.stderr.startswith(f"sevx86 boot: --varstore {bad}: ")
    assert str(image) not in done.stderr
