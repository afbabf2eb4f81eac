"""The benchmark script still runs end to end (tiny sizes; its numbers are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench.py"


def test_bench_prints_ratios_against_the_floor() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--lookups", "50", "--clients", "1", "--keys", "50"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "latency ratio to floor (p50)" in result.stdout
    assert "throughput with 1 clients" in result.stdout
    assert "cached entries" in result.stdout
