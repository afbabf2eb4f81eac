"""The benchmark script still runs end to end (tiny sizes; its numbers are not asserted)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import ROOT

pytestmark = pytest.mark.integration

BENCH = ROOT / "bench" / "bench.py"


def test_bench_prints_every_figure_with_its_target() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--small", "--no-vault"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for figure in (
        "cached get_variable p50",
        "agent CPU per cached lookup ÷ Floor A",
        "agent CPU per cached lookup ÷ Floor U",
        "the stretch target",
        "Floor U read by the agent's client",
        "Zipf mix: agent CPU",
        "Zipf mix: p50",
        "client CPU per cached lookup",
        "awaited aget_variable p50",
        "client CPU per awaited lookup",
        "Floor L (least an awaited lookup costs",
        "agent CPU per awaited lookup",
        "concurrent clients",
        "one client, back to back",
        "agent ready after exec",
        "agent RSS after",
        "fresh interpreter",
    ):
        line = next((line for line in out.splitlines() if figure in line), None)
        assert line is not None, f"missing {figure!r} in:\n{out}"
        assert line.rstrip().endswith(("yes", "NO", "-")), line  # a verdict beside a target
    assert "targets hold on" in out


def test_feeds_bench_prints_each_figure_with_its_target() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "feeds.py"), "--small"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for figure in ("aws (", "gcp (", "vault (", "fewer reads with events"):
        line = next((line for line in lines if line.startswith(figure) or figure in line), None)
        assert line is not None, f"missing {figure!r} in:\n{result.stdout}"
        assert line.rstrip().endswith(("yes", "NO", "yes)", "NO)")), line
