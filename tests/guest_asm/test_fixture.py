"""The sev_guest pytest plugin as a user meets it: the README example, run by pytest."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from sevx86.testing import ScriptedHost, run_guest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "guest_asm" / "README.md"


def _readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    marker = text.index("<!-- example: tests/guest_asm/test_fixture.py runs this block -->")
    block = re.search(r"```python\n(.*?)```", text[marker:], re.DOTALL)
    assert block is not None
    return block.group(1)


def _pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_user_handler.py"
    test.write_text(source, encoding="utf-8")
    # Only this plugin, by module name: an installed entry point of the same
    # module would otherwise be registered twice.
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "sevx86.testing.plugin", str(test)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"]["sevx86"] == "sevx86.testing.plugin"


def test_the_readme_example_passes_under_pytest(tmp_path):
    result = _pytest(tmp_path, _readme_example())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_a_failing_user_test_shows_how_the_guest_ended(tmp_path):
    source = _readme_example().replace("(0x4B4D564B, 0x8888)", "(0, 0)")
    result = _pytest(tmp_path, source)
    assert result.returncode == 1
    assert "sev_guest run 0" in result.stdout
    assert "stopped: hlt" in result.stdout


def test_run_guest_works_without_pytest():
    run = run_guest(
        'start:\n    cpuid\n    hlt\n%include "vc_handler64.S"\n',
        host=ScriptedHost(cpuid={0: (1, 2, 3, 4)}),
    )
    assert run.halted
    assert [run.reg(r) for r in ("rax", "rbx", "rcx", "rdx")] == [1, 2, 3, 4]


ASM_ERROR_TEST = """\
def test_mine(sev_guest):
    run = sev_guest("start:\\n    nop\\n    bogus eax\\n")
    assert run.halted
"""

FAILING_ASSERT_TEST = """\
def test_mine(sev_guest):
    run = sev_guest('start:\\n    hlt\\n%include "vc_handler64.S"\\n')
    assert not run.halted
"""


def test_i17_an_assembly_error_in_sev_guest_is_its_file_line_message_only(tmp_path):
    result = _pytest(tmp_path, ASM_ERROR_TEST)
    assert result.returncode == 1
    assert "test_mine:3: " in result.stdout  # the source's name and line
    assert "assembler.py" not in result.stdout  # no traceback through sevx86
    assert "Traceback" not in result.stdout


def test_i17_a_failed_assert_shows_a_short_guest_run(tmp_path):
    result = _pytest(tmp_path, FAILING_ASSERT_TEST)
    assert result.returncode == 1
    assert "GuestRun(hlt, " in result.stdout
    assert "machine=" not in result.stdout and "tracer=" not in result.stdout
