"""Three agents, one store (a redis-server, a Sentinel's master, or a three-primary cluster with
TLS and an ACL user), one OpenBao: one upstream read per key per TTL for the fleet, lookups that
survive the store (or a cluster's primary), invalidations that reach every node, nothing
readable stored."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from secrets_agent_client import AgentSecretsBackend
from support.bao import BaoServer, audit_device
from support.bao import audited_reads as kv_reads
from support.fleet_stores import MODES, Deployment, deployment
from support.helpers import (
    AGENT_SCRIPT,
    FakeClock,
    RunningAgent,
    agent_config,
    body_of,
    raw_request,
    running_agent,
    write_config,
)
from support.redis_server import RedisServer

pytestmark = pytest.mark.integration

CANARY_ID, CANARY_VALUE = "canary-id-4d2e", "canary-value-b81f"
TTL = 2.0  # real seconds for the store's entries; the agents' own clocks are moved by the test


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[BaoServer]:
    log = tmp_path / "audit.log"
    server = BaoServer(tmp_path / "bao", extra_config=audit_device(log))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=MODES)
def fleet_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A store of each mode, started once for the module's tests."""
    with deployment(request.param, tmp_path_factory.mktemp(request.param)) as started:
        yield started


@pytest.fixture
def fleet_of(fleet_store: Deployment) -> Deployment:
    """The module's store, whole and empty for this test."""
    fleet_store.reset()
    return fleet_store


def reads(agents: list[RunningAgent]) -> int:
    """Upstream fetches of variables by the whole fleet (each agent counts its own)."""
    total = 0.0
    for agent in agents:
        for family in agent.agent.metrics.registry.collect():
            if family.name == "secrets_agent_upstream_requests":
                total += sum(
                    s.value
                    for s in family.samples
                    if s.name.endswith("_total") and s.labels["kind"] == "variable"
                )
    return int(total)


def audited_reads(bao: BaoServer, secret_id: str) -> int:
    """KV reads of one variable as OpenBao's audit device recorded them (responses)."""
    return kv_reads(bao.workdir.parent / "audit.log", f"secret/data/variables/{secret_id}")


def fleet_toml(bao: BaoServer, store: Deployment, key_file: Path) -> str:
    return f"""
        [cache]
        variable_ttl = {TTL}
        negative_ttl = {TTL}
        [encryption]
        key_file = "{key_file}"
        [shared_cache]
        {store.settings(key_file.parent)}
        timeout = 2.0
        connect_timeout = 2.0
        lock_wait = 5.0
        breaker_failures = 1
        breaker_cooldown = 0.2
        [[backends]]
        name = "vault"
        type = "vault"
        url = "{bao.url}"
        auth_method = "token"
        timeout = 5
        [backends.token]
        token = "{bao.root_token}"
    """


@contextlib.contextmanager
def fleet(
    root: Path, bao: BaoServer, store: Deployment, clock: FakeClock, size: int = 3
) -> Iterator[list[RunningAgent]]:
    key_file = root / "fernet.key"
    key_file.write_text(Fernet.generate_key().decode())
    with contextlib.ExitStack() as stack:
        agents = []
        for index in range(size):
            directory = root / f"n{index}"
            directory.mkdir()
            config = agent_config(directory, backends=fleet_toml(bao, store, key_file))
            agents.append(stack.enter_context(running_agent(config, clock)))
        yield agents


def on_all(
    agents: list[RunningAgent], call: Callable[[AgentSecretsBackend], object]
) -> list[object]:
    """The same lookup on every agent at once, from one thread per agent."""
    with ThreadPoolExecutor(len(agents)) as pool:
        futures = [
            pool.submit(call, AgentSecretsBackend(socket_path=a.socket_path)) for a in agents
        ]
        return [f.result(timeout=60) for f in futures]


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)  # polling for a state change, not timing behaviour


def entries(store: RedisServer) -> list[bytes]:
    return [k for k in store.scan_all() if b":e:" in k]


def invalidate(agent: RunningAgent, body: dict[str, str]) -> int:
    data = json.dumps(body).encode()
    head = f"POST /v1/cache/invalidate HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
    count: int = body_of(raw_request(agent.socket_path, head.encode() + data))["invalidated"]
    return count


def cached_locally(agent: RunningAgent, secret_id: str) -> bool:
    from secrets_agent.kinds import Kind

    async def probe() -> bool:
        return agent.agent.service.cache.get(Kind.VARIABLE, secret_id) is not None

    return agent.call(probe())


