"""The agent with a vault backend end to end: TLS, stale-on-error across a restart, readiness."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from secrets_agent_client import AgentSecretsBackend
from support.bao import BaoServer, persistent_kv2, vault_backend_toml
from support.helpers import (
    FakeClock,
    RunningAgent,
    agent_config,
    body_of,
    raw_request,
    running_agent,
)

pytestmark = pytest.mark.integration


def get(agent: RunningAgent, path: str) -> bytes:
    return raw_request(agent.socket_path, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


@pytest.fixture
def persistent(tmp_path: Path) -> Iterator[BaoServer]:
    with persistent_kv2(tmp_path / "bao") as server:
        yield server


def test_stopped_server_serves_stale_then_fresh_after_restart(
    persistent: BaoServer, short_tmp: Path
) -> None:
    persistent.kv_put("variables/greeting", {"value": "v1"})
    clock = FakeClock()
    config = agent_config(
        short_tmp,
        extra="[cache]\nvariable_ttl = 60\nmax_stale = 600\n",
        backends=vault_backend_toml(persistent, persistent.root_token),
    )
    with running_agent(config, clock) as agent:
        client = AgentSecretsBackend(socket_path=agent.socket_path)
        assert client.get_variable("greeting") == "v1"
        persistent.stop()
        clock.advance(61)
        stale = get(agent, "/v1/variables/greeting")
        assert b"X-Cache: STALE" in stale and body_of(stale)["value"] == "v1"
        assert b"Age: 61" in stale
        missing = get(agent, "/v1/variables/never-cached")
        assert body_of(missing)["error"] == "upstream_unavailable"

        persistent.start()  # same storage, unsealed again: the agent's token is still valid
        persistent.kv_put("variables/greeting", {"value": "v2"})
        assert b"X-Cache: STALE" in get(agent, "/v1/variables/greeting")  # not retried yet
        clock.advance(1)  # past the failure's backoff: the next lookup retries in the background
        assert b"X-Cache: STALE" in get(agent, "/v1/variables/greeting")
        agent.call(agent.agent.service.idle())
        fresh = get(agent, "/v1/variables/greeting")
        assert b"X-Cache: HIT" in fresh and body_of(fresh)["value"] == "v2"
        assert (
            agent.metric(
                "secrets_agent_upstream_requests_total",
                backend="vault",
                kind="variable",
                result="transient",
            )
            == 2
        )


def test_tls_with_a_ca_file_and_refusal_without_it(tmp_path: Path, short_tmp: Path) -> None:
    server = BaoServer(tmp_path / "bao-tls", tls=True)
    server.start()
    try:
        server.kv_put("variables/greeting", {"value": "over tls"})
        good = agent_config(
            short_tmp,
            backends=vault_backend_toml(
                server, server.root_token, extra=f'ca_file = "{server.ca_file}"'
            ),
        )
        with running_agent(good) as agent:
            assert (
                AgentSecretsBackend(socket_path=agent.socket_path).get_variable("greeting")
                == "over tls"
            )
        (short_tmp / "agent.toml").unlink()
        bad = agent_config(short_tmp, backends=vault_backend_toml(server, server.root_token))
        with running_agent(bad) as agent:
            ready = get(agent, "/readyz")
            assert body_of(ready)["ready"] is False
            assert "TLS handshake" in body_of(ready)["backends"]["vault"]["detail"]
            # Auth failures keep the cache serving (stale-on-error), so this is a 503, with why.
            failed = body_of(get(agent, "/v1/variables/greeting"))
            assert failed["error"] == "upstream_unavailable"
            assert "TLS handshake" in failed["detail"]
    finally:
        server.stop()


def test_denied_reaches_airflow_as_access_denied_and_readiness_follows_login(
    tmp_path: Path, short_tmp: Path
) -> None:
    server = BaoServer(tmp_path / "bao")
    server.start()
    try:
        server.api(
            "PUT",
            "/v1/sys/policies/acl/reader",
            {"policy": 'path "secret/data/variables/open" { capabilities = ["read"] }'},
        )
        token = server.api("POST", "/v1/auth/token/create", {"policies": ["reader"], "ttl": "1h"})[
            "auth"
        ]["client_token"]
        server.kv_put("variables/open", {"value": "yes"})
        server.kv_put("variables/closed", {"value": "s3cret"})
        config = agent_config(short_tmp, backends=vault_backend_toml(server, token))
        with running_agent(config) as agent:
            assert body_of(get(agent, "/readyz"))["ready"] is True
            client = AgentSecretsBackend(socket_path=agent.socket_path)
            assert client.get_variable("open") == "yes"
            with pytest.raises(PermissionError, match="upstream_denied") as info:
                client.get_variable("closed")
            assert "s3cret" not in str(info.value)
            assert (
                'secrets_agent_authenticated{backend="vault"} 1.0'
                in get(agent, "/metrics").decode()
            )
    finally:
        server.stop()
    (short_tmp / "agent.toml").unlink()
    config = agent_config(short_tmp, backends=vault_backend_toml(server, "gone"))
    with running_agent(config) as agent:  # Vault is down: the agent starts, but is not ready
        ready = get(agent, "/readyz")
        assert b"503" in ready.split(b"\r\n")[0]
        assert "cannot connect to Vault" in body_of(ready)["backends"]["vault"]["detail"]
