"""The package list in pyproject.toml matches the source tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        "sevx86." + ".".join(p.parent.relative_to(ROOT / "sevx86").parts)
        for p in (ROOT / "sevx86").rglob("__init__.py")
    }
    on_disk = {name.rstrip(".") for name in on_disk}
    mapped = set(config["package-dir"]) - {"sevx86"}
    assert on_disk | mapped == listed
    for name, folder in config["package-dir"].items():
        assert (ROOT / folder).is_dir(), name


def test_an_installed_package_finds_its_assembly_and_runs_an_example(tmp_path):
    """The installed layout (sevx86/guest_asm, sevx86/firmware as package data)
    must work without the source tree: the assembler's include folder, the
    firmware sources and the examples all come from the package."""
    import os
    import shutil
    import subprocess
    import sys

    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name if src.exists() else _mkdir(src) / name)
    for folder in ("sevx86", "guest_asm", "firmware"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    lib = tmp_path / "lib"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import setup; setup()",
            "-q",
            "build_py",
            "-d",
            lib,
        ],
        cwd=src,
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(lib), "SEVX86_CACHE_DIR": str(tmp_path / "cache")}
    probe = (
        "from sevx86.asm.preprocess import guest_asm_dir; "
        "from sevx86.boot.firmware import firmware_dir; "
        "print(guest_asm_dir()); print(firmware_dir())"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert found.stdout.split() == [
        str(lib / "sevx86" / "guest_asm"),
        str(lib / "sevx86" / "firmware"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "sevx86.cli.main", "run", "example:hello"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout) == (0, "Hello from an SEV-ES guest (C-bit 51)!\n")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path
