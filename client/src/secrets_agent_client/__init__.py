"""Airflow secrets backend that asks a local airflow-secrets-agent over its Unix socket.

Importing this package is cheap: the backend class (and Airflow's base class) load on first use.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is not imported: it costs more than the whole client

__version__ = "0.1.0"

__all__ = ["DEFAULT_SOCKET_PATH", "AgentSecretsBackend", "AgentUnavailableError"]

DEFAULT_SOCKET_PATH = "/run/airflow-secrets-agent/agent.sock"

if TYPE_CHECKING:
    from typing import Any

    from secrets_agent_client.backend import AgentSecretsBackend, AgentUnavailableError


def __getattr__(name: str) -> Any:
    if name in ("AgentSecretsBackend", "AgentUnavailableError"):
        from secrets_agent_client import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
