"""Refresh-now over the socket: a peer that knows its value is outdated gets a fresh read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from secrets_agent_client import AgentSecretsBackend
from support.helpers import (
    FakeClock,
    RunningAgent,
    agent_config,
    body_of,
    raw_request,
    running_agent,
    status_of,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def agent(short_tmp: Path, clock: FakeClock) -> Iterator[RunningAgent]:
    config = agent_config(short_tmp, extra="[cache]\nrefresh_now_interval = 60\n")
    with running_agent(config, clock) as running:
        yield running


def get(agent: RunningAgent, path: str, headers: str = "") -> bytes:
    return raw_request(
        agent.socket_path, f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()
    )


def rotate(agent: RunningAgent, value: str) -> None:
    variables = Path(agent.socket_path).parent / "variables.json"
    variables.write_text(json.dumps({"greeting": value}))


def test_no_cache_header_and_refresh_param_read_the_upstream_at_most_once_per_interval(
    agent: RunningAgent, clock: FakeClock
) -> None:
    assert b"X-Cache: MISS" in get(agent, "/v1/variables/greeting")
    rotate(agent, "rotated-1")
    cached = get(agent, "/v1/variables/greeting")
    assert b"X-Cache: HIT" in cached and body_of(cached)["value"] == "hello"
    fresh = get(agent, "/v1/variables/greeting", "Cache-Control: no-cache\r\n")
    assert b"X-Cache: MISS" in fresh and body_of(fresh)["value"] == "rotated-1"

    rotate(agent, "rotated-2")
    clock.advance(30)
    limited = get(agent, "/v1/variables/greeting?refresh=true")
    assert b"X-Cache: HIT" in limited and body_of(limited)["value"] == "rotated-1"
    clock.advance(31)
    client = AgentSecretsBackend(socket_path=agent.socket_path)
    assert client.get_variable("greeting", refresh=True) == "rotated-2"
    labels = {"kind": "variable", "trigger": "now"}
    assert agent.metric("secrets_agent_refreshes_total", **labels, result="fetched") == 2
    assert agent.metric("secrets_agent_refreshes_total", **labels, result="limited") == 1


def test_refresh_of_an_unknown_id_is_a_404_and_a_bad_flag_a_400(agent: RunningAgent) -> None:
    missing = get(agent, "/v1/variables/absent?refresh=true")
    assert status_of(missing) == 404
    bad = get(agent, "/v1/variables/greeting?refresh=yes")
    assert status_of(bad) == 400 and body_of(bad)["error"] == "invalid_refresh"
