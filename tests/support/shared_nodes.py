"""Nodes for shared-tier tests: one agent's lookup path (node cache, shared tier on a real
store, scripted upstream), without the sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cryptography.fernet import Fernet
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import SecretCache
from secrets_agent.lookup.chain import BackendChain, Link
from secrets_agent.lookup.cipher import Cipher
from secrets_agent.lookup.service import RefreshPolicy, SecretService
from secrets_agent.lookup.shared.breaker import Breaker
from secrets_agent.lookup.shared.clients import StoreCluster
from secrets_agent.lookup.shared.sealing import Sealer
from secrets_agent.lookup.shared.store import RedisTier
from secrets_agent.ops.metrics import Metrics
from support.helpers import FakeClock, Script, ScriptedBackend
from support.redis_server import ClusterServers, Store

V = Kind.VARIABLE
KEY = Fernet.generate_key()


class Node:
    """One agent's lookup path: node cache, shared tier on the real store, scripted upstream."""

    def __init__(
        self,
        store: Store,
        script: Script,
        *,
        keys: list[bytes] | None = None,
        lock_wait: float = 5.0,
        breaker_clock: FakeClock | None = None,
        timeout: float = 1.0,
        max_stale: float = 0.0,
        wall: Callable[[], float] = time.time,
        namespace: str = "namespace",
        refresh: RefreshPolicy | None = None,
    ) -> None:
        ScriptedBackend.scripts = {"up": script}
        self.metrics = Metrics()
        self.clock = FakeClock()
        self.breaker_clock = breaker_clock or FakeClock()
        self.cache = SecretCache(
            max_entries=100,
            ttl=lambda k: 60.0,
            negative_ttl=10.0,
            max_stale=max_stale,
            cipher=Cipher([KEY]),
            clock=self.clock,
        )
        self.tier = RedisTier(
            client_for(store),
            Sealer(keys or [KEY], namespace, "test:", wall=wall),
            ttl=lambda k: 60.0,
            negative_ttl=10.0,
            timeout=timeout,
            lock_ttl=30.0,
            lock_wait=lock_wait,
            breaker=Breaker(2, 5.0, self.breaker_clock),
            log_interval=60.0,
            metrics=self.metrics,
            clock=self.breaker_clock,
        )
        self.tier.attach(self.cache.invalidate)
        chain = BackendChain([Link(ScriptedBackend("up", None), {V: None})], self.metrics)
        self.service = SecretService(chain, self.cache, self.metrics, refresh, self.tier)

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def subscribed_pair(store: Store, script: Script) -> tuple[Node, Node]:
    """Two nodes both listening for invalidations (their subscriptions confirmed by the store)."""
    a, b = Node(store, script), Node(store, script)
    await a.tier.start()
    await b.tier.start()
    await wait_for(lambda: subscribers(store) == 2)
    return a, b


async def close(*nodes: Node) -> None:
    for node in nodes:
        await node.tier.close()


def client_for(store: Store) -> Redis | RedisCluster:
    """A client as the agent makes one (plain, no TLS: the build tests cover it)."""
    if isinstance(store, ClusterServers):
        seeds = [ClusterNode("127.0.0.1", n.port) for n in store.nodes]
        username, password = store.nodes[0].user or (None, None)
        return StoreCluster(  # the agent's: its fixes to redis-py's cluster client included
            startup_nodes=seeds,
            require_full_coverage=False,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            username=username,
            password=password,
        )
    username, password = store.user or (None, None)  # a server with an ACL user: as that user
    return Redis.from_url(
        store.url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        username=username,
        password=password,
    )


def subscribers(store: Store) -> int:
    """Subscribers to the invalidation channel (sharded ones live on the channel's node)."""
    if isinstance(store, ClusterServers):
        for node in store.running():
            names = node.command("PUBSUB", "SHARDCHANNELS", "*")
            assert isinstance(names, list)
            if names:
                reply = node.command("PUBSUB", "SHARDNUMSUB", names[0])
                assert isinstance(reply, list)
                return int(reply[1])
        return 0
    channels = store.command("PUBSUB", "CHANNELS", "*")
    assert isinstance(channels, list)
    if not channels:
        return 0
    reply = store.command("PUBSUB", "NUMSUB", channels[0])
    assert isinstance(reply, list)
    return int(reply[1])


async def wait_for(condition: Callable[[], object], seconds: float = 10.0) -> None:
    """Poll a condition (a readiness wait, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
