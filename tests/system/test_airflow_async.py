"""Real Airflow awaiting the client: an async task and a deferrable operator's trigger in 3.3.2,
``Variable.aget`` and connection ids with ``/`` in 3.4.0b2."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from support.airflow_env import DAGS, Airflow, worker_backend
from support.bao import free_port
from support.helpers import RunningAgent, agent_config, running_agent

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

CONNECTIONS = {
    "agent_uri": "postgresql://u:pw@db.local:5432/app",
    "agent_json": {"conn_type": "http", "host": "api.local", "login": "svc"},
    "agent/slashed": {"conn_type": "http", "host": "slashed.local"},
}


@pytest.fixture(scope="module")
def airflow33(tmp_path_factory: pytest.TempPathFactory) -> Airflow:
    return Airflow("3.3.2", tmp_path_factory.mktemp("airflow33"))


@pytest.fixture(scope="module")
def airflow34(tmp_path_factory: pytest.TempPathFactory) -> Airflow:
    return Airflow("3.4.0b2", tmp_path_factory.mktemp("airflow34"))


@pytest.fixture
def agent(short_tmp: Path) -> Iterator[RunningAgent]:
    (short_tmp / "conns.json").write_text(json.dumps(CONNECTIONS))
    (short_tmp / "vars.json").write_text(json.dumps({"agent_var": "from the agent"}))
    backends = """
        [[backends]]
        name = "local"
        type = "file"
        connections_file = "conns.json"
        variables_file = "vars.json"
    """
    with running_agent(agent_config(short_tmp, backends=backends)) as running:
        yield running


def run_dag(airflow: Airflow, agent: RunningAgent, results: Path) -> dict[str, Any]:
    env = {"AGENT_DAG_RESULTS": str(results), **worker_backend(agent.socket_path)}
    run = airflow.run("dags", "test", "agent_async", env=env, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    got = {}
    for part in ("task", "trigger"):
        path = results.with_name(f"{results.name}.{part}")
        assert path.exists(), f"{part} did not finish:\n{run.stderr[-3000:]}"
        got[part] = json.loads(path.read_text())
    return got


def run_dag_with_executor(airflow: Airflow, tmp: Path, env: dict[str, str]) -> dict[str, Any]:
    """``dags test --use-executor`` until both tasks have written what they got."""
    results = tmp / "r.json"
    paths = [results.with_name(f"{results.name}.{part}") for part in ("task", "trigger")]
    airflow.dags_test_with_executor(
        "agent_async", {**env, "AGENT_DAG_RESULTS": str(results)}, paths
    )
    return {path.suffix[1:]: json.loads(path.read_text()) for path in paths}


def found(agent: RunningAgent, kind: str) -> float:
    return agent.metric(
        "secrets_agent_upstream_requests_total", backend="local", kind=kind, result="found"
    )


def test_airflow33_async_task_and_a_trigger_in_the_triggerer_await_the_client(
    airflow33: Airflow, agent: RunningAgent, short_tmp: Path
) -> None:
    """The production path: executor, task process, and a real ``airflow triggerer`` running
    the deferred task's trigger; both the async task and the trigger await the client."""
    port = free_port()
    env = {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "loopback-test-jwt-secret-0123456789",
        # The triggerer imports trigger classes by module path, as from an installed package.
        "PYTHONPATH": str(DAGS),
        **worker_backend(agent.socket_path),
    }
    with (
        airflow_process(
            airflow33,
            env,
            short_tmp / "api.log",
            "api-server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ),
        # No log server: it would listen on every interface, on a fixed port.
        airflow_process(
            airflow33, env, short_tmp / "triggerer.log", "triggerer", "--skip-serve-logs"
        ) as triggerer,
    ):
        wait_until_up(f"http://127.0.0.1:{port}/execution/health")
        try:
            got = run_dag_with_executor(airflow33, short_tmp, env)
        except AssertionError as exc:
            log = (short_tmp / "triggerer.log").read_text(errors="replace")[-6000:]
            raise AssertionError(f"{exc}\n--- triggerer:\n{log}") from None
        # The trigger ran in the triggerer's trigger runner (its child, in its process group).
        assert os.getpgid(got["trigger"]["pid"]) == triggerer.pid
    trigger = {k: v for k, v in got["trigger"].items() if k != "pid"}
    assert trigger == {"host": "api.local", "login": "svc", "native": True}
    assert "db.local" in got["task"]["uri"] and got["task"]["native"] is True
    assert found(agent, "connection") == 2


@contextlib.contextmanager
def airflow_process(
    airflow: Airflow, env: dict[str, str], log: Path, *args: str
) -> Iterator[Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(airflow.venv / "bin" / "airflow"), *args],
            env=airflow.env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group may have ended by itself
            os.killpg(process.pid, signal.SIGTERM)  # the process and the children it started
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)


def wait_until_up(url: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not come up"
            time.sleep(0.5)  # readiness polling


def test_airflow34_awaits_variables_and_takes_ids_with_a_slash(
    airflow34: Airflow, agent: RunningAgent, short_tmp: Path
) -> None:
    got = run_dag(airflow34, agent, short_tmp / "r.json")
    task = got["task"]
    assert (task["var"], task["native_var"]) == ("from the agent", True)
    assert task["slashed"] == "slashed.local" and task["native"] is True
    assert got["trigger"]["native"] is True
    assert found(agent, "variable") == 1 and found(agent, "connection") == 3
