"""Against a real OpenBao: a warm start while the upstream is down, and refresh-ahead."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from secrets_agent.config.schema import AgentConfig
from secrets_agent.errors import StartupError
from support.bao import BaoServer, vault_backend_toml
from support.helpers import (
    AGENT_SCRIPT,
    DEMO_BACKEND,
    FakeClock,
    RunningAgent,
    agent_config,
    body_of,
    raw_request,
    running_agent,
    status_of,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[BaoServer]:
    server = BaoServer(tmp_path / "bao")
    server.start()
    yield server
    server.stop()


def get(agent: RunningAgent, path: str) -> bytes:
    return raw_request(agent.socket_path, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def warm_config(directory: Path, server: BaoServer, keys: str) -> AgentConfig:
    (directory / "fernet.key").write_text(keys)
    extra = f"""
        [cache]
        variable_ttl = 60
        max_stale = 3600
        snapshot_file = "{directory}/cache.snapshot"
        [encryption]
        key_file = "fernet.key"
    """
    return agent_config(directory, extra=extra, backends=vault_backend_toml(server))


def test_an_agent_booting_with_the_upstream_down_serves_the_snapshot_stale(
    bao: BaoServer, short_tmp: Path
) -> None:
    bao.kv_put("variables/greeting", {"value": "s3cret-hello"})
    bao.kv_put("connections/pg", {"conn_uri": "postgresql://u:s3cret@db/app"})
    key = Fernet.generate_key().decode()
    config = warm_config(short_tmp, bao, key)
    with running_agent(config, FakeClock()) as agent:
        assert b"X-Cache: MISS" in get(agent, "/v1/variables/greeting")
        assert status_of(get(agent, "/v1/connections/pg")) == 200
        get(agent, "/v1/variables/absent")  # a miss, never persisted
    snapshot = short_tmp / "cache.snapshot"
    assert snapshot.stat().st_mode & 0o777 == 0o600
    assert b"s3cret" not in snapshot.read_bytes()
    bao.stop()

    clock = FakeClock()
    with running_agent(warm_config(short_tmp, bao, key), clock) as agent:
        stale = get(agent, "/v1/variables/greeting")
        assert b"X-Cache: STALE" in stale and body_of(stale)["value"] == "s3cret-hello"
        assert b"X-Cache: STALE" in get(agent, "/v1/connections/pg")
        assert body_of(get(agent, "/v1/variables/absent"))["error"] == "upstream_unavailable"
        assert agent.metric("secrets_agent_snapshot_loads_total", result="loaded") == 1

    # Keys rotated: the old key gone from the config, the snapshot is ignored, not a crash.
    new_key = Fernet.generate_key().decode()
    with running_agent(warm_config(short_tmp, bao, new_key), clock) as agent:
        assert agent.metric("secrets_agent_snapshot_loads_total", result="ignored") == 1
        assert status_of(get(agent, "/v1/variables/greeting")) == 503

    snapshot.write_bytes(snapshot.read_bytes()[:100])  # truncated (now under the new key)
    with running_agent(warm_config(short_tmp, bao, new_key), clock) as agent:
        assert agent.metric("secrets_agent_snapshot_loads_total", result="ignored") == 1


def test_a_snapshot_with_a_random_key_refuses_to_start(short_tmp: Path) -> None:
    extra = f'[cache]\nsnapshot_file = "{short_tmp}/cache.snapshot"\n'
    with (
        pytest.raises(StartupError, match="configured encryption key"),
        running_agent(agent_config(short_tmp, extra=extra)),
    ):
        pass
    path = write_config(short_tmp, (short_tmp / "agent.toml").read_text(), "copy.toml")
    run = subprocess.run(
        [AGENT_SCRIPT, "run", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 78 and "configured encryption key" in run.stderr


def test_refresh_ahead_keeps_a_hot_key_a_hit_against_openbao(
    bao: BaoServer, short_tmp: Path
) -> None:
    bao.kv_put("variables/greeting", {"value": "v1"})
    clock = FakeClock()
    config = agent_config(
        short_tmp,
        extra="[cache]\nvariable_ttl = 60\nrefresh_jitter = 0\n",
        backends=vault_backend_toml(bao),
    )
    with running_agent(config, clock) as agent:
        assert b"X-Cache: MISS" in get(agent, "/v1/variables/greeting")
        clock.advance(50)  # past 0.8 of the TTL: this read starts a background refresh
        assert b"X-Cache: HIT" in get(agent, "/v1/variables/greeting")
        agent.call(agent.agent.service.idle())
        bao.kv_put("variables/greeting", {"value": "v2"})
        clock.advance(50)  # 100 s after the first fetch: a HIT thanks to the refresh
        hit = get(agent, "/v1/variables/greeting")
        assert b"X-Cache: HIT" in hit and body_of(hit)["value"] == "v1"
        agent.call(agent.agent.service.idle())  # that read started the next refresh
        fresh = get(agent, "/v1/variables/greeting")
        assert b"X-Cache: HIT" in fresh and body_of(fresh)["value"] == "v2"
        labels = {"kind": "variable", "trigger": "ahead"}
        # The vault backend has no cheap version check: each refresh is a read.
        assert agent.metric("secrets_agent_refreshes_total", **labels, result="fetched") == 2
        reads = agent.metric(
            "secrets_agent_upstream_requests_total",
            backend="vault",
            kind="variable",
            result="found",
        )
        assert reads == 3


def test_the_snapshot_is_also_written_periodically_while_serving(short_tmp: Path) -> None:
    (short_tmp / "fernet.key").write_text(Fernet.generate_key().decode())
    extra = f"""
        [cache]
        snapshot_file = "{short_tmp}/cache.snapshot"
        snapshot_interval = 1
        [encryption]
        key_file = "fernet.key"
    """
    with running_agent(agent_config(short_tmp, extra=extra)) as agent:
        assert status_of(get(agent, "/v1/variables/greeting")) == 200
        deadline = time.monotonic() + 60
        while agent.metric("secrets_agent_snapshot_writes_total", result="success") < 1:
            assert time.monotonic() < deadline, "no periodic snapshot within 60 s"
            time.sleep(0.05)  # waiting for the write to happen, not timing it
        assert (short_tmp / "cache.snapshot").stat().st_size > 0
    assert agent.metric("secrets_agent_snapshot_writes_total", result="success") >= 2  # + stop


def test_a_restart_with_a_backend_configured_differently_restores_none_of_its_values(
    short_tmp: Path,
) -> None:
    """The agent writes each backend's configuration into the snapshot and restores a value
    only for the backend configured as it was: ``local`` now reading other files is not the
    ``local`` that fetched it."""
    (short_tmp / "fernet.key").write_text(Fernet.generate_key().decode())
    extra = f"""
        [cache]
        snapshot_file = "{short_tmp}/cache.snapshot"
        [encryption]
        key_file = "fernet.key"
    """
    with running_agent(agent_config(short_tmp, extra=extra)) as agent:
        assert status_of(get(agent, "/v1/variables/greeting")) == 200
    with running_agent(agent_config(short_tmp, extra=extra)) as agent:
        assert len(agent.agent.service.cache) == 1  # the same configuration: restored
    (short_tmp / "other.json").write_text('{"greeting": "elsewhere"}')
    moved = DEMO_BACKEND.replace("variables.json", "other.json")
    with running_agent(agent_config(short_tmp, extra=extra, backends=moved)) as agent:
        assert len(agent.agent.service.cache) == 0
        assert agent.metric("secrets_agent_snapshot_loads_total", result="loaded") == 1
