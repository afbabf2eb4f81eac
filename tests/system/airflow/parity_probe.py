"""Runs inside the Airflow venv: ask a provider's backend and the agent the same questions.

Reads a JSON list of groups on stdin, each ``{"provider": {"class", "kwargs"} | null,
"socket": path | null, "multi_team": bool, "worker": bool, "queries": [[kind, id, team], ...]}``,
and writes to the file named by its argument one JSON list of ``[provider_answer, agent_answer]``
per group. An answer is ``{"missing": true}``, ``{"error": "<type>"}``, ``{"value": text}``
for a variable or config value, or ``{"fields": {...}}`` for a connection: the fields of the
Connection Airflow builds.
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


def connection(backend: Any, conn_id: str, kwargs: dict[str, str], worker: bool = False) -> Any:
    """The Connection Airflow builds from the backend's answer, by one class for both sides;
    ``worker``: as a task's process builds it, by the backend's own ``get_connection`` (the
    task SDK's Connection on Airflow 3, where a provider may build another class itself)."""
    from airflow.models.connection import Connection

    if worker:
        return backend.get_connection(conn_id, **kwargs)
    try:
        value = backend.get_conn_value(conn_id, **kwargs)
    except NotImplementedError:  # LocalFilesystemBackend builds its Connection itself
        return backend.get_connection(conn_id, **kwargs)
    if value is None:
        return None
    if value.strip().startswith("{"):
        return Connection.from_json(value, conn_id=conn_id)
    return Connection(conn_id=conn_id, uri=value)


def ask(
    backend: Any, kind: str, secret_id: str, team: str | None, worker: bool = False
) -> dict[str, Any]:
    try:
        if kind == "connection":
            conn = connection(backend, secret_id, {"team_name": team} if team else {}, worker)
            return {"missing": True} if conn is None else {"fields": fields(conn)}
        if kind == "variable":
            kwargs = {"team_name": team} if team else {}
            value = backend.get_variable(secret_id, **kwargs)
        else:
            value = backend.get_config(secret_id)
    except Exception as exc:
        return {"error": type(exc).__name__}
    return {"missing": True} if value is None else {"value": text(value)}


def point_at_loopback(loopback: dict[str, Any]) -> None:
    """The google provider builds its client with no client options: in this process only,
    give it the suite's gRPC server, its CA, and the credentials the provider loaded."""
    if "key_vault" in loopback:
        _point_azure_at_loopback(loopback["key_vault"])
    found = loopback.get("secret_manager")
    if not found:
        return
    import functools

    import grpc
    from airflow.providers.google.cloud._internal_client.secret_manager_client import (
        _SecretManagerClient,
    )
    from google.cloud.secretmanager_v1 import SecretManagerServiceClient
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
        SecretManagerServiceGrpcTransport,
    )

    with open(found["ca_file"], "rb") as ca:
        roots = ca.read()

    def client(self: Any) -> Any:
        # Unscoped, a service-account key signs its own JWT for the real service's audience;
        # the suite's server accepts the tokens of its token endpoint, which a scope asks for.
        credentials = self.credentials
        if getattr(credentials, "requires_scopes", False):
            credentials = credentials.with_scopes(
                ["https://www.googleapis.com/auth/cloud-platform"]
            )
        transport = SecretManagerServiceGrpcTransport(
            host=found["endpoint"],
            credentials=credentials,
            ssl_channel_credentials=grpc.ssl_channel_credentials(roots),
        )
        return SecretManagerServiceClient(transport=transport)

    patched = functools.cached_property(client)
    patched.__set_name__(_SecretManagerClient, "client")
    _SecretManagerClient.client = patched


def _point_azure_at_loopback(found: dict[str, Any]) -> None:
    """The microsoft-azure provider builds ClientSecretCredential(tenant, client, secret) and
    nothing more: in this process only, give it the suite's token endpoint and CA (the vault's
    own CA and challenge check are ordinary SecretClient kwargs, passed by the provider)."""
    import functools

    from airflow.providers.microsoft.azure.secrets import key_vault
    from azure.identity import ClientSecretCredential

    key_vault.ClientSecretCredential = functools.partial(
        ClientSecretCredential,
        authority=found["authority"],
        disable_instance_discovery=True,
        connection_verify=found["ca_file"],
    )


def build(spec: dict[str, Any] | None, socket: str | None) -> tuple[Any, Any]:
    provider = agent = None
    if spec is not None:
        point_at_loopback(spec.get("loopback", {}))
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
        try:
            from airflow.providers.common.compat.sdk import conf  # the one the providers read
        except ImportError:  # Airflow 2.10: no such module, and no multi-team to set
            pass
        else:
            # The providers read [core] multi_team at lookup time, so each group sets its own.
            conf.set("core", "multi_team", str(group.get("multi_team", False)))
        provider, agent = build(group.get("provider"), group.get("socket"))
        answers = []
        for kind, secret_id, team in group["queries"]:
            worker = bool(group.get("worker"))
            theirs = ask(provider, kind, secret_id, team, worker) if provider else {"error": "none"}
            ours = ask(agent, kind, secret_id, team, worker) if agent else {"error": "not started"}
            answers.append([theirs, ours])
        results.append(answers)
    with open(sys.argv[1], "w") as out:  # stdout carries Airflow's own log lines
        json.dump(results, out)


if __name__ == "__main__":
    main()
