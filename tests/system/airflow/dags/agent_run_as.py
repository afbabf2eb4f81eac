"""Two teams' tasks, each run as its own local user (``run_as_user``), reading through the agent.

Each task records its uid and, for its own team's and the other team's variable and
connection, what it got or the exception it was refused with (Airflow 3).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

try:  # Airflow 3
    from airflow.sdk import DAG, Connection, Variable, task
except ImportError:  # Airflow 2: not used there (run_as_user re-executes differently)
    DAG = None

USERS = {"a": os.environ.get("AGENT_RUN_AS_A"), "b": os.environ.get("AGENT_RUN_AS_B")}


def attempt(read: Callable[[], str]) -> str:
    try:
        return read()
    except Exception as exc:  # the type is what the test checks
        return f"refused: {type(exc).__name__}"


if DAG is not None:
    with DAG("agent_run_as", start_date=datetime(2024, 1, 1), schedule=None, catchup=False):
        for team, other in (("a", "b"), ("b", "a")):

            @task(task_id=f"team_{team}", run_as_user=USERS[team])
            def read(team: str = team, other: str = other) -> None:
                got = {"uid": os.getuid()}
                for whose in (team, other):
                    got[f"var_{whose}"] = attempt(lambda w=whose: Variable.get(f"team_{w}_var"))
                    got[f"conn_{whose}"] = attempt(
                        lambda w=whose: str(Connection.get(f"team_{w}_conn").host)
                    )
                results = Path(os.environ["AGENT_RUN_AS_RESULTS"])
                (results / f"team_{team}.json").write_text(json.dumps(got))

            read()
