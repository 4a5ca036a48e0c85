"""Timing helpers shared by the benchmarks: best-of-N wall time, ratio tables."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    """Best wall-clock seconds of ``repeat`` calls (the least disturbed run)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def report(title: str, rows: list[dict[str, object]]) -> None:
    """Print a readable table, then the same rows as one JSON line."""
    print(f"# {title}")
    for row in rows:
        cells = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
        print("  " + "  ".join(cells))
    print(json.dumps({"benchmark": title, "rows": rows}))
    sys.stdout.flush()
