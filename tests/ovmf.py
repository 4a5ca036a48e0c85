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
