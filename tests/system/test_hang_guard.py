"""The suite's hang guard (``conftest.HANG_SECONDS``): a test that hangs fails the run with
every thread's stack, instead of holding CI to its hour."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("hang_probe.py")


def test_a_hung_test_is_interrupted_and_its_stacks_reported() -> None:
    env = {**os.environ, "SECRETS_AGENT_TEST_HANG": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PROBE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "hang_probe.py::test_waits_forever ran past 2 s" in out
    assert "hung test" in out
    assert 'File "' in out  # the stacks themselves
    assert "test_waits_forever" in out.split("hung test", 1)[1]
