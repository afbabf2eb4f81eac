"""Runs inside the Airflow venv: ask a provider's backend and the agent the same questions.

Reads a JSON list of groups on stdin, each ``{"provider": {"class", "kwargs"} | null,
"socket": path | null, "queries": [[kind, id, team], ...]}``, and prints one JSON list of
``[provider_answer, agent_answer]`` per group. An answer is ``{"missing": true}``,
``{"error": "<type>"}``, ``{"value": text}`` for a variable or config value, or
``{"fields": {...}}`` for a connection: the fields of the Connection Airflow builds.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import logging
import sys
from typing import Any

FIELDS = ("conn_type", "host", "login", "password", "schema", "port", "extra", "description")


def text(value: Any) -> str:
    """A variable as text: strings as they are, dates ISO 8601, anything else JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return json.dumps(value)


def fields(conn: Any) -> dict[str, Any]:
    result = {name: getattr(conn, name, None) for name in FIELDS}
    extra = result["extra"]
    if isinstance(extra, str) and extra:
        with contextlib.suppress(ValueError):
            result["extra"] = json.loads(extra)
    return {k: v for k, v in result.items() if v not in (None, "")}


def ask(backend: Any, kind: str, secret_id: str, team: str | None) -> dict[str, Any]:
    try:
        if kind == "connection":
            kwargs = {"team_name": team} if team else {}
            conn = backend.get_connection(secret_id, **kwargs)
            return {"missing": True} if conn is None else {"fields": fields(conn)}
        if kind == "variable":
            kwargs = {"team_name": team} if team else {}
            value = backend.get_variable(secret_id, **kwargs)
        else:
            value = backend.get_config(secret_id)
    except Exception as exc:
        return {"error": type(exc).__name__}
    return {"missing": True} if value is None else {"value": text(value)}


def build(spec: dict[str, Any] | None, socket: str | None) -> tuple[Any, Any]:
    provider = agent = None
    if spec is not None:
        module, _, name = spec["class"].rpartition(".")
        provider = getattr(importlib.import_module(module), name)(**spec["kwargs"])
    if socket is not None:
        from secrets_agent_client import AgentSecretsBackend

        agent = AgentSecretsBackend(socket_path=socket, on_unavailable="raise")
    return provider, agent


def main() -> None:
    logging.disable(logging.CRITICAL)  # the providers log secret ids and paths at debug/warning
    results = []
    for group in json.load(sys.stdin):
        provider, agent = build(group.get("provider"), group.get("socket"))
        answers = []
        for kind, secret_id, team in group["queries"]:
            theirs = ask(provider, kind, secret_id, team) if provider else {"error": "none"}
            ours = ask(agent, kind, secret_id, team) if agent else {"error": "not started"}
            answers.append([theirs, ours])
        results.append(answers)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
