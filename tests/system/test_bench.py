"""The benchmark script still runs end to end (tiny sizes; its numbers are not asserted)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import ROOT

pytestmark = pytest.mark.integration

BENCH = ROOT / "bench" / "bench.py"


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
