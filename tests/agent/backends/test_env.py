"""The embedded env backend: Airflow's AIRFLOW_CONN_/AIRFLOW_VAR_ prefixes."""

from __future__ import annotations

import pytest

from secrets_agent.backends.env import EnvBackend, EnvOptions
from secrets_agent.kinds import Kind

C, V, CFG = Kind.CONNECTION, Kind.VARIABLE, Kind.CONFIG


async def test_env_backend_reads_airflow_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_MY_DB", "postgresql://u:p@h/db")
    monkeypatch.setenv("AIRFLOW_VAR_COLOUR", "blue")
    monkeypatch.setenv("SECRET_CFG_KEY", "x")
    backend = EnvBackend("env", EnvOptions(config_prefix="SECRET_CFG_"))
    assert await backend.fetch(C, "my_db") == "postgresql://u:p@h/db"
    assert await backend.fetch(V, "colour") == "blue"
    assert await backend.fetch(CFG, "key") == "x"
    assert await backend.fetch(V, "absent") is None


async def test_env_backend_kind_disabled_by_empty_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_COLOUR", "blue")
    backend = EnvBackend("env", EnvOptions(variables_prefix=""))
    assert not backend.supports(V)
    assert await backend.fetch(V, "colour") is None
