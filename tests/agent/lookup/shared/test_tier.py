"""The shared tier against a real redis-server: nodes share one upstream read, and a store that
is down, full or written under other keys never turns into a lookup error."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from redis.asyncio import Redis

from secrets_agent.errors import TransientError
from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import SecretCache
from secrets_agent.lookup.chain import BackendChain, Link
from secrets_agent.lookup.cipher import Cipher
from secrets_agent.lookup.service import CacheState, SecretService
from secrets_agent.lookup.shared.breaker import Breaker
from secrets_agent.lookup.shared.sealing import Sealer
from secrets_agent.lookup.shared.store import RedisTier
from secrets_agent.ops.metrics import Metrics
from support.helpers import FakeClock, Script, ScriptedBackend
from support.redis_server import RedisServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("redis-server"), reason="needs Debian's redis-server"),
]

V = Kind.VARIABLE
KEY = Fernet.generate_key()
CANARY_ID, CANARY_VALUE = "canary-id-7f3a", "canary-value-91bc"


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def store(module_store: RedisServer) -> RedisServer:
    if module_store.process is None:
        module_store.start()
    module_store.command("FLUSHALL")
    return module_store


class Node:
    """One agent's lookup path: node cache, shared tier on the real store, scripted upstream."""

    def __init__(
        self,
        store: RedisServer,
        script: Script,
        *,
        keys: list[bytes] | None = None,
        lock_wait: float = 5.0,
        breaker_clock: FakeClock | None = None,
        timeout: float = 1.0,
        max_stale: float = 0.0,
        wall: Callable[[], float] = time.time,
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
            Redis.from_url(store.url, socket_timeout=1.0, socket_connect_timeout=1.0),
            Sealer(keys or [KEY], "namespace", "test:", wall=wall),
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
        self.service = SecretService(chain, self.cache, self.metrics, self.tier)

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_second_node_is_served_from_the_shared_entry(store: RedisServer) -> None:
    script = Script(values={(V, "k"): "v1"})
    a, b = Node(store, script), Node(store, script)
    first = await a.service.lookup(V, "k")
    second = await b.service.lookup(V, "k")
    assert (first.value, second.value, second.state) == ("v1", "v1", CacheState.MISS)
    assert len(script.calls) == 1
    assert b.sample("secrets_agent_shared_cache_results_total", result="hit") == 1
    assert b.sample("secrets_agent_shared_cache_upstream_avoided_total") == 1
    assert a.sample("secrets_agent_shared_cache_results_total", result="miss") == 1
    # Written with the kind's TTL, and read back with what remains of it.
    ttl = store.command("PTTL", *[k for k in store.scan_all() if b":e:" in k])
    assert isinstance(ttl, int) and 50_000 < ttl <= 60_000
    await close(a, b)


async def test_an_expired_value_is_refreshed_through_the_store_not_revalidated(
    store: RedisServer,
) -> None:
    script = Script(values={(V, "k"): "v1"}, versions={(V, "k"): "version-1"})
    a, b = Node(store, script, max_stale=600), Node(store, script)
    await a.service.lookup(V, "k")
    a.clock.advance(61)  # a's copy expired; the store's entry (b's by then) is still fresh
    await b.service.lookup(V, "k")
    assert (await a.service.lookup(V, "k")).value == "v1"
    assert (len(script.calls), script.revalidations) == (1, 0)
    await close(a, b)


async def test_a_writer_clock_ahead_never_stretches_our_ttl(store: RedisServer) -> None:
    script = Script(values={(V, "k"): "v1"})
    ahead = Node(store, script, wall=lambda: time.time() + 3600)
    reader = Node(store, script)
    await ahead.service.lookup(V, "k")
    await reader.service.lookup(V, "k")  # from the store, "fresh for an hour" by its clock
    reader.clock.advance(61)
    assert reader.cache.get(V, "k") is None  # still only our 60 s
    await close(ahead, reader)


async def test_concurrent_misses_on_two_nodes_make_one_upstream_call(store: RedisServer) -> None:
    gate = asyncio.Event()
    script = Script(values={(V, "k"): "v1"}, gate=gate)
    a, b = Node(store, script), Node(store, script)
    first = asyncio.create_task(a.service.lookup(V, "k"))
    await script.called.wait()  # a holds the lock and is fetching
    second = asyncio.create_task(b.service.lookup(V, "k"))
    # b found no entry and is now waiting on the lock
    await wait_for(lambda: b.sample("secrets_agent_shared_cache_results_total", result="miss"))
    gate.set()
    assert [(await first).value, (await second).value] == ["v1", "v1"]
    assert len(script.calls) == 1
    assert b.sample("secrets_agent_shared_cache_lock_waits_total", outcome="value") == 1
    await close(a, b)


async def test_nobody_waits_on_a_dead_lock_holder(store: RedisServer) -> None:
    script = Script(values={(V, "k"): "v1"})
    node = Node(store, script, lock_wait=0.2)
    lock = Sealer([KEY], "namespace", "test:").names(V, "k", None).lock
    store.command("SET", lock, "a-node-that-died", "PX", "600000")
    assert (await node.service.lookup(V, "k")).value == "v1"
    assert node.sample("secrets_agent_shared_cache_lock_waits_total", outcome="timeout") == 1
    await node.tier.close()


async def test_a_failed_holder_releases_the_lock_at_once(store: RedisServer) -> None:
    gate = asyncio.Event()
    script = Script(error=TransientError("up", "down"), gate=gate)
    a, b = Node(store, script, lock_wait=30.0), Node(store, script, lock_wait=30.0)
    first = asyncio.create_task(a.service.lookup(V, "k"))
    await script.called.wait()
    second = asyncio.create_task(b.service.lookup(V, "k"))
    await wait_for(lambda: b.sample("secrets_agent_shared_cache_results_total", result="miss"))
    gate.set()
    with pytest.raises(TransientError):
        await first
    with pytest.raises(TransientError):
        await second  # b fetched itself right after the lock went, long before lock_wait
    assert b.sample("secrets_agent_shared_cache_lock_waits_total", outcome="released") == 1
    assert len(script.calls) == 2
    await close(a, b)


async def test_negative_entries_are_shared_with_the_negative_ttl(store: RedisServer) -> None:
    script = Script()
    a, b = Node(store, script), Node(store, script)
    assert (await a.service.lookup(V, "absent")).value is None
    assert (await b.service.lookup(V, "absent")).value is None
    assert len(script.calls) == 1
    [name] = [k for k in store.scan_all() if b":e:" in k]
    ttl = store.command("PTTL", name)
    assert isinstance(ttl, int) and 0 < ttl <= 10_000
    await close(a, b)


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


async def test_a_rotation_keeps_the_shared_entries_readable(store: RedisServer) -> None:
    script = Script(values={(V, "k"): "v1", (V, "j"): "w1"})
    new_key = Fernet.generate_key()
    old = Node(store, script)
    await old.service.lookup(V, "k")
    rotated = Node(store, script, keys=[new_key, KEY])  # the new key first, the old one kept
    assert (await rotated.service.lookup(V, "k")).value == "v1"  # read under the old key's name
    await rotated.service.lookup(V, "j")  # written under the new key: the old node cannot read
    assert (await old.service.lookup(V, "j")).value == "w1"  # it, so it fetches j once more
    assert script.calls == [(V, "k"), (V, "j"), (V, "j")]
    await close(old, rotated)


async def test_invalidation_drops_the_shared_entry_and_other_nodes_copies(
    store: RedisServer,
) -> None:
    script = Script(values={(V, "k"): "v1"})
    a, b = Node(store, script), Node(store, script)
    await a.tier.start()
    await b.tier.start()
    await wait_for(lambda: _subscribers(store) == 2)
    await a.service.lookup(V, "k")
    await b.service.lookup(V, "k")
    assert b.cache.get(V, "k") is not None
    script.values[(V, "k")] = "v2"
    a.service.invalidate(V, "k")
    await wait_for(lambda: b.cache.get(V, "k") is None)
    assert (await a.service.lookup(V, "k")).value == "v2"  # the shared entry went too
    assert (await b.service.lookup(V, "k")).value == "v2"
    assert len(script.calls) == 2
    assert b.sample("secrets_agent_shared_cache_invalidations_received_total") == 1
    await close(a, b)


async def test_the_store_holds_no_id_or_value(store: RedisServer) -> None:
    script = Script(values={(V, CANARY_ID): CANARY_VALUE})
    node = Node(store, script)
    await node.service.lookup(V, CANARY_ID)
    await node.service.lookup(V, CANARY_ID + "-absent")
    node.service.invalidate(V, CANARY_ID + "-gone")
    contents = store.scan_all()
    assert len(contents) == 2
    for name, value in contents.items():
        for canary in (CANARY_ID, CANARY_VALUE, "variable"):
            assert canary.encode() not in name and canary.encode() not in value
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


async def close(*nodes: Node) -> None:
    for node in nodes:
        await node.tier.close()


def _subscribers(store: RedisServer) -> int:
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


def test_key_names_are_hex_macs() -> None:
    names = Sealer([KEY], "namespace", "p:").names(V, CANARY_ID, "team-a")
    assert re.fullmatch(r"p:[0-9a-f]{16}:e:[0-9a-f]{64}:[0-9a-f]{16}", names.entry)
    assert names.lock != names.entry
