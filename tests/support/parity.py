"""Differential tests: an Airflow provider's backend and the agent answer the same lookups.

Both sides are asked from one process in the real Airflow 3.3.2 venv
(``tests/system/airflow/parity_probe.py``): the provider's backend directly, the agent through
the real client over its socket, so both answers become the Connection Airflow builds.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from support import ROOT
from support.airflow_env import ensure_venv
from support.helpers import running_agent

if TYPE_CHECKING:
    from secrets_agent.config.schema import AgentConfig

PROBE = ROOT / "tests" / "system" / "airflow" / "parity_probe.py"
AIRFLOW = "3.3.2"
Answer = dict[str, Any]
Query = tuple[str, str, str | None]  # kind, id, team


TEAMS = ("team_a", "team_b", None)


def q(kind: str, *ids: str) -> list[Query]:
    return [(kind, i, None) for i in ids]


def tq(kind: str, secret_id: str, *teams: str | None) -> list[Query]:
    return [(kind, secret_id, team) for team in teams]


@dataclass
class KwargsSetup:
    """One option set as the provider's kwargs, and the ids whose answers differ as listed."""

    name: str
    queries: list[Query]
    kwargs: dict[str, Any] = field(default_factory=dict)
    multi_team: bool = False
    differs: dict[str, str] = field(default_factory=dict)  # id → listed difference

    def allowed(self) -> dict[int, str]:
        return {i: self.differs[q[1]] for i, q in enumerate(self.queries) if q[1] in self.differs}


@dataclass
class Group:
    """One provider configuration and one agent socket, asked the same queries."""

    provider_class: str
    provider_kwargs: dict[str, Any]
    socket: str | None
    queries: list[Query]
    multi_team: bool = False  # Airflow's [core] multi_team for the provider
    # Where the probe points a provider that cannot be configured to reach loopback (the
    # google provider): {"secret_manager": {"endpoint": "127.0.0.1:port", "ca_file": path}}.
    loopback: dict[str, Any] = field(default_factory=dict)
    # Connections built as a task's process builds them (the backend's own get_connection:
    # the task SDK's Connection on Airflow 3), not by one class for both sides.
    worker: bool = False
    answers: list[tuple[Answer, Answer]] = field(default_factory=list)

    def spec(self) -> dict[str, Any]:
        return {
            "provider": {
                "class": self.provider_class,
                "kwargs": self.provider_kwargs,
                "loopback": self.loopback,
            },
            "socket": self.socket,
            "multi_team": self.multi_team,
            "worker": self.worker,
            "queries": [list(q) for q in self.queries],
        }


@functools.cache
def _venv(version: str = AIRFLOW) -> Path:
    return ensure_venv(version)  # once per test session: it reinstalls the client each time


def ask_both(
    groups: list[Group], env: dict[str, str] | None = None, airflow: str = AIRFLOW
) -> None:
    """Fill each group's ``answers``: (provider's, agent's) per query, in order, asked in the
    ``airflow`` version's venv."""
    venv = _venv(airflow)
    with tempfile.TemporaryDirectory(prefix="af-") as home:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
        base.update(
            {
                "AIRFLOW_HOME": home,
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
                "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
                **(env or {}),
            }
        )
        result = subprocess.run(
            [str(venv / "bin" / "python"), str(PROBE), str(Path(home) / "answers.json")],
            input=json.dumps([g.spec() for g in groups]),
            capture_output=True,
            text=True,
            env=base,
            timeout=600,
            cwd=home,
            start_new_session=True,
        )
        if result.returncode != 0:
            raise AssertionError(f"parity probe failed:\n{result.stderr[-4000:]}")
        answered = json.loads((Path(home) / "answers.json").read_text())
    for group, answers in zip(groups, answered, strict=True):
        group.answers = [(theirs, ours) for theirs, ours in answers]


def outcome(answer: Answer) -> str:
    """found / missing / error: what the caller can tell apart."""
    if "error" in answer:
        return "error"
    return "missing" if answer.get("missing") else "found"


def mismatches(group: Group, allowed: dict[int, str] | None = None) -> list[str]:
    """Queries whose answers differ, except those ``allowed`` (index → listed difference)."""
    problems = []
    for index, ((kind, secret_id, team), (theirs, ours)) in enumerate(
        zip(group.queries, group.answers, strict=True)
    ):
        same = outcome(theirs) == outcome(ours) and (outcome(ours) == "error" or theirs == ours)
        if index in (allowed or {}):
            if same:
                problems.append(f"{kind} {secret_id!r} (team {team}): expected a difference")
            continue
        if not same:
            problems.append(
                f"{kind} {secret_id!r} (team {team}): provider {theirs} vs agent {ours}"
            )
    return problems


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def migrated(
    directory: Path,
    provider_class: str,
    kwargs: dict[str, Any],
    multi_team: bool = False,
    additions: dict[str, Any] | None = None,
) -> AgentConfig:
    """What ``secrets-agent migrate`` writes for the provider's kwargs, serving on
    ``directory/agent.sock``: the agent side of a differential test, mapped by the command.
    ``additions``: the agent's own options appended to its table (loopback endpoints, CAs)."""
    from secrets_agent.config.loader import load_config
    from secrets_agent.migrate.command import Request, run
    from secrets_agent.migrate.render import key, value

    env = {
        "AIRFLOW_HOME": str(directory),
        "AIRFLOW__SECRETS__BACKEND": provider_class,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs),
        "AIRFLOW__CORE__MULTI_TEAM": str(multi_team),
    }
    output, out, err = directory / "migrated", io.StringIO(), io.StringIO()
    request = Request(output=output, socket_path=str(directory / "agent.sock"))
    assert run(request, env, out, err) == 0, err.getvalue()
    config = output / "agent.toml"
    with config.open("a", encoding="utf-8") as table:  # the [[backends]] table is the last
        table.writelines(f"{key(k)} = {value(v)}\n" for k, v in (additions or {}).items())
    return load_config(config)


def migrated_mismatches(
    tmp: Path,
    provider_class: str,
    setups: list[KwargsSetup],
    base: dict[str, Any],
    additions: dict[str, Any],
    loopback: dict[str, Any],
) -> list[str]:
    """Each setup's kwargs (over ``base``) run through ``migrate`` and an agent started on what
    it wrote, asked beside the provider: every answer that differs and is not listed."""
    groups = []
    with contextlib.ExitStack() as stack:
        for index, setup in enumerate(setups):
            directory = tmp / str(index)
            directory.mkdir()
            kwargs = base | setup.kwargs
            config = migrated(directory, provider_class, kwargs, setup.multi_team, additions)
            agent = stack.enter_context(running_agent(config))
            groups.append(
                Group(
                    provider_class,
                    kwargs,
                    agent.socket_path,
                    setup.queries,
                    multi_team=setup.multi_team,
                    loopback=loopback,
                )
            )
        ask_both(groups)
    return [
        f"{setup.name}: {problem}"
        for setup, group in zip(setups, groups, strict=True)
        for problem in mismatches(group, setup.allowed())
    ]
