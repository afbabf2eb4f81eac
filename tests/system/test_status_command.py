"""``secrets-agent status`` against the real daemon: the table, ``--json``, and the same figures
on ``/metrics``."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from support.bao import free_port
from support.helpers import AGENT_SCRIPT, agent_process, demo_files, write_config

pytestmark = pytest.mark.integration


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT_SCRIPT, *args], capture_output=True, text=True, timeout=60)


def test_status_table_json_and_metrics_agree(short_tmp: Path) -> None:
    demo_files(short_tmp)
    port = free_port()
    config = write_config(
        short_tmp,
        f"""
        [listener]
        socket_path = "{short_tmp}/agent.sock"
        [metrics]
        port = {port}
        [pricing]
        backends = {{ local = "aws_secrets_manager" }}
        [[backends]]
        name = "local"
        type = "file"
        variables_file = "variables.json"
        """,
    )
    sock = str(short_tmp / "agent.sock")
    with agent_process(config):
        for _ in range(5):
            assert cli("get", "variable", "greeting", "--socket", sock).stdout == "hello\n"
        assert cli("get", "variable", "absent", "--socket", sock).returncode == 1

        table = cli("status", "--socket", sock)
        assert table.returncode == 0, table.stderr
        assert re.search(r"^local\s+file\s+yes\s+yes\s+-\s+0\s+4\s+\$0\.05\s", table.stdout, re.M)
        assert "ready, up " in table.stdout and "hit ratio 66.7%" in table.stdout
        assert "4 avoided ($0.00002 saved)" in table.stdout and "taken 2026-12-04" in table.stdout

        answer = cli("status", "--json", "--socket", sock)
        body = json.loads(answer.stdout)
        assert body["backends"][0]["calls_avoided"] == 4
        assert body["upstream"]["saved_usd"] == pytest.approx(4 * 0.05 / 10_000)

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            scraped = response.read().decode()
        saved = re.search(
            r'^secrets_agent_upstream_api_cost_dollars\{backend="local",calls="avoided"\} (\S+)$',
            scraped,
            re.M,
        )
        assert saved is not None and float(saved[1]) == pytest.approx(4 * 0.05 / 10_000)
        assert 'secrets_agent_upstream_api_calls_avoided_total{backend="local"} 4.0' in scraped


def test_status_when_no_agent_runs(short_tmp: Path) -> None:
    result = cli("status", "--socket", str(short_tmp / "none.sock"))
    assert result.returncode == 69 and "no agent socket" in result.stderr


def test_status_for_someone_not_allowed_says_so(short_tmp: Path) -> None:
    demo_files(short_tmp)
    config = write_config(
        short_tmp,
        f"""
        [listener]
        socket_path = "{short_tmp}/agent.sock"
        admin_uids = []
        [[backends]]
        name = "local"
        type = "file"
        variables_file = "variables.json"
        """,
    )
    with agent_process(config):
        result = cli("status", "--socket", str(short_tmp / "agent.sock"))
    assert result.returncode == 1 and result.stdout == ""
    assert "status refused (403): only admin uids and listener.status_uids" in result.stderr
