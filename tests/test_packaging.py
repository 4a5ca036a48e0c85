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
