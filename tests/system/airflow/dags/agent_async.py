"""Awaited lookups (Airflow 3.3+): an async task, and a deferrable operator whose trigger reads a
connection, each recording what it got and whether the agent's client answered natively."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, BaseHook, BaseOperator, Variable, task
from airflow.triggers.base import BaseTrigger, TriggerEvent


def native() -> bool:
    """Whether the agent's client has answered on this event loop (its asyncio transport keeps
    connections per loop), i.e. not through a blocking call on a thread."""
    import asyncio

    from airflow.sdk.execution_time.supervisor import ensure_secrets_backend_loaded

    loop = asyncio.get_running_loop()
    ours = [b for b in ensure_secrets_backend_loaded() if type(b).__name__ == "AgentSecretsBackend"]
    return any(b._async is not None and loop in b._async._idle for b in ours)


def record(name: str, results: dict[str, Any]) -> None:
    with open(f"{os.environ['AGENT_DAG_RESULTS']}.{name}", "w") as f:
        json.dump(results, f)


class AgentConnTrigger(BaseTrigger):
    """Reads a connection the way async hooks do, in the triggerer's event loop."""

    def __init__(self, conn_id: str) -> None:
        super().__init__()
        self.conn_id = conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("agent_async.AgentConnTrigger", {"conn_id": self.conn_id})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        conn = await BaseHook.aget_connection(self.conn_id)
        event = {"host": conn.host, "login": conn.login, "native": native(), "pid": os.getpid()}
        yield TriggerEvent(event)


class AgentDeferringOperator(BaseOperator):
    def execute(self, context: Any) -> None:
        self.defer(trigger=AgentConnTrigger("agent_json"), method_name="resume")

    def resume(self, context: Any, event: dict[str, Any]) -> None:
        record("trigger", event)


with DAG("agent_async", start_date=datetime(2024, 1, 1), schedule=None, catchup=False):

    @task
    async def read_async() -> None:
        results: dict[str, Any] = {}
        if hasattr(Variable, "aget"):  # Airflow 3.4: variables too, ids with "/"
            results["var"] = await Variable.aget("agent_var")
            results["native_var"] = native()  # the variable's lookup came first on this loop
            results["slashed"] = (await BaseHook.aget_connection("agent/slashed")).host
        conn = await BaseHook.aget_connection("agent_uri")
        results.update(uri=conn.get_uri(), native=native())
        record("task", results)

    read_async() >> AgentDeferringOperator(task_id="deferred")
