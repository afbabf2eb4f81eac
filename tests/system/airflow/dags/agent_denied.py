"""Asks for a variable the upstream manager denies: the task must fail, not fall through."""

from __future__ import annotations

import os
from datetime import datetime

try:  # Airflow 3
    from airflow.sdk import DAG, Variable, task
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models import Variable

with DAG("agent_denied", start_date=datetime(2024, 1, 1), schedule=None, catchup=False):

    @task
    def read_forbidden() -> None:
        value = Variable.get("forbidden")
        with open(os.environ["AGENT_DAG_RESULTS"], "w") as f:
            f.write(value)

    read_forbidden()
