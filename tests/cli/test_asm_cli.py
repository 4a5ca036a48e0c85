"""``sevx86 asm`` through a real process: outputs, exit codes, one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sevx86.cli.main import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[2]


def _command() -> list[str]:
    if all(importlib.util.find_spec(f"sevx86.cli.{name}") for name in SUBCOMMANDS):
        return [sys.executable, "-m", "sevx86.cli.main"]
    # A subcommand of another branch is not merged here yet: run the same
    # main() with only ours registered.
    shim = (
        "import sys; from sevx86.cli import main as m; m.SUBCOMMANDS = ('asm',); sys.exit(m.main())"
    )
    return [sys.executable, "-c", shim]


def sevx86(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*_command(), "asm", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_asm_is_a_registered_subcommand():
    assert "asm" in SUBCOMMANDS


def test_writes_binary_listing_and_json(tmp_path):
    source = tmp_path / "guest.S"
    source.write_text("start: mov eax, VALUE\n  vmgexit\n  jmp start\n")
    result = sevx86(source, "--base", "0x1000", "-D", "VALUE=7", "--listing", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "guest.bin").read_bytes() == bytes.fromhex("b807000000f30f01d9ebf5")
    assert "0x00001005  f3 0f 01 d9" in result.stdout and "guest.S:2" in result.stdout

    result = sevx86(source, "-o", tmp_path / "out.bin", "-D", "VALUE=1", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["size"] == 11 and report["base"] == 0
    assert report["symbols"] == {"start": 0}
    assert (tmp_path / "out.bin").stat().st_size == 11


def test_include_dir_and_bits(tmp_path):
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "defs.inc").write_text("%define PORT 0x80\n")
    source = tmp_path / "real.S"
    source.write_text('%include "defs.inc"\nout PORT, al\nret\n')
    result = sevx86(source, "--bits", "16", "-I", tmp_path / "inc", "-o", "r.bin", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.bin").read_bytes() == bytes.fromhex("e680c3")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("nop\nmov rbx, [0x200000]\n", "bad.S:2: keystone encoded the absolute operand"),
        ('nop\n%error "not ready"\n', "bad.S:2: not ready"),
        ("jmp nowhere\n", "bad.S:1: undefined symbol 'nowhere'"),
    ],
)
def test_bad_source_is_one_line_on_stderr_with_status_2(tmp_path, text, expected):
    source = tmp_path / "bad.S"
    source.write_text(text)
    result = sevx86("bad.S", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(expected)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "bad.bin").exists()


def test_missing_file_and_bad_define_exit_2(tmp_path):
    result = sevx86("absent.S", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("absent.S: cannot read")
    assert result.stderr.count("\n") == 1
    (tmp_path / "ok.S").write_text("nop\n")
    result = sevx86("ok.S", "-D", "1BAD=2", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_help_teaches_with_an_example(tmp_path):
    result = sevx86("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "pad_to 0xFFFFFFF0" in result.stdout and "sevx86 asm reset.S" in result.stdout


def test_an_internal_error_is_one_line_status_1_here_too(monkeypatch, capsys, tmp_path):
    # The guard is in the entry point, so every subcommand has it, not just run.
    from sevx86.cli import asm, main

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    src = tmp_path / "a.S"
    src.write_text("start:\n    nop\n")
    monkeypatch.delenv("SEVX86_DEBUG", raising=False)
    monkeypatch.setattr(asm, "assemble", broken)
    assert main.main(["asm", str(src)]) == main.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("sevx86 asm: internal error: RuntimeError: boom")
