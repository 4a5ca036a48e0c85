"""sev-snp-measure as an independent oracle, imported only by the tests that use it.

A test that compares against sev-snp-measure calls ``sev_snp_measure(module)``
first: without the package that test is skipped, and the other tests of its
module still run (a module-level ``importorskip`` skipped them all).
"""

from __future__ import annotations

from types import ModuleType

import pytest


def sev_snp_measure(module: str) -> ModuleType:
    """``sevsnpmeasure.<module>``, or skip the calling test if it is not installed."""
    return pytest.importorskip(f"sevsnpmeasure.{module}")
