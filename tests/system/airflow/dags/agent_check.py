"""Asks for connections and variables the way DAG authors do; writes what it got to a file."""

from __future__ import annotations

import json
import os
from datetime import datetime

try:  # Airflow 3
    from airflow.sdk import DAG, BaseHook, Connection, Variable, task

    get_connection = Connection.get

    def parse_uri(conn_id: str, uri: str) -> Connection:
        return Connection.from_uri(uri, conn_id=conn_id)

except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.decorators import task
    from airflow.hooks.base import BaseHook
    from airflow.models import Connection, Variable

    get_connection = Connection.get_connection_from_secrets

    def parse_uri(conn_id: str, uri: str) -> Connection:
        return Connection(conn_id=conn_id, uri=uri)


def fields(conn: Connection) -> dict[str, object]:
    return {
        "conn_type": conn.conn_type,
        "host": conn.host,
        "login": conn.login,
        "password": conn.password,
        "schema": conn.schema,
        "port": conn.port,
        "extra": conn.extra_dejson,
    }


with DAG("agent_check", start_date=datetime(2024, 1, 1), schedule=None, catchup=False):

    @task
    def check() -> None:
        uri_conn = BaseHook.get_connection("agent_uri")
        json_conn = get_connection("agent_json")
        results = {
            "uri": uri_conn.get_uri(),
            # The same URI parsed by this Airflow directly: the trip must not change it.
            "uri_direct": parse_uri("agent_uri", os.environ["AGENT_URI"]).get_uri(),
            "uri_fields": fields(uri_conn),
            "json_fields": fields(json_conn),
            "var": Variable.get("agent_var"),
            "var_json": Variable.get("agent_json_var", deserialize_json=True),
            "env_only": [Variable.get("env_only"), Variable.get("env_only")],
        }
        with open(os.environ["AGENT_DAG_RESULTS"], "w") as f:
            json.dump(results, f)

    check()
