"""A store that is down, slow, full or holds entries we cannot read only sends lookups to the
upstream: never an error, never a wait per lookup."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from redis.asyncio.cluster import RedisCluster

from secrets_agent.lookup.shared.sealing import Sealer
from support.fleet_stores import ACL, AGENT_USER, PREFIX
from support.helpers import FakeClock, Script
from support.redis_server import ClusterServers, RedisServer, Store
from support.shared_nodes import KEY, Node, V, close, subscribed_pair, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def store(fleet_store: Store) -> Store:
    """Each test against one redis-server and a three-primary cluster."""
    return fleet_store


async def test_an_entry_under_other_keys_or_another_name_is_a_miss(store: RedisServer) -> None:
    script = Script(values={(V, "k"): "v1", (V, "other"): "o1"})
    writer = Node(store, script)
    await writer.service.lookup(V, "k")
    stranger = Node(store, script, keys=[Fernet.generate_key()])
    assert (await stranger.service.lookup(V, "k")).value == "v1"  # other keys: other names
    assert stranger.sample("secrets_agent_shared_cache_results_total", result="miss") == 1
    names = Sealer([KEY], "namespace", "test:")
    # A token under another key at our name, and k's entry copied over other's name (what an
    # attacker with write access could do): each only a miss.
    foreign = Fernet(Fernet.generate_key()).encrypt(b'{"v": "planted"}')
    store.command("SET", names.names(V, "k", "team-a").entry, foreign)
    entry = store.command("GET", names.names(V, "k", None).entry)
    assert isinstance(entry, bytes)
    store.command("SET", names.names(V, "other", None).entry, entry)
    reader = Node(store, script)
    assert (await reader.service.lookup(V, "other")).value == "o1"
    assert (await reader.service.lookup(V, "k", "team-a")).value == "v1"
    assert reader.sample("secrets_agent_shared_cache_results_total", result="unreadable") == 2
    assert len(script.calls) == 4
    for node in (writer, stranger, reader):
        await node.tier.close()


async def test_a_dead_store_costs_a_timeout_per_cooldown_and_one_log_line(
    store: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script(values={(V, f"k{i}"): "v" for i in range(10)})
    breaker_clock = FakeClock()
    node = Node(store, script, breaker_clock=breaker_clock)
    await node.tier.start()
    await node.service.lookup(V, "k0")
    store.stop()
    with caplog.at_level(logging.WARNING, logger="secrets_agent.lookup.shared"):
        for i in range(1, 10):
            assert (await node.service.lookup(V, f"k{i}")).value == "v"
    errors = node.sample("secrets_agent_shared_cache_errors_total", operation="read")
    assert errors == 2  # the breaker opened after two failures: the rest went straight up
    assert len([r for r in caplog.records if "shared cache" in r.getMessage()]) == 1
    assert node.sample("secrets_agent_shared_cache_available") == 0
    health = node.tier.health()
    assert not health.available and "unreachable" in health.detail
    store.start()
    node.cache.invalidate()
    await node.service.lookup(V, "k1")  # still within the cooldown: the store is not asked
    assert store.scan_all() == {}
    breaker_clock.advance(5.0)
    await node.service.lookup(V, "k2")
    assert node.sample("secrets_agent_shared_cache_available") == 1
    assert len(store.scan_all()) == 1
    await node.tier.close()


async def test_a_store_that_stops_answering_costs_one_timeout_per_call(tmp_path: Path) -> None:
    slow = RedisServer(tmp_path)
    slow.start()
    try:
        script = Script(values={(V, f"k{i}"): "v" for i in range(5)})
        node = Node(slow, script, timeout=0.3)
        await node.service.lookup(V, "k0")  # connected and working
        assert slow.process is not None
        os.killpg(slow.process.pid, signal.SIGSTOP)  # alive, connected, silent
        for i in range(1, 5):
            assert (await node.service.lookup(V, f"k{i}")).value == "v"
        # Two timed-out reads opened the breaker; the other lookups did not wait on the store.
        assert node.sample("secrets_agent_shared_cache_errors_total", operation="read") == 2
        assert len(script.calls) == 5
        os.killpg(slow.process.pid, signal.SIGCONT)
        await node.tier.close()
    finally:
        slow.stop()


async def test_a_full_store_leaves_lookups_working(tmp_path: Path) -> None:
    full = RedisServer(tmp_path, maxmemory="1")
    full.start()
    try:
        script = Script(values={(V, "k"): "v1"})
        node = Node(full, script)
        assert (await node.service.lookup(V, "k")).value == "v1"
        assert node.sample("secrets_agent_shared_cache_errors_total", operation="lock") == 1
        await node.tier.close()
    finally:
        full.stop()


async def test_a_store_that_refuses_pub_sub_still_shares_entries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A service or ACL without pub/sub: invalidations reach other nodes only through the TTL,
    # and the entries are shared as before (docs/fleet.md).
    acl = ACL.replace(PREFIX, "test:")  # the nodes' prefix
    for command in ("publish", "spublish", "subscribe", "ssubscribe"):
        acl = acl.replace(f" +{command}", "")
    server = RedisServer(tmp_path, user=AGENT_USER, acl=acl)
    server.start()
    script = Script(values={(V, f"k{i}"): "v" for i in range(5)})
    a, b = Node(server, script), Node(server, script)
    try:
        with caplog.at_level(logging.INFO, logger="secrets_agent.lookup.shared"):
            await a.tier.start()
            await wait_for(
                lambda: a.sample("secrets_agent_shared_cache_errors_total", operation="subscribe")
            )
            for i in range(5):  # a burst of invalidations, each refused its publish
                a.service.invalidate(V, f"k{i}")
            await a.tier._channel.settled()
            assert a.tier.health().available
            for i in range(5):
                assert (await a.service.lookup(V, f"k{i}")).value == "v"
            assert (await b.service.lookup(V, "k4")).value == "v"
        assert b.sample("secrets_agent_shared_cache_results_total", result="hit") == 1
        assert a.sample("secrets_agent_shared_cache_errors_total", operation="publish") == 5
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and "subscribe refused" in lines[0], lines
        assert "using the upstream" not in lines[0]
    finally:
        await close(a, b)
        server.stop()


async def test_a_store_that_refuses_the_reads_get_is_down_not_a_miss(tmp_path: Path) -> None:
    """An ACL that lets the read script run but not its GET is the store failing, not an
    unreadable entry: counted as a read error (which the breaker counts), never a miss."""
    server = RedisServer(
        tmp_path, user=AGENT_USER, acl=ACL.replace(PREFIX, "test:").replace(" +get", "")
    )
    server.start()
    script = Script(values={(V, "k"): "v1"})
    node = Node(server, script)
    try:
        assert (await node.service.lookup(V, "k")).value == "v1"
        assert node.sample("secrets_agent_shared_cache_errors_total", operation="read") == 1
        assert node.sample("secrets_agent_shared_cache_results_total", result="unreadable") == 0
    finally:
        await close(node)
        server.stop()


async def test_a_cluster_named_by_a_plain_url_says_which_url_to_use(
    session_cluster: ClusterServers, caplog: pytest.LogCaptureFixture
) -> None:
    session_cluster.start()
    script = Script(values={(V, f"k{i}"): "v" for i in range(8)})
    node = Node(session_cluster.nodes[0], script)  # redis://, as if it were one server
    with caplog.at_level(logging.WARNING, logger="secrets_agent.lookup.shared"):
        for i in range(8):  # some keys live on another node: MOVED
            assert (await node.service.lookup(V, f"k{i}")).value == "v"
    assert "the store is a cluster: use a redis+cluster:// URL" in caplog.text
    await node.tier.close()


async def test_an_invalidation_reaches_the_others_while_its_entrys_shard_is_down(
    session_cluster: ClusterServers,
) -> None:
    # The entry's primary is gone, the channel's is not: the delete fails, the message must
    # still go (the others then refuse any older copy, wherever it comes back from).
    session_cluster.start()  # the nodes a test killed, if any
    session_cluster.command("FLUSHALL")
    script = Script(values={})
    a, b = await subscribed_pair(session_cluster, script)
    names = Sealer([KEY], "namespace", "test:")
    [channel] = names.channels
    spared = {session_cluster.owner(channel).port, await first_primary(a)}
    dead, secret_id = on_another_node(session_cluster, names, spared)
    script.values[(V, secret_id)] = "v1"
    try:
        await a.service.lookup(V, secret_id)
        await b.service.lookup(V, secret_id)
        dead.stop()
        a.service.invalidate(V, secret_id)
        await wait_for(lambda: b.cache.get(V, secret_id) is None)
        assert a.sample("secrets_agent_shared_cache_errors_total", operation="invalidate") == 1
    finally:
        await close(a, b)
        session_cluster.start()


async def test_a_primary_down_leaves_the_other_slots_shared(
    session_cluster: ClusterServers,
) -> None:
    # The client's first primary (the one redis-py asks for its command table) is down: its
    # slots go upstream, the others stay shared.
    session_cluster.start()
    session_cluster.command("FLUSHALL")
    script = Script(values={})
    a, b = Node(session_cluster, script), Node(session_cluster, script)
    names = Sealer([KEY], "namespace", "test:")
    first = await first_primary(a)
    dead = next(n for n in session_cluster.nodes if n.port == first)
    _, gone = on_another_node(
        session_cluster, names, {n.port for n in session_cluster.nodes} - {dead.port}
    )
    _, kept = on_another_node(session_cluster, names, {dead.port})
    script.values.update({(V, gone): "g", (V, kept): "k"})
    dead.stop()
    try:
        assert (await a.service.lookup(V, gone)).value == "g"  # its slot is down: upstream
        assert (await b.service.lookup(V, kept)).value == "k"
        assert (await a.service.lookup(V, kept)).value == "k"  # shared, from the live slot
        assert a.sample("secrets_agent_shared_cache_results_total", result="hit") == 1
        assert script.calls == [(V, gone), (V, kept)]
    finally:
        await close(a, b)
        session_cluster.start()


async def first_primary(node: Node) -> int:
    """The port of the primary a node's client asks for the command table (its default)."""
    client = node.tier._client
    assert isinstance(client, RedisCluster)
    await client.initialize()  # the slot map (a no-op once known)
    default = client.get_default_node()
    assert default is not None
    return int(default.port)


def on_another_node(
    cluster: ClusterServers, names: Sealer, spared: set[int]
) -> tuple[RedisServer, str]:
    """A node whose port is not in ``spared``, and an id whose entry it serves."""
    for secret_id in (f"k{n}" for n in range(1000)):
        owner = cluster.owner(names.names(V, secret_id, None).entry)
        if owner.port not in spared:
            return owner, secret_id
    raise AssertionError("no id on another node")
