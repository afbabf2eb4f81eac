"""The tier as the config builds it: TLS with a CA file and an ACL user against a real store; a
wrong password or an untrusted certificate only sends lookups upstream, and is logged without it."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from secrets_agent.config.loader import parse_config
from secrets_agent.config.schema import SharedCacheConfig
from secrets_agent.errors import StartupError
from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import SecretCache
from secrets_agent.lookup.chain import BackendChain, Link
from secrets_agent.lookup.cipher import Cipher
from secrets_agent.lookup.service import SecretService
from secrets_agent.lookup.shared.build import build_tier, chain_identity
from secrets_agent.lookup.shared.clients import store_client
from secrets_agent.lookup.shared.tier import NoSharedTier, SharedTier
from secrets_agent.ops.metrics import Metrics
from support.fleet_stores import ACL
from support.helpers import FakeClock, Script, ScriptedBackend
from support.redis_server import ClusterServers, RedisServer, SentinelServer
from support.shared_nodes import subscribers, wait_for

pytestmark = pytest.mark.integration

V = Kind.VARIABLE
KEY = Fernet.generate_key()
PASSWORD = "store-password-5e1c"
README_ACL = ACL  # the ACL docs/fleet.md documents


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    # The ACL docs/fleet.md documents: only the commands the tier uses, only its prefix.
    server = RedisServer(
        tmp_path_factory.mktemp("tls"), tls=True, user=("agent", PASSWORD), acl=README_ACL
    )
    server.start()
    yield server
    server.stop()


def tier_for(tmp_path: Path, shared: dict[str, Any], metrics: Metrics) -> SharedTier:
    # Bounds for a busy machine (a TLS handshake to each shard can take longer than the
    # defaults there, and the tier would rightly answer from the upstream without the store).
    if shared:
        shared = {"timeout": 5.0, "connect_timeout": 10.0} | shared
    config = parse_config({"shared_cache": shared}, base_dir=tmp_path)
    return build_tier(config, [KEY], metrics)


def service_through(
    tier: SharedTier, metrics: Metrics, values: dict[tuple[Kind, str], str]
) -> SecretService:
    """A node's lookups through ``tier``, over a scripted upstream holding ``values``."""
    ScriptedBackend.scripts = {"up": Script(values=values)}
    chain = BackendChain([Link(ScriptedBackend("up", None), {V: None})], metrics)
    cache = SecretCache(
        max_entries=len(values) + 10,
        ttl=lambda k: 60.0,
        negative_ttl=10.0,
        max_stale=0.0,
        cipher=Cipher([KEY]),
        clock=FakeClock(),
    )
    return SecretService(chain, cache, metrics, shared=tier)


async def lookup_through(tier: SharedTier, metrics: Metrics, *, close: bool = True) -> str | None:
    result = await service_through(tier, metrics, {(V, "k"): "v1"}).lookup(V, "k")
    if close:
        await tier.close()
    return result.value


