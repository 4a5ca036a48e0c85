"""Where Debian's ``ovmf`` package puts real SEV-ES firmware, for the tests.

Tests that need it skip with one reason when it is absent (``.ci/run``
installs the package, so in CI they run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

OVMF_DIR = Path("/usr/share/OVMF")
OVMF_CODE = OVMF_DIR / "OVMF_CODE.fd"
OVMF_VARS = OVMF_DIR / "OVMF_VARS.fd"
ABSENT = "Debian's ovmf package is not installed (apt-get install ovmf)"

needs_ovmf = pytest.mark.skipif(not OVMF_CODE.exists(), reason=f"{OVMF_CODE}: {ABSENT}")
needs_ovmf_vars = pytest.mark.skipif(
    not (OVMF_CODE.exists() and OVMF_VARS.exists()), reason=f"{OVMF_VARS}: {ABSENT}"
)

# How far an OVMF boot may go, in exits rather than seconds (issue 15 item 13):
# Debian's OVMF reaches the shell banner in about 89,000 exits (measured, 71 s
# on an idle core; minutes on a loaded one). Four times that stops a boot that
# lost its way on any machine, and a slow machine never fails a good boot.
OVMF_EXIT_BUDGET = 400_000


class ExitBudget:
    """A tracer sink that stops the run once the guest used ``limit`` exits."""

    def __init__(self, limit: int = OVMF_EXIT_BUDGET) -> None:
        self.limit = limit
        self.exits = 0
        self.hv = None  # set once the hypervisor exists: budget.hv = boot.hv

    def __call__(self, event) -> None:  # type: ignore[no-untyped-def]
        if event.kind != "exit":
            return
        self.exits += 1
        if self.exits == self.limit and self.hv is not None:
            self.hv.stop(f"exit budget of {self.limit} spent")
