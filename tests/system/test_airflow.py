"""Real Airflow 3.3.2 and 2.10.5 resolving connections and variables through the agent."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.airflow_env import CLIENT, Airflow, execution_api, server_backend, worker_backend
from support.bao import BaoServer
from support.helpers import RunningAgent, agent_config, running_agent

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

URI = "postgresql://u:p%40ss@db.local:5432/app?sslmode=require"
JSON_CONN = {
    "conn_type": "http",
    "host": "api.local",
    "login": "svc",
    "password": "pw",
    "port": 8443,
    "extra": {"timeout": 5, "verify": False},
}
ENV = {"AGENT_URI": URI, "AIRFLOW_VAR_ENV_ONLY": "from the environment"}


@pytest.fixture(scope="module")
def airflow3(tmp_path_factory: pytest.TempPathFactory) -> Airflow:
    return Airflow("3.3.2", tmp_path_factory.mktemp("airflow3"))


@pytest.fixture(scope="module")
def airflow2(tmp_path_factory: pytest.TempPathFactory) -> Airflow:
    return Airflow("2.10.5", tmp_path_factory.mktemp("airflow2"))


def data_files(directory: Path) -> str:
    (directory / "conns.json").write_text(json.dumps({"agent_uri": URI, "agent_json": JSON_CONN}))
    (directory / "vars.json").write_text(
        json.dumps({"agent_var": "from the agent", "agent_json_var": {"a": [1, 2]}})
    )
    (directory / "airflow-config.env").write_text(
        "sql_conn_key=sqlite:////nonexistent/from-agent.db\n"
    )
    return """
        [[backends]]
        name = "local"
        type = "file"
        connections_file = "conns.json"
        variables_file = "vars.json"
        config_file = "airflow-config.env"
    """


@pytest.fixture
def agent(short_tmp: Path) -> Iterator[RunningAgent]:
    with running_agent(agent_config(short_tmp, backends=data_files(short_tmp))) as running:
        yield running


def lookups(agent: RunningAgent, kind: str, result: str, backend: str = "local") -> float:
    return agent.metric(
        "secrets_agent_upstream_requests_total", backend=backend, kind=kind, result=result
    )


def dags_test(
    airflow: Airflow, dag: str, results: Path, env: dict[str, str], *extra: str
) -> tuple[subprocess.CompletedProcess[str], Any]:
    run = airflow.run(
        "dags", "test", *extra, dag, env={**ENV, "AGENT_DAG_RESULTS": str(results), **env}
    )
    got = json.loads(results.read_text()) if results.exists() else None
    return run, got


def assert_agent_values(got: Any, via_agent: bool = True) -> None:
    assert got is not None, "the task did not finish"
    assert got["uri"] == got["uri_direct"]  # the trip through the agent changed nothing
    assert got["uri_fields"] == {
        "conn_type": "postgres",
        "host": "db.local",
        "login": "u",
        "password": "p@ss",
        "schema": "app",
        "port": 5432,
        "extra": {"sslmode": "require"},
    }
    assert got["json_fields"] == {**JSON_CONN, "schema": None}
    assert got["var"] == ("from the agent" if via_agent else "from env")
    assert got["var_json"] == {"a": [1, 2]}
    assert got["env_only"] == ["from the environment"] * 2


# -- Airflow 3.3: workers ---------------------------------------------------------------------


def test_airflow3_worker_dags_test(airflow3: Airflow, agent: RunningAgent, short_tmp: Path) -> None:
    run, got = dags_test(
        airflow3, "agent_check", short_tmp / "r.json", worker_backend(agent.socket_path)
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert_agent_values(got)
    assert lookups(agent, "connection", "found") == 2
    assert lookups(agent, "variable", "found") == 2
    # env_only: asked twice, one upstream miss; the second answer came from the negative cache.
    assert lookups(agent, "variable", "missing") == 1
    assert (
        agent.metric("secrets_agent_cache_results_total", kind="variable", result="negative") == 1
    )


def test_airflow3_worker_per_kwarg_environment_form(
    airflow3: Airflow, agent: RunningAgent, short_tmp: Path
) -> None:
    env = {
        "AIRFLOW__WORKERS__SECRETS_BACKEND": CLIENT,
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__SOCKET_PATH": agent.socket_path,
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__TIMEOUT": "5",
    }
    run, got = dags_test(airflow3, "agent_check", short_tmp / "r.json", env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_agent_values(got)
    assert lookups(agent, "variable", "found") == 2


def test_airflow3_task_process_through_executor_and_api_server(
    airflow3: Airflow, agent: RunningAgent, short_tmp: Path
) -> None:
    """The production path: executor → supervisor → task process → Execution API server."""
    results = short_tmp / "r.json"
    with execution_api(airflow3) as api_env:
        env = {**ENV, "AGENT_DAG_RESULTS": str(results), **api_env}
        env.update(worker_backend(agent.socket_path))
        run = airflow3.dags_test_with_executor("agent_check", env, [results])
    got = json.loads(results.read_text())
    assert "Workload finished" in run.output  # a separate task process ran it
    assert_agent_values(got)
    assert lookups(agent, "connection", "found") == 2


# -- Airflow 3.3: scheduler / API server / CLI ------------------------------------------------


def test_airflow3_cli_and_config_secret(airflow3: Airflow, agent: RunningAgent) -> None:
    env = server_backend(agent.socket_path)
    conn = airflow3.run("connections", "get", "agent_uri", "-o", "json", env=env, check=True)
    assert (
        json.loads(conn.stdout)[0]["get_uri"]
        == "postgres://u:p%40ss@db.local:5432/app?sslmode=require"
    )
    var = airflow3.run("variables", "get", "agent_var", env=env, check=True)
    assert var.stdout.strip().splitlines()[-1] == "from the agent"
    # A sensitive option taken from the secrets backend: Airflow calls get_config() for it.
    # (``airflow config get-value`` shows configured values without resolving secrets.)
    secret_env = {**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_SECRET": "sql_conn_key"}
    secret_env = {
        k: v
        for k, v in airflow3.env(secret_env).items()
        if k != "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
    }
    code = "from airflow.configuration import conf; print(conf.get('database', 'sql_alchemy_conn'))"

    def sql_alchemy_conn(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        python = str(airflow3.venv / "bin" / "python")
        return subprocess.run(
            [python, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )

    value = sql_alchemy_conn(secret_env)
    assert value.stdout.strip().splitlines()[-1] == "sqlite:////nonexistent/from-agent.db"
    assert lookups(agent, "config", "found") == 1
    # The agent down: Airflow stops, as with a provider that cannot be reached, instead of
    # taking the option's default (a new SQLite database next to AIRFLOW_HOME).
    failed = sql_alchemy_conn(secret_env | server_backend(agent.socket_path + ".gone"))
    assert failed.returncode != 0 and "sqlite" not in failed.stdout, failed.stdout
    assert "Cannot retrieve config from alternative secrets backend" in failed.stderr
    assert "secrets agent unavailable for a config option" in failed.stderr


# -- Airflow 3.3: failure policies ------------------------------------------------------------


def test_airflow3_upstream_denial_fails_the_task(
    airflow3: Airflow, short_tmp: Path, tmp_path: Path
) -> None:
    bao = BaoServer(tmp_path / "bao")
    bao.start()
    try:
        bao.api(
            "PUT",
            "/v1/sys/policies/acl/airflow",
            {
                "policy": (
                    'path "secret/data/variables/*" { capabilities = ["read"] }\n'
                    'path "secret/data/variables/forbidden" { capabilities = ["deny"] }'
                )
            },
        )
        token = bao.api("POST", "/v1/auth/token/create", {"policies": ["airflow"]})["auth"][
            "client_token"
        ]
        bao.kv_put("variables/forbidden", {"value": "never-served"})
        backends = f"""
            [[backends]]
            name = "vault"
            type = "vault"
            url = "{bao.url}"
            variables_lookup_pattern = "^forbidden$"
            [backends.token]
            token = "{token}"
        """ + data_files(short_tmp)
        config = agent_config(short_tmp, backends=backends)
        with running_agent(config) as agent:
            env = {**worker_backend(agent.socket_path), "AIRFLOW_VAR_FORBIDDEN": "env-fallback"}
            run, got = dags_test(airflow3, "agent_denied", short_tmp / "r.json", env)
    finally:
        bao.stop()
    assert got is None  # neither Vault's value nor the env var fallback reached the task
    output = run.stdout + run.stderr
    assert "AirflowSecretsBackendAccessDenied" in output
    assert "upstream_denied" in output
    assert "never-served" not in output


def agent_down_env(short_tmp: Path) -> dict[str, str]:
    return {
        "AIRFLOW_CONN_AGENT_URI": URI,
        "AIRFLOW_CONN_AGENT_JSON": json.dumps(JSON_CONN),
        "AIRFLOW_VAR_AGENT_VAR": "from env",
        "AIRFLOW_VAR_AGENT_JSON_VAR": json.dumps({"a": [1, 2]}),
    }


def test_airflow3_agent_down_default_falls_through(airflow3: Airflow, short_tmp: Path) -> None:
    env = {**worker_backend(str(short_tmp / "nobody.sock")), **agent_down_env(short_tmp)}
    run, got = dags_test(airflow3, "agent_check", short_tmp / "r.json", env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_agent_values(got, via_agent=False)


def test_airflow3_agent_down_strict_fails_clearly(airflow3: Airflow, short_tmp: Path) -> None:
    env = {
        **worker_backend(str(short_tmp / "nobody.sock"), on_unavailable="raise"),
        **agent_down_env(short_tmp),
    }
    run, got = dags_test(airflow3, "agent_check", short_tmp / "r.json", env)
    assert got is None
    assert "secrets agent unavailable (on_unavailable=raise): no agent socket at" in (
        run.stdout + run.stderr
    )


# -- Airflow 2.10 -----------------------------------------------------------------------------


def test_airflow2_backend_cli_and_dags_test(
    airflow2: Airflow, agent: RunningAgent, short_tmp: Path
) -> None:
    env = server_backend(agent.socket_path, timeout=5)
    conn = airflow2.run("connections", "get", "agent_json", "-o", "json", env=env, check=True)
    got_conn = json.loads(conn.stdout)[0]
    assert got_conn["host"] == "api.local"
    assert got_conn["extra_dejson"] == {"timeout": "5", "verify": "False"}  # the CLI's rendering
    var = airflow2.run("variables", "get", "agent_var", env=env, check=True)
    assert var.stdout.strip().splitlines()[-1] == "from the agent"
    run, got = dags_test(airflow2, "agent_check", short_tmp / "r.json", env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_agent_values(got)
    assert lookups(agent, "variable", "missing") == 1