def store_errors(metrics: Metrics) -> float:
    return sum(
        sample.value
        for family in metrics.registry.collect()
        if family.name == "secrets_agent_shared_cache_errors"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def password_file(tmp_path: Path, password: str) -> str:
    path = tmp_path / "store.pw"
    path.write_text(password + "\n")
    return str(path)


async def test_tls_and_an_acl_user_from_a_password_file(store: RedisServer, tmp_path: Path) -> None:
    store.command("FLUSHALL")
    metrics = Metrics()
    shared = {
        "url": store.url,
        "ca_file": store.ca_file,
        "username": "agent",
        "password_file": password_file(tmp_path, PASSWORD),
    }
    tier = tier_for(tmp_path, shared, metrics)
    await tier.start()
    await wait_for(lambda: subscribers(store) == 1)
    assert await lookup_through(tier, metrics, close=False) == "v1"
    assert len(store.scan_all()) == 1
    tier.invalidate(V, "k")  # unlink by name and publish, under the same ACL
    await wait_for(lambda: store.scan_all() == {})
    await tier.close()
    assert store_errors(metrics) == 0


@pytest.mark.parametrize("problem", ["wrong password", "untrusted certificate"])
async def test_a_store_we_cannot_use_sends_lookups_upstream(
    store: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, problem: str
) -> None:
    store.command("FLUSHALL")
    metrics = Metrics()
    wrong = problem == "wrong password"
    shared = {
        "url": store.url,
        "username": "agent",
        "password": "not-the-" + PASSWORD if wrong else PASSWORD,
    }
    if wrong:
        shared["ca_file"] = store.ca_file
    with caplog.at_level(logging.DEBUG):
        assert await lookup_through(tier_for(tmp_path, shared, metrics), metrics) == "v1"
    assert store.scan_all() == {}
    assert store_errors(metrics) > 0
    assert "shared cache: read failed" in caplog.text
    assert PASSWORD not in caplog.text


def test_no_tier_without_a_url_and_none_under_a_random_key(tmp_path: Path) -> None:
    assert isinstance(tier_for(tmp_path, {}, Metrics()), NoSharedTier)
    config = parse_config({"shared_cache": {"url": "redis://127.0.0.1:1/0"}}, base_dir=tmp_path)
    with pytest.raises(StartupError, match="needs the fleet's Fernet keys"):
        build_tier(config, [], Metrics())


def test_an_unreadable_password_file_is_a_startup_error(tmp_path: Path) -> None:
    shared = {"url": "redis://127.0.0.1:1/0", "password_file": "missing.pw"}
    with pytest.raises(StartupError, match=r"shared_cache\.password_file"):
        tier_for(tmp_path, shared, Metrics())


@pytest.mark.parametrize("text", ["", "\n", "  \n"])
def test_an_empty_password_file_is_a_startup_error(tmp_path: Path, text: str) -> None:
    # A secret mounted before it was filled in: not "no password" (NOAUTH at every call).
    (tmp_path / "empty.pw").write_text(text)
    shared = {"url": "redis://127.0.0.1:1/0", "password_file": "empty.pw"}
    with pytest.raises(StartupError, match=r"shared_cache\.password_file \(.*empty.pw\): empty"):
        tier_for(tmp_path, shared, Metrics())


def test_the_namespace_follows_the_backends(tmp_path: Path) -> None:
    def identity(prefix: str) -> str:
        backend = {"name": "env", "type": "env", "variables_prefix": prefix}
        return chain_identity(parse_config({"backends": [backend]}, base_dir=tmp_path))

    assert identity("AIRFLOW_VAR_") == identity("AIRFLOW_VAR_") != identity("OTHER_")


def test_agents_that_fence_nested_kinds_share_no_entries_with_those_that_do_not(
    tmp_path: Path,
) -> None:
    """Without rules a connection id may cache a variable's secret (lookup/fence.py): agents
    with rules must not read it from the fleet."""

    def identity(connections: str, rules: bool) -> str:
        backend = {"name": "env", "type": "env", "connections_prefix": connections}
        access = [{"everyone": True, "connections": ["*"]}] if rules else []
        return chain_identity(parse_config({"backends": [backend], "access": access}, tmp_path))

    assert identity("AIRFLOW_", rules=True) != identity("AIRFLOW_", rules=False)
    assert identity("AIRFLOW_CONN_", rules=True) == identity("AIRFLOW_CONN_", rules=False)


async def test_a_restarted_store_costs_no_failed_lookup(tmp_path: Path) -> None:
    plain = RedisServer(tmp_path / "redis")
    plain.start()
    try:
        metrics = Metrics()
        tier = tier_for(tmp_path, {"url": plain.url}, metrics)
        service = service_through(tier, metrics, {(V, "a"): "1", (V, "b"): "2"})
        await service.lookup(V, "a")
        plain.stop()
        plain.start()  # the pooled connection is dead: one retry on a new one, not a failure
        await service.lookup(V, "b")
        await tier.close()
        assert len(plain.scan_all()) == 1
        assert store_errors(metrics) == 0
    finally:
        plain.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
async def test_the_master_a_sentinel_names(tmp_path: Path, host: str) -> None:
    """Named by its IPv4 or its IPv6 address (brackets in the URL, none for the client)."""
    if host == "[::1]" and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this host")
    master = RedisServer(tmp_path / "master")
    master.start()
    sentinel = SentinelServer(tmp_path / "sentinel", master)
    try:
        sentinel.start()
        metrics = Metrics()
        url = sentinel.url.replace("127.0.0.1", host)
        tier = tier_for(tmp_path, {"url": url}, metrics)
        assert await lookup_through(tier, metrics) == "v1"
        assert len(master.scan_all()) == 1 and store_errors(metrics) == 0
    finally:
        sentinel.stop()
        master.stop()


async def test_a_replica_sentinel_promotes_is_the_tiers_store_without_a_restart(
    tmp_path: Path,
) -> None:
    """The master dies and Sentinel promotes its replica: lookups go upstream meanwhile (no
    error reaches them), then share again through the new master, found by asking the
    sentinels again, with the tier never rebuilt."""
    master = RedisServer(tmp_path / "master")
    replica = RedisServer(tmp_path / "replica", replica_of=master)
    sentinel = SentinelServer(tmp_path / "sentinel", master, down_after_ms=300)
    tier: SharedTier | None = None
    try:
        master.start()
        replica.start()
        # The replica attached before the sentinel starts: its first INFO finds it.
        wait_for_sync(lambda: b"connected_slaves:1" in info(master, "replication"))
        sentinel.start()
        wait_for_sync(lambda: bool(sentinel.command("SENTINEL", "replicas", sentinel.name)))
        metrics = Metrics()
        tier = tier_for(tmp_path, {"url": sentinel.url, "timeout": 1.0}, metrics)
        service = service_through(tier, metrics, {(V, f"k{i}"): "v" for i in range(999)})
        assert (await service.lookup(V, "k0")).value == "v"
        wait_for_sync(lambda: len(replica.scan_all()) == 1)  # replicated
        master.stop()
        promoted = [b"127.0.0.1", str(replica.port).encode()]
        wait_for_sync(
            lambda: sentinel.command("SENTINEL", "get-master-addr-by-name", "mymaster") == promoted
        )
        for n in range(1, 999):  # every lookup answered, from the upstream while it must
            assert (await service.lookup(V, f"k{n}")).value == "v"
            if len(replica.scan_all()) > 1:
                break  # written through the promoted replica
            await asyncio.sleep(0.05)  # the breaker's probe comes on its own time
        assert len(replica.scan_all()) > 1
        health = tier.health()
        assert health is not None and health.available
    finally:
        if tier is not None:
            await tier.close()
        sentinel.stop()
        replica.stop()
        master.stop()


def info(server: RedisServer, section: str) -> bytes:
    answer = server.command("INFO", section)
    assert isinstance(answer, bytes)
    return answer


def wait_for_sync(condition: Callable[[], bool], limit: float = 60.0) -> None:
    """Until ``condition`` holds (a readiness poll, with a bound for a busy machine)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "not ready in time"
        time.sleep(0.02)


def test_seeds_named_by_ipv6_address_lose_their_brackets() -> None:
    """``[::1]:26379`` in a Sentinel or cluster URL is the address ``::1`` (a resolver knows
    no name ``[::1]``)."""
    sentinel = config_of("redis+sentinel://[::1]:26379,127.0.0.1:26380/mymaster/0")
    _, sentinels = store_client(sentinel)
    hosts = [s.connection_pool.connection_kwargs["host"] for s in sentinels]
    assert hosts == ["::1", "127.0.0.1"]
    cluster, _ = store_client(config_of("redis+cluster://[::1]:7000,[::1]:7001"))
    seeds = cluster.nodes_manager.startup_nodes.values()  # type: ignore[union-attr]
    assert sorted(node.host for node in seeds) == ["::1", "::1"]


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def config_of(url: str) -> SharedCacheConfig:
    shared = parse_config({"shared_cache": {"url": url}}, base_dir=Path("/")).shared_cache
    assert shared is not None
    return shared


async def test_a_cluster_with_tls_and_an_acl_user(tmp_path: Path) -> None:
    cluster = ClusterServers(tmp_path / "cluster", tls=True, user=("agent", PASSWORD), acl=ACL)
    try:
        cluster.start()
        metrics = Metrics()
        shared = {
            "url": cluster.url,
            "ca_file": cluster.ca_file,
            "username": "agent",
            "password_file": password_file(tmp_path, PASSWORD),
        }
        tier = tier_for(tmp_path, shared, metrics)
        await tier.start()
        assert await lookup_through(tier, metrics, close=False) == "v1"
        [name] = cluster.scan_all()
        tier.invalidate(V, "k")  # UNLINK by name and SPUBLISH, under the same ACL
        await wait_for(lambda: cluster.scan_all() == {})
        await tier.close()
        assert store_errors(metrics) == 0
        assert name.startswith(b"airflow-secrets-agent:") and b"{" in name
    finally:
        cluster.stop()


@pytest.mark.parametrize("contents", [None, "not a certificate\n"], ids=["missing", "not-pem"])
def test_a_ca_file_that_cannot_be_loaded_fails_the_start_and_check_config(
    tmp_path: Path, contents: str | None
) -> None:
    from secrets_agent.lookup.shared.clients import check_files, store_client

    ca = tmp_path / "ca.pem"
    if contents is not None:
        ca.write_text(contents)
    table = {"url": "rediss://127.0.0.1:6380/0", "ca_file": str(ca)}
    shared = parse_config({"shared_cache": table}, base_dir=tmp_path).shared_cache
    for check in (check_files, store_client):
        with pytest.raises(StartupError, match=r"^shared_cache\.ca_file \(.*ca\.pem\): "):
            check(shared)
