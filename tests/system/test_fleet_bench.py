"""The fleet benchmark still runs end to end (tiny sizes; only its fetch counts are checked)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import ROOT
from support.redis_server import server_binary

pytestmark = pytest.mark.integration

BENCH = ROOT / "bench" / "fleet.py"


def test_fleet_bench_counts_one_fetch_per_key_with_the_shared_cache_and_a_cluster() -> None:
    server_binary()  # the benchmark starts one: skipped (or failed in CI) without it
    result = subprocess.run(
        [sys.executable, str(BENCH), "--keys", "3", "--agents", "1,3", "--samples", "5"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    rows = {
        line.split()[0]: line.split()[1:]
        for line in result.stdout.splitlines()
        if line[:8].strip().isdigit()
    }
    assert rows == {"1": ["1.00", "1.00", "1.00"], "3": ["3.00", "1.00", "1.00"]}
    assert "upstream / shared cache latency (p50)" in result.stdout
    assert "upstream / cluster latency (p50)" in result.stdout
