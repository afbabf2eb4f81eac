"""Real Prometheus scrapes the agent; promtool checks its output and the shipped rules."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secrets_agent_client import AgentSecretsBackend
from support import ROOT
from support.bao import free_port
from support.helpers import RunningAgent, agent_config, need, running_agent

pytestmark = pytest.mark.integration

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "airflow-secrets-agent.json"


@pytest.fixture
def agent(short_tmp: Path) -> Iterator[tuple[RunningAgent, int]]:
    port = free_port()
    with running_agent(agent_config(short_tmp, extra=f"[metrics]\nport = {port}\n")) as running:
        yield running, port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def test_promtool_accepts_the_metrics(agent: tuple[RunningAgent, int]) -> None:
    running, port = agent
    AgentSecretsBackend(socket_path=running.socket_path).get_variable("greeting")
    result = subprocess.run(
        [need("promtool", "prometheus"), "check", "metrics"],
        input=scrape(port),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    result = subprocess.run(
        [need("promtool", "prometheus"), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bsecrets_agent_[a-z_]+", text))


def test_rules_and_dashboard_use_only_metrics_the_agent_exports(
    agent: tuple[RunningAgent, int],
) -> None:
    running, port = agent
    AgentSecretsBackend(socket_path=running.socket_path).get_variable("greeting")
    exported = metric_names(scrape(port))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = metric_names(exprs) | metric_names(RULES.read_text())
    # Families with no sample yet (nothing failed or reloaded) are still declared: # HELP.
    # A histogram with no sample yet (no change feed configured) declares its series too.
    declared = exported | {
        n + suffix
        for n in re.findall(r"# HELP (secrets_agent_\w+)", scrape(port))
        for suffix in ("_total", "_bucket", "_count", "_sum")
    }
    assert used - declared == set()


class Prometheus:
    def __init__(self, workdir: Path, target_port: int) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            "scrape_configs:\n  - job_name: airflow-secrets-agent\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        with (workdir / "prometheus.log").open("wb") as log:
            self.process = subprocess.Popen(
                [
                    need("prometheus", "prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                result: list[dict[str, Any]] = json.load(response)["data"]["result"]
                return result
        except OSError:
            return []  # not listening yet

    def wait_for(self, promql: str, expected: float, seconds: float = 90) -> None:
        """Poll Prometheus until ``promql`` evaluates to ``expected`` (scrapes are periodic)."""
        deadline = time.monotonic() + seconds
        while True:
            values = [float(r["value"][1]) for r in self.query(promql)]
            if values == [expected]:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql} = {values}, expected {expected}")
            time.sleep(0.5)  # the scrape interval is 1 s: nothing to gain by asking faster

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def test_prometheus_scrapes_the_agent(agent: tuple[RunningAgent, int], tmp_path: Path) -> None:
    running, port = agent
    client = AgentSecretsBackend(socket_path=running.socket_path)
    for _ in range(3):
        assert client.get_variable("greeting") == "hello"
    assert client.get_conn_value("absent") is None
    prometheus = Prometheus(tmp_path, port)
    try:
        prometheus.wait_for('up{job="airflow-secrets-agent"}', 1)
        prometheus.wait_for('secrets_agent_cache_results_total{kind="variable",result="hit"}', 2)
        prometheus.wait_for('secrets_agent_cache_results_total{kind="variable",result="miss"}', 1)
        prometheus.wait_for(
            'secrets_agent_upstream_requests_total{backend="local",kind="connection",'
            'result="missing"}',
            1,
        )
        prometheus.wait_for('secrets_agent_backend_ready{backend="local"}', 1)
    finally:
        prometheus.stop()
