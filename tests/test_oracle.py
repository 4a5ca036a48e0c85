"""Issue 15 item 14: only the tests that compare with sev-snp-measure skip without it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a pytest run per module, in a subprocess
@pytest.mark.parametrize(
    ("module", "oracle_tests"),
    [("tests/arch/test_layouts.py", 3), ("tests/boot/test_reset.py", 18)],
)
def test_item14_without_sev_snp_measure_only_the_oracle_tests_skip(tmp_path, module, oracle_tests):
    # A sevsnpmeasure that is "not installed" (ModuleNotFoundError) hides the real one.
    fake = tmp_path / "sevsnpmeasure"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ModuleNotFoundError("hidden", name="sevsnpmeasure")\n')
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    summary = done.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    skipped = re.search(r"(\d+) skipped", summary)
    assert passed and int(passed.group(1)) > 0, done.stdout
    assert skipped and int(skipped.group(1)) == oracle_tests, summary
