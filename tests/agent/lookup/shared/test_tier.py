"""The shared tier against a real redis-server: nodes share one upstream read per key, one
node refreshes at a time, invalidations reach the others, and the store holds nothing readable."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from cryptography.fernet import Fernet

from secrets_agent.errors import TransientError
from secrets_agent.lookup.cache import CacheState
from secrets_agent.lookup.shared.sealing import Sealer
from support.helpers import Script
from support.redis_server import RedisServer, Store
from support.shared_nodes import KEY, Node, V, close, subscribed_pair, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def store(fleet_store: Store) -> Store:
    """Each test against one redis-server and a three-primary cluster."""
    return fleet_store


CANARY_ID, CANARY_VALUE = "canary-id-7f3a", "canary-value-91bc"


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
    store.command("SET", lock, "a-node-that-died", "PX", "60000")  # lock_ttl 60 s
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
    a, b = await subscribed_pair(store, script)
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


def test_key_names_are_hex_macs() -> None:
    names = Sealer([KEY], "namespace", "p:").names(V, CANARY_ID, "team-a")
    # The HMAC is the cluster hash tag: the entry and its lock share one slot.
    assert re.fullmatch(r"p:[0-9a-f]{16}:\{[0-9a-f]{32}\}:e:[0-9a-f]{16}", names.entry)
    assert names.lock != names.entry
    assert names.lock.split("}")[0] == names.entry.split("}")[0]
