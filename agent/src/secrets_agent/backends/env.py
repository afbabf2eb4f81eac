"""Backend reading ``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` from the agent's own environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from secrets_agent.backends.base import Backend
from secrets_agent.kinds import Kind, per_kind


@dataclass(frozen=True)
class EnvOptions:
    # Same prefixes as Airflow's EnvironmentVariablesBackend; "" disables the kind.
    connections_prefix: str = "AIRFLOW_CONN_"
    variables_prefix: str = "AIRFLOW_VAR_"
    config_prefix: str = ""

    def prefix(self, kind: Kind) -> str:
        value: str = per_kind(self, kind, "{}_prefix")
        return value


class EnvBackend(Backend):
    type_name = "env"
    Options = EnvOptions
    options: EnvOptions

    def supports(self, kind: Kind) -> bool:
        return bool(self.options.prefix(kind))

    async def fetch(self, kind: Kind, secret_id: str) -> str | None:
        prefix = self.options.prefix(kind)
        if not prefix:
            return None
        # Airflow upper-cases the id; environment reads are in-memory, so no thread is needed.
        return os.environ.get(prefix + secret_id.upper())