def test_three_agents_make_one_upstream_read_per_key_per_ttl(
    bao: BaoServer, fleet_of: Deployment, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = fleet_of
    bao.kv_put(f"variables/{CANARY_ID}", {"value": CANARY_VALUE})
    clock = FakeClock()
    for logger in ("secrets_agent", "redis"):  # ours and the store client's, at every level
        caplog.set_level(logging.DEBUG, logger=logger)
    with fleet(short_tmp, bao, store, clock) as agents:
        assert on_all(agents, lambda c: c.get_variable(CANARY_ID)) == [CANARY_VALUE] * 3
        assert on_all(agents, lambda c: c.get_variable("absent")) == [None] * 3
        assert reads(agents) == 2  # one for the canary, one for the miss, for all three
        assert (audited_reads(bao, CANARY_ID), audited_reads(bao, "absent")) == (1, 1)
        # The TTL passes for the fleet (the store drops the entry) and for each node's cache.
        wait_until(lambda: store.entries() == [])
        clock.advance(TTL + 1)
        assert on_all(agents, lambda c: c.get_variable(CANARY_ID)) == [CANARY_VALUE] * 3
        assert reads(agents) == 3
        assert audited_reads(bao, CANARY_ID) == 2
        avoided = sum(a.metric("secrets_agent_shared_cache_upstream_avoided_total") for a in agents)
        assert avoided == 2 * 2 + 2  # two rounds of the canary and one of the miss: 2 of 3 each
        for name, value in store.data.scan_all().items():
            for canary in (CANARY_ID, CANARY_VALUE, "absent", "variable"):
                assert canary.encode() not in name and canary.encode() not in value
    assert CANARY_VALUE not in caplog.text


def test_invalidation_on_one_agent_reaches_the_others(
    bao: BaoServer, fleet_of: Deployment, short_tmp: Path
) -> None:
    bao.kv_put("variables/greeting", {"value": "v1"})
    with fleet(short_tmp, bao, fleet_of, FakeClock()) as agents:
        wait_until(lambda: fleet_of.subscribers() == 3)
        assert on_all(agents, lambda c: c.get_variable("greeting")) == ["v1"] * 3
        bao.kv_put("variables/greeting", {"value": "v2"})
        assert invalidate(agents[0], {"kind": "variable", "id": "greeting"}) == 1
        wait_until(lambda: not any(cached_locally(a, "greeting") for a in agents))
        assert on_all(agents, lambda c: c.get_variable("greeting")) == ["v2"] * 3
        assert reads(agents) == 2


def test_a_killed_store_leaves_lookups_working_and_is_used_again_once_back(
    bao: BaoServer, fleet_of: Deployment, short_tmp: Path
) -> None:
    """Standalone and Sentinel: the store dies; a cluster: the primary serving the entry."""
    bao.kv_put("variables/key", {"value": "v1"})
    clock = FakeClock()
    with fleet(short_tmp, bao, fleet_of, clock, size=2) as agents:
        assert on_all(agents, lambda c: c.get_variable("key")) == ["v1"] * 2
        assert reads(agents) == 1
        [entry] = fleet_of.entries()
        node = fleet_of.node_of(entry)
        node.stop()
        assert on_all(agents, lambda c: c.get_variable("key")) == ["v1"] * 2  # node caches
        clock.advance(TTL + 1)
        assert on_all(agents, lambda c: c.get_variable("key")) == ["v1"] * 2
        assert reads(agents) == 1 + 2  # no store for the key, no sharing: each node asked
        ready = raw_request(agents[0].socket_path, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert body_of(ready)["ready"] is True
        assert "unreachable" in body_of(ready)["backends"]["[shared_cache]"]["detail"]
        assert agents[0].metric("secrets_agent_shared_cache_available") == 0

        fleet_of.restart(node)  # empty, on the same port (a cluster: it rejoins with its slots)
        for agent in agents:

            def back(agent: RunningAgent = agent) -> bool:
                # A node miss after the breaker's cooldown: it lets one lookup try the store.
                invalidate(agent, {"kind": "variable", "id": "probe"})
                AgentSecretsBackend(socket_path=agent.socket_path).get_variable("probe")
                return agent.metric("secrets_agent_shared_cache_available") == 1

            wait_until(back)
        wait_until(lambda: fleet_of.subscribers() == 2)  # the invalidation channel is back too
        fleet_of.data.command("FLUSHALL")
        clock.advance(TTL + 1)
        before = reads(agents)
        assert on_all(agents, lambda c: c.get_variable("key")) == ["v1"] * 2
        assert reads(agents) == before + 1  # shared again, on the slot that was gone
        invalidate(agents[0], {"kind": "variable", "id": "key"})
        wait_until(lambda: not cached_locally(agents[1], "key"))


def test_an_agent_refuses_to_share_under_a_random_key(store: RedisServer, short_tmp: Path) -> None:
    import subprocess

    config = write_config(
        short_tmp,
        f"""
        [listener]
        socket_path = "{short_tmp}/agent.sock"
        [shared_cache]
        url = "{store.url}"
        """,
    )
    result = subprocess.run(
        [AGENT_SCRIPT, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 78
    assert "shared_cache needs the fleet's Fernet keys" in result.stderr


def test_a_reload_keeps_the_tier_or_replaces_it_whole(store: RedisServer, short_tmp: Path) -> None:
    key_file = short_tmp / "fernet.key"
    key_file.write_text(Fernet.generate_key().decode())

    def shared_toml(prefix: str) -> str:
        return f"""
            [encryption]
            key_file = "{key_file}"
            [shared_cache]
            url = "{store.url}"
            key_prefix = "{prefix}"
        """

    config = agent_config(short_tmp, extra=shared_toml("first:"))
    path = short_tmp / "agent.toml"
    with running_agent(config, FakeClock(), config_path=path) as agent:
        tier = agent.agent.service.shared
        wait_until(lambda: channels(store) == [b"first:"])
        assert agent.call(agent.agent.reload())  # nothing changed: same connections, subscriber
        assert agent.agent.service.shared is tier
        path.write_text(path.read_text().replace('"first:"', '"second:"'))
        assert agent.call(agent.agent.reload())
        assert agent.agent.service.shared is not tier
        wait_until(lambda: channels(store) == [b"second:"])  # the old subscriber is gone
        AgentSecretsBackend(socket_path=agent.socket_path).get_variable("greeting")
        assert [k[:7] for k in entries(store)] == [b"second:"]


def channels(store: RedisServer) -> list[bytes]:
    names = store.command("PUBSUB", "CHANNELS", "*")
    assert isinstance(names, list)
    return sorted({n.split(b":")[0] + b":" for n in names})
