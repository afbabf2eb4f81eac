"""Sharded pub/sub on a real cluster follows the invalidation channel's slot: after a
resharding moves it to another primary, invalidations reach the other nodes again."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from secrets_agent.lookup.shared.sealing import Sealer
from support.helpers import Script
from support.redis_server import ClusterServers, RedisServer
from support.shared_nodes import KEY, V, close, subscribed_pair, subscribers, wait_for

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def moved(cluster: ClusterServers, key: str) -> Iterator[RedisServer]:
    """``key``'s slot served by another primary (as a resharding leaves it), then moved back."""
    source = cluster.owner(key)
    target = next(n for n in cluster.nodes if n is not source)
    _move(cluster, key, source, target)
    try:
        yield target
    finally:
        _move(cluster, key, target, source)


def _move(cluster: ClusterServers, key: str, source: RedisServer, target: RedisServer) -> None:
    slot = str(source.command("CLUSTER", "KEYSLOT", key))
    ids = {n.port: n.command("CLUSTER", "MYID") for n in cluster.nodes}
    target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", _text(ids[source.port]))
    source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", _text(ids[target.port]))
    for node in (target, source, *(n for n in cluster.nodes if n not in (source, target))):
        node.command("CLUSTER", "SETSLOT", slot, "NODE", _text(ids[target.port]))
    cluster.wait_ok()
    assert cluster.owner(key) is target


def _text(value: object) -> str:
    assert isinstance(value, bytes)
    return value.decode()


async def test_invalidations_follow_the_channel_to_its_new_shard(
    session_cluster: ClusterServers,
) -> None:
    session_cluster.start()  # the nodes a test killed, if any
    session_cluster.command("FLUSHALL")
    script = Script(values={(V, "k"): "v1"})
    a, b = await subscribed_pair(session_cluster, script)
    [channel] = Sealer([KEY], "namespace", "test:").channels
    with moved(session_cluster, channel) as owner:
        # The store drops the old shard's subscribers; both nodes subscribe on the new one.
        await wait_for(
            lambda: owner.command("PUBSUB", "SHARDNUMSUB", channel) == [channel.encode(), 2]
        )
        await a.service.lookup(V, "k")
        await b.service.lookup(V, "k")
        a.service.invalidate(V, "k")
        await wait_for(lambda: b.cache.get(V, "k") is None)
        assert b.sample("secrets_agent_shared_cache_invalidations_received_total") == 1
    await wait_for(lambda: subscribers(session_cluster) == 2)  # and back again
    await close(a, b)
