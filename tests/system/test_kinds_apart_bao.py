"""Nested paths on a real OpenBao: with ``[[access]]`` rules a variable id cannot read a config
value stored under the variables' path (OpenBao's audit device: never asked); without rules the
agent reads what Airflow's VaultBackend reads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.bao import BaoServer, audit_device, audited_reads, vault_backend_toml
from support.helpers import agent_config, body_of, read_over, running_agent, status_of

pytestmark = pytest.mark.integration

DSN = "postgresql://airflow:s3cret-dsn@db/airflow"
NESTED = 'variables_path = "airflow"\nconfig_path = "airflow/config"'
RULES = f"""
[[access]]
uid = {os.getuid()}
connections = ["*"]
variables = ["*"]
"""  # no config: the metadata database's password stays with the operator


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    workdir = tmp_path_factory.mktemp("bao")
    server = BaoServer(workdir / "bao", extra_config=audit_device(workdir / "audit.log"))
    try:
        server.start()
        server.kv_put("airflow/config/sql_alchemy_conn", {"value": DSN})
        server.kv_put("airflow/greeting", {"value": "hello"})
        yield server
    finally:
        server.stop()


def reads_of_the_dsn(bao: BaoServer) -> int:
    log = bao.workdir.parent / "audit.log"
    return audited_reads(log, "secret/data/airflow/config/sql_alchemy_conn")


def test_a_variable_cannot_read_a_config_value_around_the_rules(
    bao: BaoServer, short_tmp: Path
) -> None:
    backends = vault_backend_toml(bao, extra=NESTED) + RULES
    with running_agent(agent_config(short_tmp, backends=backends)) as agent:
        assert status_of(read_over(agent.socket_path, "/v1/config/core/sql_alchemy_conn")) == 403
        before = reads_of_the_dsn(bao)
        for version in ("1.1", "1.0"):
            answer = read_over(agent.socket_path, "/v1/variables/config/sql_alchemy_conn", version)
            assert status_of(answer) == 404 and b"s3cret" not in answer
        assert reads_of_the_dsn(bao) == before  # OpenBao was never asked for it
        assert body_of(read_over(agent.socket_path, "/v1/variables/greeting"))["value"] == "hello"


def test_without_rules_the_variable_reads_it_as_vaultbackend_does(
    bao: BaoServer, short_tmp: Path
) -> None:
    backends = vault_backend_toml(bao, extra=NESTED)
    with running_agent(agent_config(short_tmp, backends=backends)) as agent:
        answer = read_over(agent.socket_path, "/v1/variables/config/sql_alchemy_conn")
        assert body_of(answer)["value"] == DSN
