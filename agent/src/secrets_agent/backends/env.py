"""Backend reading ``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` from the agent's own environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from secrets_agent.backends.base import Backend
from secrets_agent.backends.namespaces import Naming
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

    def name_for(self, kind: Kind, secret_id: str) -> str | None:
        """The variable read for ``secret_id``: Airflow upper-cases the id; None: kind off."""
        prefix = self.prefix(kind)
        return prefix + secret_id.upper() if prefix else None

    def naming(self) -> Naming:
        return Naming(
            lambda kind, secret_id, team: None if team else self.name_for(kind, secret_id),
            remedy='give each kind a prefix that does not start another\'s, or set one to ""',
        )


class EnvBackend(Backend):
    type_name = "env"
    Options = EnvOptions
    options: EnvOptions

    def supports(self, kind: Kind) -> bool:
        return bool(self.options.prefix(kind))

    async def fetch(self, kind: Kind, secret_id: str) -> str | None:
        name = self.options.name_for(kind, secret_id)
        # Environment reads are in-memory, so no thread is needed.
        return None if name is None else os.environ.get(name)
