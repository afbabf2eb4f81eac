"""``GET /v1/status``: health, cache and the upstream calls made and avoided, priced, against the
real agent (AWS Secrets Manager on moto's server, a scripted backend for failures)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from secrets_agent.backends import registry
from secrets_agent.kinds import Kind
from secrets_agent_client import AgentSecretsBackend
from support.helpers import (
    FakeClock,
    RunningAgent,
    Script,
    ScriptedBackend,
    agent_config,
    body_of,
    demo_files,
    raw_request,
    running_agent,
    status_of,
)
from support.moto_aws import REGION, MotoServer
from support.redis_server import RedisServer

pytestmark = pytest.mark.integration

PER_CALL_SM = 0.05 / 10_000


@pytest.fixture(scope="module")
def aws() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    server.reset()
    yield server
    server.stop()


def sm_backend(aws: MotoServer) -> str:
    return f"""
        [[backends]]
        name = "sm"
        type = "aws_secrets_manager"
        endpoint_url = "{aws.url}"
        region = "{REGION}"
        max_attempts = 1
    """


def status(agent: RunningAgent) -> tuple[int, Any]:
    answer = raw_request(agent.socket_path, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
    return status_of(answer), body_of(answer)


def test_calls_made_and_avoided_are_counted_and_priced(aws: MotoServer, short_tmp: Path) -> None:
    aws.put_secret("airflow/variables/greeting", "hello")
    clock = FakeClock()
    with running_agent(agent_config(short_tmp, backends=sm_backend(aws)), clock) as agent:
        client = AgentSecretsBackend(socket_path=agent.socket_path)
        for _ in range(10):
            assert client.get_variable("greeting") == "hello"  # 1 call, then 9 hits
        for _ in range(3):
            assert client.get_variable("absent") is None  # 1 call, then 2 negative hits
        code, body = status(agent)
        assert code == 200
        [sm] = body["backends"]
        made = sm["upstream_calls"]
        assert made == agent.metric(
            "secrets_agent_upstream_api_calls_total",
            backend="sm",
            operation="GetSecretValue",
            result="ok",
        ) + agent.metric(
            "secrets_agent_upstream_api_calls_total",
            backend="sm",
            operation="GetSecretValue",
            result="not_found",
        )
        assert made == 2 and sm["calls_avoided"] == 11
        assert sm["type"] == "aws_secrets_manager" and sm["price_per_10k_usd"] == 0.05
        assert sm["cost_usd"] == pytest.approx(2 * PER_CALL_SM)
        assert sm["saved_usd"] == pytest.approx(11 * PER_CALL_SM)
        assert (sm["ready"], sm["authenticated"], sm["last_error"]) == (True, True, None)
        assert body["upstream"] == {
            "calls": 2,
            "calls_avoided": 11,
            "cost_usd": pytest.approx(2 * PER_CALL_SM),
            "saved_usd": pytest.approx(11 * PER_CALL_SM),
            "prices_taken": "2026-12-04",
        }
        cache = body["cache"]
        assert (cache["hits"], cache["negative_hits"], cache["misses"]) == (9, 2, 2)
        assert cache["hit_ratio"] == pytest.approx(11 / 13, abs=1e-4)
        assert (cache["entries"], cache["negative_entries"]) == (2, 1)
        assert body["shared_cache"] is None and body["feeds"] == []  # no backend has one
        assert body["ready"] is True and body["version"]
        # The same figures on /metrics.
        saved = agent.metric(
            "secrets_agent_upstream_api_cost_dollars", backend="sm", calls="avoided"
        )
        assert saved == pytest.approx(11 * PER_CALL_SM)
        assert agent.metric("secrets_agent_upstream_api_calls_avoided_total", backend="sm") == 11


def test_prices_follow_the_pricing_table_and_its_overrides(short_tmp: Path) -> None:
    extra = """
        [pricing]
        taken = "2027-01-31"
        aws_ssm_higher_throughput = 0.07
        backends = { local = "aws_ssm_higher_throughput" }
    """
    with running_agent(agent_config(short_tmp, extra=extra)) as agent:
        client = AgentSecretsBackend(socket_path=agent.socket_path)
        for _ in range(4):
            client.get_variable("greeting")  # the demo file backend: 1 read, 3 hits
        _, body = status(agent)
        [local] = body["backends"]
        assert local["price_per_10k_usd"] == 0.07 and local["calls_avoided"] == 3
        assert local["saved_usd"] == pytest.approx(3 * 0.07 / 10_000)
        assert body["upstream"]["prices_taken"] == "2027-01-31"


def test_an_unreachable_upstream_shows_as_last_error_and_stale_answers(
    short_tmp: Path,
) -> None:
    aws = MotoServer()  # its own: this test stops it
    aws.start()
    aws.reset()
    aws.put_secret("airflow/variables/k", "s3cret-value")
    clock = FakeClock()
    extra = "[cache]\nvariable_ttl = 10\n"
    config = agent_config(short_tmp, extra=extra, backends=sm_backend(aws))
    try:
        with running_agent(config, clock) as agent:
            client = AgentSecretsBackend(socket_path=agent.socket_path)
            assert client.get_variable("k") == "s3cret-value"
            aws.stop()
            clock.advance(11)
            assert client.get_variable("k") == "s3cret-value"  # served stale
            _, body = status(agent)
    finally:
        aws.stop()
    assert body["cache"]["stale_served"] == 1
    [sm] = body["backends"]
    assert sm["ready"] is False and sm["last_error"]
    assert sm["calls_avoided"] == 0 and sm["upstream_calls"] >= 2  # the stale answer tried
    assert "s3cret" not in str(body)


def test_only_admins_and_status_uids_may_read_it(short_tmp: Path) -> None:
    with running_agent(agent_config(short_tmp, extra="admin_uids = []")) as agent:
        code, body = status(agent)
        assert (code, body["error"]) == (403, "not_admin")
    extra = f"admin_uids = []\nstatus_uids = [{os.getuid()}, 4242]"
    with running_agent(agent_config(short_tmp, extra=extra)) as agent:
        assert status(agent)[0] == 200


def test_coalesced_lookups_count_as_avoided(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", ScriptedBackend)
    gate = asyncio.Event()
    script = Script(values={(Kind.VARIABLE, "k"): "v"}, gate=gate)
    ScriptedBackend.scripts = {"slow": script}
    backends = '[[backends]]\nname = "slow"\ntype = "scripted"\n'
    with running_agent(agent_config(short_tmp, backends=backends)) as agent:
        service = agent.agent.service

        async def three_at_once() -> list[Any]:
            lookups = [asyncio.ensure_future(service.lookup(Kind.VARIABLE, "k")) for _ in range(3)]
            await script.called.wait()
            await asyncio.sleep(0)  # let the other two join the call in flight
            gate.set()
            return [r.value for r in await asyncio.gather(*lookups)]

        assert agent.call(three_at_once()) == ["v", "v", "v"]
        assert len(script.calls) == 1
        _, body = status(agent)
        assert body["backends"][0]["calls_avoided"] == 2 and body["cache"]["coalesced"] == 2


def test_the_shared_tier_shows_and_its_answers_count_as_avoided(
    store: RedisServer, short_tmp: Path
) -> None:
    # Two agents with the same backend (same files) and keys share entries through the store.
    key_file = short_tmp / "fernet.key"
    key_file.write_text(Fernet.generate_key().decode())
    demo_files(short_tmp)
    shared = f"""
        [encryption]
        key_file = "{key_file}"
        [shared_cache]
        url = "{store.url}"
        [pricing]
        backends = {{ local = "gcp_secret_manager" }}
        [[backends]]
        name = "local"
        type = "file"
        variables_file = "{short_tmp}/variables.json"
    """
    first, second = short_tmp / "a", short_tmp / "b"
    first.mkdir()
    second.mkdir()
    with (
        running_agent(agent_config(first, backends=shared)) as a,
        running_agent(agent_config(second, backends=shared)) as b,
    ):
        assert AgentSecretsBackend(socket_path=a.socket_path).get_variable("greeting") == "hello"
        assert AgentSecretsBackend(socket_path=b.socket_path).get_variable("greeting") == "hello"
        _, body = status(b)
    tier = body["shared_cache"]
    assert tier["available"] is True and (tier["hits"], tier["errors"]) == (1, 0)
    [local] = body["backends"]
    assert local["calls_avoided"] == 1  # b's miss was answered by the store, not the files
    assert local["saved_usd"] == pytest.approx(0.03 / 10_000)


def test_a_reload_keeps_the_counts_and_prices_them_as_the_new_table_says(
    aws: MotoServer, short_tmp: Path
) -> None:
    aws.put_secret("airflow/variables/greeting", "hello")
    config = agent_config(short_tmp, backends=sm_backend(aws))
    path = short_tmp / "agent.toml"
    with running_agent(config, config_path=path) as agent:
        client = AgentSecretsBackend(socket_path=agent.socket_path)
        for _ in range(3):
            assert client.get_variable("greeting") == "hello"  # 1 call, then 2 hits
        path.write_text(path.read_text() + "\n[pricing]\naws_secrets_manager = 0.5\n")
        assert agent.call(agent.agent.reload())
        [sm] = status(agent)[1]["backends"]
        assert (sm["upstream_calls"], sm["calls_avoided"]) == (1, 2)
        assert (sm["cost_usd"], sm["saved_usd"]) == (0.00005, 0.0001)
        for calls, usd in (("made", sm["cost_usd"]), ("avoided", sm["saved_usd"])):
            cost = agent.metric(
                "secrets_agent_upstream_api_cost_dollars", backend="sm", calls=calls
            )
            assert cost == pytest.approx(usd)


@pytest.mark.parametrize(("turned_off", "path"), [("", "compiled"), ("1", "reference")])
def test_it_says_which_code_answers_cached_reads(
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    turned_off: str,
    path: str,
) -> None:
    monkeypatch.setenv("SECRETS_AGENT_NO_EXTENSIONS", turned_off)
    caplog.set_level(logging.INFO, logger="secrets_agent.server.hit")
    with running_agent(agent_config(short_tmp)) as agent:
        assert status(agent)[1]["cache"]["read_path"] == path
    said = [r.getMessage() for r in caplog.records if r.name == "secrets_agent.server.hit"]
    assert len(said) == (path == "reference")
    assert all("SECRETS_AGENT_NO_EXTENSIONS is set" in line for line in said)
