"""/readyz means "can serve fresh values": a backend whose upstream stopped answering is not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.bao import BaoServer, persistent_kv2, vault_backend_toml
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
def bao(tmp_path: Path) -> Iterator[BaoServer]:
    with persistent_kv2(tmp_path / "bao") as server:
        yield server


def get(agent: RunningAgent, path: str) -> bytes:
    return raw_request(agent.socket_path, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def test_readiness_follows_the_upstream_down_and_up(bao: BaoServer, short_tmp: Path) -> None:
    bao.kv_put("variables/greeting", {"value": "v1"})
    clock = FakeClock()
    backend = vault_backend_toml(bao)
    config = agent_config(short_tmp, extra="[cache]\nvariable_ttl = 60\n", backends=backend)
    with running_agent(config, clock) as agent:
        assert body_of(get(agent, "/v1/variables/greeting"))["value"] == "v1"
        assert status_of(get(agent, "/readyz")) == 200

        bao.stop()
        clock.advance(61)
        assert b"X-Cache: STALE" in get(agent, "/v1/variables/greeting")  # still served
        down = get(agent, "/readyz")
        assert status_of(down) == 503
        detail = body_of(down)["backends"]["vault"]
        assert detail["ready"] is False and "last upstream call failed" in detail["detail"]
        assert 'secrets_agent_backend_ready{backend="vault"} 0.0' in get(agent, "/metrics").decode()

        bao.start()  # same storage, unsealed again
        clock.advance(1)  # past the failure's backoff: this lookup retries in the background
        assert b"X-Cache: STALE" in get(agent, "/v1/variables/greeting")
        agent.call(agent.agent.service.idle())
        fresh = get(agent, "/v1/variables/greeting")
        assert b"X-Cache: HIT" in fresh and body_of(fresh)["value"] == "v1"
        up = get(agent, "/readyz")
        assert status_of(up) == 200 and body_of(up)["ready"] is True
