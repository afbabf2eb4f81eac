"""Real Airflow 3.3.2 with ``run_as_user``: two teams' tasks, each re-executed by Airflow as its
own local user, read their own team's variable and connection through the agent and are refused
the other team's (``AirflowSecretsBackendAccessDenied``); the audit says who read what."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.airflow_env import SYSTEM_PYTHON, Airflow, execution_api, worker_backend
from support.helpers import agent_config, need, running_agent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.airflow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create users and sudo to them"),
]


@contextlib.contextmanager
def local_users(*teams: str) -> Iterator[list[pwd.struct_passwd]]:
    """Throwaway system users (unique per run, removed at the end), as an operator makes them."""
    names = [f"sa{os.getpid()}{team}" for team in teams]
    made: list[str] = []
    try:
        for name in names:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                check=True,
                capture_output=True,
                timeout=60,
            )
            made.append(name)
        yield [pwd.getpwnam(name) for name in names]
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True, timeout=60)


def data(directory: Path) -> str:
    (directory / "conns.json").write_text(
        json.dumps({f"team_{t}_conn": f"postgresql://u:p@db-{t}.local/app" for t in "ab"})
    )
    (directory / "vars.json").write_text(json.dumps({f"team_{t}_var": f"value-{t}" for t in "ab"}))
    return """
        [[backends]]
        name = "local"
        type = "file"
        connections_file = "conns.json"
        variables_file = "vars.json"
    """


def test_airflow3_run_as_user_reads_its_own_teams_secrets_only(short_tmp: Path) -> None:
    need("sudo", "sudo")
    need("useradd", "passwd")
    with local_users("a", "b") as (user_a, user_b):
        audit = short_tmp / "audit.log"
        rules = "".join(
            f"""
            [[access]]
            user = "{user.pw_name}"
            variables = ["team_{team}_*"]
            connections = ["team_{team}_*"]
            """
            for team, user in (("a", user_a), ("b", user_b))
        )
        listener = f'socket_mode = "0666"\nallowed_uids = [0, {user_a.pw_uid}, {user_b.pw_uid}]\n'
        backends = f'[audit]\noutput = "file"\nfile = "{audit}"\n' + data(short_tmp) + rules
        results = short_tmp / "results"
        results.mkdir()
        results.chmod(0o777)  # the tasks write here as their own users
        airflow = Airflow("3.3.2", short_tmp / "airflow", python=SYSTEM_PYTHON)
        with (
            running_agent(agent_config(short_tmp, extra=listener, backends=backends)) as agent,
            execution_api(airflow) as api_env,
        ):
            env = {
                **api_env,
                **worker_backend(agent.socket_path),
                "AGENT_RUN_AS_A": user_a.pw_name,
                "AGENT_RUN_AS_B": user_b.pw_name,
                "AGENT_RUN_AS_RESULTS": str(results),
            }
            done = [results / f"team_{t}.json" for t in "ab"]
            airflow.dags_test_with_executor("agent_run_as", env, done)
        got = {t: json.loads((results / f"team_{t}.json").read_text()) for t in "ab"}
    refused = "refused: AirflowSecretsBackendAccessDenied"
    assert got["a"] == {
        "uid": user_a.pw_uid,
        "var_a": "value-a",
        "conn_a": "db-a.local",
        "var_b": refused,
        "conn_b": refused,
    }
    assert got["b"] == {
        "uid": user_b.pw_uid,
        "var_b": "value-b",
        "conn_b": "db-b.local",
        "var_a": refused,
        "conn_a": refused,
    }
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    seen = {(e["uid"], e["kind"], e["id"], e["result"] == "denied") for e in lines}
    for team, other, user in (("a", "b", user_a), ("b", "a", user_b)):
        assert (user.pw_uid, "variable", f"team_{team}_var", False) in seen
        assert (user.pw_uid, "connection", f"team_{team}_conn", False) in seen
        assert (user.pw_uid, "variable", f"team_{other}_var", True) in seen
        assert (user.pw_uid, "connection", f"team_{other}_conn", True) in seen
