"""What a store writer (no key) can try, against a real store: copy an entry to another
namespace's name, put an old entry back, flood refresh-now, plant a refresh lock without an
expiry. Each is a miss or a refusal, never another namespace's or an older value, nor a
lock every node waits on."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import pytest
from cryptography.fernet import Fernet

from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import CacheState
from secrets_agent.lookup.service import RefreshPolicy
from secrets_agent.lookup.shared.sealing import Invalidation, Sealer
from secrets_agent.lookup.shared.store import MAX_ENTRY
from support.helpers import Script
from support.redis_server import ClusterServers, Store
from support.shared_nodes import KEY, Node, V, close, subscribed_pair, subscribers, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def store(fleet_store: Store) -> Store:
    return fleet_store


def entry_of(store: Store, namespace: str, secret_id: str, team: str | None = None) -> str:
    return Sealer([KEY], namespace, "test:").names(V, secret_id, team).entry


async def test_an_entry_copied_to_another_namespace_does_not_open_there(store: Store) -> None:
    script = Script(values={(V, "db"): "PROD-ONLY-PASSWORD"})  # the scripted upstream is shared
    prod = Node(store, script, namespace="prod")
    staging = Node(store, script, namespace="staging")
    await prod.service.lookup(V, "db")
    script.values[(V, "db")] = "staging-password"  # what staging's own upstream holds
    token = store.command("GET", entry_of(store, "prod", "db"))
    assert isinstance(token, bytes)
    store.command("SET", entry_of(store, "staging", "db"), token)  # same Fernet key, no key held
    assert (await staging.service.lookup(V, "db")).value == "staging-password"
    assert staging.sample("secrets_agent_shared_cache_results_total", result="unreadable") == 1
    assert len(script.calls) == 2
    await close(prod, staging)


def test_names_of_one_id_in_two_namespaces_share_nothing() -> None:
    prod, staging = (Sealer([KEY], ns, "p:").names(V, "db", "team-a") for ns in ("prod", "stg"))
    for a, b in ((prod.entry, staging.entry), (prod.lock, staging.lock)):
        assert a.startswith("p:") and b.startswith("p:")
        assert not macs(a) & macs(b)
    prod_channels = Sealer([KEY], "prod", "p:").channels
    assert not set(prod_channels) & set(Sealer([KEY], "stg", "p:").channels)


def macs(name: str) -> set[str]:
    """The HMAC parts of a name (not the fixed prefix and e/l markers)."""
    return {p.strip("{}") for p in name.split(":") if len(p) >= 16}


async def test_an_old_entry_put_back_after_an_invalidation_is_refused(store: Store) -> None:
    script = Script(values={(V, "k"): "v1"})
    a, b = await subscribed_pair(store, script)
    await a.service.lookup(V, "k")
    await b.service.lookup(V, "k")
    name = entry_of(store, "namespace", "k")
    old = store.command("GET", name)
    assert isinstance(old, bytes)
    script.values[(V, "k")] = "v2"
    a.service.invalidate(V, "k")  # a rotation: every node drops v1
    await wait_for(lambda: b.cache.get(V, "k") is None)
    store.command("SET", name, old, "PX", "60000")  # the writer puts v1 back
    assert (await b.service.lookup(V, "k")).value == "v2"
    assert (await a.service.lookup(V, "k")).value == "v2"
    assert b.sample("secrets_agent_shared_cache_results_total", result="refused") == 1
    await close(a, b)


async def test_an_older_copy_than_one_seen_is_refused_without_any_message(store: Store) -> None:
    script = Script(values={(V, "k"): "v1"})
    writer, reader = Node(store, script), Node(store, script)
    await writer.service.lookup(V, "k")
    name = entry_of(store, "namespace", "k")
    old = store.command("GET", name)
    script.values[(V, "k")] = "v2"
    store.command("DEL", name)
    writer.clock.advance(61)
    assert (await writer.service.lookup(V, "k")).value == "v2"  # a newer copy, written
    assert (await reader.service.lookup(V, "k")).value == "v2"  # read: the reader saw it
    assert isinstance(old, bytes)
    store.command("SET", name, old, "PX", "60000")
    reader.clock.advance(61)
    assert (await reader.service.lookup(V, "k")).value == "v2"  # not v1 again
    assert reader.sample("secrets_agent_shared_cache_results_total", result="refused") == 1
    await close(writer, reader)


async def test_refresh_now_never_answers_the_value_it_was_asked_to_replace(store: Store) -> None:
    script = Script(values={(V, "k"): "v1"})
    a, b = Node(store, script), Node(store, script)
    await a.service.lookup(V, "k")
    await b.service.lookup(V, "k")
    old = store.command("GET", entry_of(store, "namespace", "k"))
    script.values[(V, "k")] = "v2"
    # The old copy stays in the store whatever happens to the delete (a writer puts it back at
    # once): the forced read must still reach the upstream.
    b.tier._channel._delete = _put_back(store, old)
    result = await b.service.lookup(V, "k", refresh=True)
    assert (result.value, result.state) == ("v2", CacheState.MISS)
    assert (await b.service.lookup(V, "k")).value == "v2"  # and it keeps serving v2
    assert len(script.calls) == 2
    await close(a, b)


def _put_back(store: Store, token: object) -> Callable[[Kind, str], Awaitable[None]]:
    async def delete(kind: Kind, secret_id: str) -> None:
        assert isinstance(token, bytes)
        store.command("SET", entry_of(store, "namespace", "k"), token, "PX", "60000")

    return delete


async def test_age_counts_from_the_upstream_read_on_whichever_node(store: Store) -> None:
    script = Script(values={(V, "k"): "v1"})
    start = time.time()
    a = Node(store, script, wall=lambda: start)
    b = Node(store, script, wall=lambda: start + 7)
    await a.service.lookup(V, "k")
    assert (await b.service.lookup(V, "k")).age == pytest.approx(7)
    assert (await b.service.lookup(V, "k")).age == pytest.approx(7)  # b's node cache too
    await close(a, b)


async def test_refresh_now_with_ever_new_ids_is_bounded_per_peer_and_scans_nothing(
    store: Store,
) -> None:
    script = Script(values={(V, f"k{i}"): "v" for i in range(40)})
    node = Node(store, script, refresh=RefreshPolicy(now_per_peer=5, now_total=8))
    store.command("CONFIG", "RESETSTAT")
    for i in range(20):
        await node.service.lookup(V, f"k{i}", refresh=True, peer=1000)
    assert len(script.calls) == 20  # each id was a miss anyway: one read each
    for i in range(20, 40):
        await node.service.lookup(V, f"k{i}", refresh=True, peer=1001)
    assert len(script.calls) == 40
    await node.tier.close()  # every invalidation sent
    forced, limited = (
        node.sample("secrets_agent_refreshes_total", kind="variable", trigger="now", result=r)
        for r in ("fetched", "limited")
    )
    assert (forced, limited) == (5 + 3, 15 + 17)  # 5 for one peer, then 3 left for the agent
    assert calls(store, "scan") == 0
    assert calls(store, "publish") + calls(store, "spublish") == 8  # one per forced read


def calls(store: Store, command: str) -> int:
    """How often the store (every node of a cluster) ran ``command`` since RESETSTAT."""
    total = 0
    for node in getattr(store, "nodes", [store]):
        stats = node.command("INFO", "commandstats")
        assert isinstance(stats, bytes)
        for line in stats.decode().splitlines():
            if line.startswith(f"cmdstat_{command}:calls="):
                total += int(line.split("=")[1].split(",")[0])
    return total


async def test_a_kind_wide_invalidation_refuses_every_older_copy_of_the_kind(store: Store) -> None:
    script = Script(values={(V, "k"): "v1"})
    a, b = await subscribed_pair(store, script)
    await a.service.lookup(V, "k")
    script.values[(V, "k")] = "v2"
    a.service.invalidate(V)  # names hide the kind: nothing deleted, every node refuses
    await wait_for(lambda: b.sample("secrets_agent_shared_cache_invalidations_received_total"))
    assert (await b.service.lookup(V, "k")).value == "v2"
    assert (await a.service.lookup(V, "k")).value == "v2"
    assert b.sample("secrets_agent_shared_cache_results_total", result="refused") == 1
    await close(a, b)


async def test_a_name_holding_another_type_costs_only_that_key(store: Store) -> None:
    script = Script(values={(V, f"k{i}"): f"v{i}" for i in range(5)})
    planter, node = Node(store, script), Node(store, script)
    name = entry_of(store, "namespace", "k0")
    store.command("HSET", name, "field", "planted")  # a hash where an entry belongs
    lease = node.tier.lease("feed", 10.0)
    lease_name = Sealer([KEY], "namespace", "test:").lease("feed")
    store.command("RPUSH", lease_name, "planted")
    store.command("PEXPIRE", lease_name, "20000")  # as an agent's would (without: replaced)
    for _ in range(4):  # past the breaker's two failures, were each a store failure
        node.cache.invalidate()
        assert (await node.service.lookup(V, "k0")).value == "v0"
    for _ in range(3):
        assert not await lease.acquire()  # taken, by a writer: not ours, not a failure
    for i in range(1, 5):
        assert (await node.service.lookup(V, f"k{i}")).value == f"v{i}"
    assert node.tier.health().available
    assert node.sample("secrets_agent_shared_cache_errors_total", operation="read") == 0
    assert node.sample("secrets_agent_shared_cache_errors_total", operation="lease") == 0
    assert node.sample("secrets_agent_shared_cache_results_total", result="unreadable") == 1
    assert len([k for k in store.scan_all() if b":e:" in k]) == 5  # every key shared
    # The agent's write put an entry back at the name: the next node is served from it.
    assert store.command("TYPE", name) == b"string"
    assert (await planter.service.lookup(V, "k0")).value == "v0"
    assert planter.sample("secrets_agent_shared_cache_results_total", result="hit") == 1
    assert len(script.calls) == 5
    await close(planter, node)


async def test_a_type_planted_at_the_old_keys_name_does_not_unshare_an_id_in_a_rotation(
    store: Store,
) -> None:
    """During a key rotation a node reads each id at the new key's name and at the old key's:
    another type planted at the old name reads as garbage does, and the id is still shared."""
    script = Script(values={(V, "k"): "v1"})
    new_key = Fernet.generate_key()
    first, second = (Node(store, script, keys=[new_key, KEY]) for _ in range(2))
    store.command("HSET", entry_of(store, "namespace", "k"), "field", "planted")  # the old name
    assert (await first.service.lookup(V, "k")).value == "v1"  # written at the new key's name
    assert (await second.service.lookup(V, "k")).value == "v1"
    assert second.sample("secrets_agent_shared_cache_results_total", result="hit") == 1
    assert len(script.calls) == 1
    await close(first, second)


@pytest.mark.parametrize(
    "plant",
    [("SET", "someone"), ("SET", "someone", "PX", "3600000"), ("HSET", "field", "someone")],
    ids=["no-expiry", "too-long", "other-type"],
)
async def test_a_refresh_lock_planted_without_a_usable_expiry_is_taken_back(
    store: Store, plant: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    script = Script(values={(V, "k"): "v1"})
    a, b = Node(store, script), Node(store, script)  # a lock lasts 30 s: an hour is planted
    lock = Sealer([KEY], "namespace", "test:").names(V, "k", None).lock
    command, *args = plant
    store.command(command, lock, *args)
    with caplog.at_level(logging.INFO, logger="secrets_agent.lookup.shared"):
        assert (await a.service.lookup(V, "k")).value == "v1"
    # Taken, the value shared, released: no wait on a lock nobody holds, and none for the next.
    assert a.sample("secrets_agent_shared_cache_lock_waits_total", outcome="timeout") == 0
    assert store.command("EXISTS", lock) == 0
    assert (await b.service.lookup(V, "k")).value == "v1"
    assert b.sample("secrets_agent_shared_cache_results_total", result="hit") == 1
    assert len(script.calls) == 1
    assert a.sample("secrets_agent_shared_cache_errors_total", operation="lock_planted") == 1
    assert a.sample("secrets_agent_shared_cache_errors_total", operation="lock") == 0
    [line] = [r for r in caplog.records if "was replaced" in r.getMessage()]
    assert "a lock held without an expiry" in line.getMessage() and line.exc_info is None
    await close(a, b)


@pytest.mark.parametrize(
    ("message", "said"),
    [
        ("skewed", "s ahead of this node's clock (the clocks differ)"),
        ("replayed", "s ago (a replay, or the sender's clock is behind"),
        ("forged", "not sealed under this node's keys"),
        # Refused by its size, before any decoding or MAC over megabytes a store writer chose.
        ("huge", "2097152 bytes, more than any message an agent seals"),
    ],
)
async def test_a_message_the_node_cannot_open_is_counted_and_said(
    store: Store, caplog: pytest.LogCaptureFixture, message: str, said: str
) -> None:
    script = Script(values={(V, "k"): "v1"})
    node = Node(store, script)
    await node.tier.start()
    await wait_for(lambda: subscribers(store) == 1)
    await node.service.lookup(V, "k")
    channel = Sealer([KEY], "namespace", "test:").channels[0]
    offset = {"skewed": 120.0, "replayed": -400.0}.get(message, 0.0)
    sender = Sealer([KEY], "namespace", "test:", wall=lambda: time.time() + offset)
    data = sender.seal_messages(Invalidation(V, "k", sender.wall(), "another-node"))[0][1]
    if message == "forged":  # a store writer: no key
        data = Fernet(Fernet.generate_key()).encrypt(b'{"k": null}')
    if message == "huge":
        data = b"A" * (2 * 1024 * 1024)
    command = "SPUBLISH" if isinstance(store, ClusterServers) else "PUBLISH"
    with caplog.at_level(logging.WARNING, logger="secrets_agent.lookup.shared"):
        store.command(command, channel, data)
        refused = "secrets_agent_shared_cache_messages_refused_total"
        await wait_for(lambda: node.sample(refused) == 1)
    assert node.cache.get(V, "k") is not None  # nothing dropped
    assert node.sample("secrets_agent_shared_cache_invalidations_received_total") == 0
    [line] = [r.getMessage() for r in caplog.records]
    assert said in line, line
    await close(node)


def sent(store: Store) -> int:
    """Bytes the store (every node of a cluster) has sent its clients so far."""
    total = 0
    for node in getattr(store, "nodes", [store]):
        stats = node.command("INFO", "stats")
        assert isinstance(stats, bytes)
        line = next(x for x in stats.decode().splitlines() if x.startswith("total_net_output"))
        total += int(line.split(":")[1])
    return total


async def test_a_huge_value_at_a_name_is_never_downloaded(store: Store) -> None:
    script = Script(values={(V, "k"): "v1"})
    # A bound for a busy machine: the store copies the value once per read, to measure it.
    planter, node = Node(store, script, timeout=5.0), Node(store, script, timeout=5.0)
    name = entry_of(store, "namespace", "k")
    store.command("SETRANGE", name, str(16 << 20), "x")  # 16 MiB, built by the store itself
    before = sent(store)
    assert (await node.service.lookup(V, "k")).value == "v1"
    assert sent(store) - before < MAX_ENTRY
    assert node.sample("secrets_agent_shared_cache_results_total", result="unreadable") == 1
    assert node.tier.health().available
    assert (await planter.service.lookup(V, "k")).value == "v1"  # our entry replaced it
    assert planter.sample("secrets_agent_shared_cache_results_total", result="hit") == 1
    await close(planter, node)


async def test_a_value_too_large_to_share_is_fetched_by_each_node(store: Store) -> None:
    script = Script(values={(V, "big"): "x" * MAX_ENTRY, (V, "small"): "s"})
    a, b = Node(store, script), Node(store, script)
    for node in (a, b):
        assert (await node.service.lookup(V, "big")).value == "x" * MAX_ENTRY
        assert (await node.service.lookup(V, "small")).value == "s"
    assert len([k for k in store.scan_all() if b":e:" in k]) == 1  # small's alone
    assert len(script.calls) == 3
    await close(a, b)


async def test_a_copy_from_a_clock_ahead_cannot_pass_an_invalidation(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script(values={(V, "k"): "v1"})
    ahead, node = Node(store, script, wall=lambda: time.time() + 100), Node(store, script)
    await ahead.service.lookup(V, "k")  # sealed as fetched 100 s from now
    name = entry_of(store, "namespace", "k")
    old = store.command("GET", name)
    assert isinstance(old, bytes)
    script.values[(V, "k")] = "v2"
    node.service.invalidate(V, "k")
    await node.tier._channel.settled()
    store.command("SET", name, old, "PX", "60000")  # a writer puts v1 back
    with caplog.at_level(logging.WARNING, logger="secrets_agent.lookup.shared"):
        assert (await node.service.lookup(V, "k")).value == "v2"
    assert node.sample("secrets_agent_shared_cache_results_total", result="refused") == 1
    [line] = [r.getMessage() for r in caplog.records]
    assert "s ahead of this node's clock" in line, line
    await close(ahead, node)


async def test_an_invalidation_from_a_clock_behind_still_refuses_older_copies(
    store: Store,
) -> None:
    script = Script(values={(V, "k"): "v1"})
    earlier = time.time() - 5
    writer = Node(store, script, wall=lambda: earlier)  # fetched "5 s ago", by any clock
    node, behind = await subscribed_pair(store, script)
    behind.tier._sealer.wall = lambda: time.time() - 100  # its invalidations say "100 s ago"
    await writer.service.lookup(V, "k")
    name = entry_of(store, "namespace", "k")
    old = store.command("GET", name)
    assert isinstance(old, bytes)
    script.values[(V, "k")] = "v2"
    behind.service.invalidate(V, "k")
    await wait_for(lambda: node.sample("secrets_agent_shared_cache_invalidations_received_total"))
    store.command("SET", name, old, "PX", "60000")  # a writer puts v1 back
    assert (await node.service.lookup(V, "k")).value == "v2"
    assert node.sample("secrets_agent_shared_cache_results_total", result="refused") == 1
    await close(writer, node, behind)


async def test_a_replayed_message_is_refused(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A store writer who saw a message publishes it again: each replay of a fleet-wide
    invalidation would empty every node's cache (and send every key upstream) once more."""
    script = Script(values={(V, "k"): "v1"})
    a, b = await subscribed_pair(store, script)
    published: list[tuple[str, bytes]] = []
    bus = a.tier._channel._bus
    send = bus.publish

    async def spy(channel: str, message: bytes) -> None:  # what the writer sees on the channel
        published.append((channel, message))
        await send(channel, message)

    bus.publish = spy  # type: ignore[method-assign]
    await b.service.lookup(V, "k")
    a.service.invalidate()  # everything, everywhere
    received = "secrets_agent_shared_cache_invalidations_received_total"
    await wait_for(lambda: b.sample(received) == 1)
    assert b.cache.get(V, "k") is None
    await b.service.lookup(V, "k")
    [(channel, data)] = published
    command = "SPUBLISH" if isinstance(store, ClusterServers) else "PUBLISH"
    # The same token, and spellings of it that decode to the same bytes (base64 skips what is
    # not in its alphabet): each a replay.
    replays = [data, data + b"\n", data[:20] + b"!" + data[20:]]
    refused = "secrets_agent_shared_cache_messages_refused_total"
    with caplog.at_level(logging.WARNING, logger="secrets_agent.lookup.shared"):
        for count, replay in enumerate(replays, 1):
            store.command(command, channel, replay)
            await wait_for(lambda count=count: b.sample(refused) == count)  # type: ignore[misc]
    assert b.sample(received) == 1
    assert b.cache.get(V, "k") is not None  # nothing dropped again
    assert len(script.calls) == 2  # and nothing fetched again
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all("received before (a replay)" in line for line in lines), lines
    await close(a, b)
