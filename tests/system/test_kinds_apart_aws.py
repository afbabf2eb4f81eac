"""Nested prefixes on Secrets Manager (moto), end to end: with ``[[access]]`` rules a connection
id cannot read a variable's secret (no upstream call, on the lean path and aiohttp's); without
rules the agent reads what the amazon provider reads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from secrets_agent.kinds import Kind
from support.helpers import RunningAgent, agent_config, body_of, read_over, running_agent
from support.helpers import status_of as status
from support.moto_aws import MotoServer

pytestmark = pytest.mark.integration

SECRET = "s3cret-admin-token"
RULES = f"""
[[access]]
uid = {os.getuid()}
connections = ["*"]
variables = ["*"]

[[access]]
everyone = true
effect = "deny"
variables = ["admin_*"]
"""


@pytest.fixture(scope="module")
def aws() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    server.reset()  # moto's state is per process, shared by every server in it
    server.put_secret("airflow/variables/admin_token", SECRET)
    server.put_secret("airflow/variables/public_name", "public")
    server.put_secret("airflow/db", "postgres://u:p@db/main")
    yield server
    server.stop()


def backend(aws: MotoServer, extra: str = "") -> str:
    # The connections prefix holds the variables' (airflow/variables): the layout at issue.
    nested = 'connections_prefix = "airflow"\nkinds = ["connections", "variables"]\n'
    return aws.secrets_manager_toml(nested + extra)  # TOML minds no indentation


def get(agent: RunningAgent, path: str, version: str = "1.1") -> bytes:
    return read_over(agent.socket_path, path, version)


def upstream_calls(agent: RunningAgent) -> float:
    return sum(
        sample.value
        for metric in agent.agent.metrics.registry.collect()
        if metric.name == "secrets_agent_upstream_api_calls"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def test_with_rules_the_connection_route_to_a_variable_is_closed(
    aws: MotoServer, short_tmp: Path
) -> None:
    prefetch = 'prefetch_connections = ["variables/admin_token", "db"]'
    config = agent_config(short_tmp, backends=backend(aws, prefetch) + RULES)
    assert any("answers such connection ids as not found" in w for w in config.warnings)
    with running_agent(config) as agent:
        cache = agent.agent.service.cache
        assert cache.get(Kind.CONNECTION, "db") is not None  # prefetched
        assert cache.get(Kind.CONNECTION, "variables/admin_token") is None  # not kept
        assert status(get(agent, "/v1/variables/admin_token")) == 403
        before = upstream_calls(agent)
        for version in ("1.1", "1.0"):
            answer = get(agent, "/v1/connections/variables/admin_token", version)
            assert status(answer) == 404 and SECRET.encode() not in answer
            refreshed = get(agent, "/v1/connections/variables/admin_token?refresh=true", version)
            assert status(refreshed) == 404 and SECRET.encode() not in refreshed
        assert upstream_calls(agent) == before  # the name was never asked for
        assert body_of(get(agent, "/v1/connections/db"))["value"] == "postgres://u:p@db/main"
        assert body_of(get(agent, "/v1/variables/public_name", "1.0"))["value"] == "public"


def test_without_rules_the_agent_reads_as_the_provider_does(
    aws: MotoServer, short_tmp: Path
) -> None:
    config = agent_config(short_tmp, backends=backend(aws))
    assert any("as Airflow's backend reads it" in w for w in config.warnings)
    with running_agent(config) as agent:
        for version in ("1.1", "1.0"):
            answer = get(agent, "/v1/connections/variables/admin_token", version)
            assert body_of(answer)["value"] == SECRET
