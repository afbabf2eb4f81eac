"""The agent with AWS backends end to end: rotation, prefetch, stale-on-error, lookup patterns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.helpers import (
    FakeClock,
    RunningAgent,
    agent_config,
    body_of,
    raw_request,
    running_agent,
)
from support.moto_aws import REGION, MotoServer

pytestmark = pytest.mark.integration


@pytest.fixture
def aws() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    server.reset()  # moto's state is per process, shared by every server in it
    yield server
    server.stop()


def sm_toml(aws: MotoServer, extra: str = "") -> str:
    return f"""
        [[backends]]
        name = "sm"
        type = "aws_secrets_manager"
        endpoint_url = "{aws.url}"
        region = "{REGION}"
        max_attempts = 1
        connect_timeout = 1
        read_timeout = 2
        {extra}
    """


def get(agent: RunningAgent, path: str) -> bytes:
    return raw_request(agent.socket_path, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def calls(agent: RunningAgent, operation: str, backend: str = "sm") -> float:
    return agent.metric(
        "secrets_agent_upstream_api_calls_total", backend=backend, operation=operation, result="ok"
    )


def all_calls(agent: RunningAgent, backend: str = "sm") -> float:
    """Upstream calls of every operation and every result (ok, not_found, denied, ...)."""
    return sum(
        sample.value
        for metric in agent.agent.metrics.registry.collect()
        if metric.name == "secrets_agent_upstream_api_calls"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("backend") == backend
    )


def test_rotation_is_seen_after_ttl_and_unchanged_secrets_cost_a_describe(
    aws: MotoServer, short_tmp: Path
) -> None:
    aws.put_secret("airflow/variables/rotating", "v1")
    clock = FakeClock()
    config = agent_config(short_tmp, extra="[cache]\nvariable_ttl = 60\n", backends=sm_toml(aws))
    with running_agent(config, clock) as agent:
        assert body_of(get(agent, "/v1/variables/rotating"))["value"] == "v1"
        clock.advance(61)
        unchanged = get(agent, "/v1/variables/rotating")
        assert b"X-Cache: HIT" in unchanged and body_of(unchanged)["value"] == "v1"
        assert (calls(agent, "GetSecretValue"), calls(agent, "DescribeSecret")) == (1, 1)

        aws.client("secretsmanager").put_secret_value(
            SecretId="airflow/variables/rotating", SecretString="v2"
        )
        clock.advance(30)
        assert body_of(get(agent, "/v1/variables/rotating"))["value"] == "v1"  # still fresh
        clock.advance(31)
        rotated = get(agent, "/v1/variables/rotating")
        assert b"X-Cache: MISS" in rotated and body_of(rotated)["value"] == "v2"
        assert (calls(agent, "GetSecretValue"), calls(agent, "DescribeSecret")) == (2, 2)


def test_prefetched_ids_are_served_without_a_get(aws: MotoServer, short_tmp: Path) -> None:
    for i in range(3):
        aws.put_secret(f"airflow/variables/warm{i}", f"w{i}")
    extra = 'prefetch_variables = ["warm0", "warm1", "warm2"]'
    with running_agent(agent_config(short_tmp, backends=sm_toml(aws, extra))) as agent:
        for i in range(3):
            response = get(agent, f"/v1/variables/warm{i}")
            assert b"X-Cache: HIT" in response and body_of(response)["value"] == f"w{i}"
        assert calls(agent, "GetSecretValue") == 0
        assert calls(agent, "BatchGetSecretValue") == 1


def test_lookup_pattern_keeps_other_ids_away_from_aws(aws: MotoServer, short_tmp: Path) -> None:
    aws.put_secret("airflow/variables/aws_only", "from aws")
    backends = (
        sm_toml(aws, 'variables_lookup_pattern = "^aws_"')
        + """
        [[backends]]
        name = "local"
        type = "file"
        variables_file = "variables.json"
    """
    )
    with running_agent(agent_config(short_tmp, backends=backends)) as agent:
        assert body_of(get(agent, "/v1/variables/aws_only"))["value"] == "from aws"
        assert body_of(get(agent, "/v1/variables/greeting"))["value"] == "hello"
        assert all_calls(agent) == 1  # any result of any operation: "greeting" never went to AWS


def test_stopped_upstream_serves_stale_then_recovers(aws: MotoServer, short_tmp: Path) -> None:
    aws.put_secret("airflow/variables/greeting", "before")
    clock = FakeClock()
    config = agent_config(
        short_tmp, extra="[cache]\nvariable_ttl = 60\nmax_stale = 600\n", backends=sm_toml(aws)
    )
    with running_agent(config, clock) as agent:
        assert body_of(get(agent, "/v1/variables/greeting"))["value"] == "before"
        aws.stop()
        clock.advance(61)
        stale = get(agent, "/v1/variables/greeting")
        assert b"X-Cache: STALE" in stale and body_of(stale)["value"] == "before"
        assert body_of(get(agent, "/v1/variables/other"))["error"] == "upstream_unavailable"
        assert body_of(get(agent, "/readyz"))["backends"]["sm"]["ready"] is False

        restarted = MotoServer(port=aws.port)  # same address; moto's state lives in-process
        restarted.start()
        try:
            restarted.client("secretsmanager").put_secret_value(
                SecretId="airflow/variables/greeting", SecretString="after"
            )
            clock.advance(1)  # past the failure's backoff: this lookup retries in the background
            assert b"X-Cache: STALE" in get(agent, "/v1/variables/greeting")
            agent.call(agent.agent.service.idle())
            fresh = get(agent, "/v1/variables/greeting")
            assert b"X-Cache: HIT" in fresh and body_of(fresh)["value"] == "after"
            assert body_of(get(agent, "/readyz"))["ready"] is True
        finally:
            restarted.stop()
