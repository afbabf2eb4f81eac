"""What a fleet-wide job (a change feed) builds on: a lease one node holds at a time (taken
back from a store writer who planted it without an expiry), and hints every other node
receives, on one server and on a cluster."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

import pytest

from secrets_agent.backends.feeds import Hint
from secrets_agent.lookup.feed_lease import FleetConsumers
from secrets_agent.lookup.shared.claim import MARGIN
from secrets_agent.lookup.shared.sealing import MESSAGE_MAX_BYTES, Sealer
from secrets_agent.lookup.shared.tier import NoSharedTier
from support.fleet_stores import ACL, AGENT_USER, PREFIX
from support.helpers import Script
from support.redis_server import ClusterServers, RedisServer, Store
from support.shared_nodes import KEY, Node, V, close, subscribers, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def store(fleet_store: Store) -> Store:
    return fleet_store


async def test_one_node_holds_a_lease_until_it_releases_it_or_stops_renewing(
    store: Store,
) -> None:
    script = Script(values={})
    a, b = Node(store, script), Node(store, script)
    lease_a, lease_b = a.tier.lease("feed", ttl=30.0), b.tier.lease("feed", ttl=30.0)
    assert await lease_a.acquire()
    assert await lease_a.acquire()  # still ours
    assert not await lease_b.acquire()
    assert not await lease_b.renew()  # renewing is only for the holder
    assert await lease_a.renew()
    await lease_b.release()  # not b's to release: nothing happens
    assert not await lease_b.acquire()
    await lease_a.release()
    assert await lease_b.acquire()
    assert not await lease_a.renew()  # a lost it: it stops its job
    short_a, short_b = a.tier.lease("other", ttl=0.2), b.tier.lease("other", ttl=0.2)
    assert await short_a.acquire()
    assert not await short_b.acquire()
    name = Sealer([KEY], "namespace", "test:").lease("other")
    await wait_for(lambda: store.command("EXISTS", name) == 0)  # a holder that stopped renewing
    assert await short_b.acquire()  # loses the lease at its TTL
    await close(a, b)


PLANTED = "secrets_agent_shared_cache_errors_total"


def lease_name(purpose: str) -> str:
    return Sealer([KEY], "namespace", "test:").lease(purpose)


@pytest.mark.parametrize(
    "plant",
    [
        ("SET", "someone"),  # no expiry
        ("SET", "someone", "PX", str(int(30_000 * MARGIN) + 60_000)),  # far beyond ours
        ("RPUSH", "someone"),  # another type, no expiry
    ],
    ids=["no-expiry", "too-long", "other-type"],
)
async def test_a_lease_planted_without_a_usable_expiry_is_taken_back(
    store: Store, plant: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    script = Script(values={})
    a, b = Node(store, script), Node(store, script)
    lease_a, lease_b = a.tier.lease("feed", ttl=30.0), b.tier.lease("feed", ttl=30.0)
    name = lease_name("feed")
    command, *args = plant
    store.command(command, name, *args)
    with caplog.at_level(logging.INFO, logger="secrets_agent.lookup.shared"):
        # Both at once: the check and the replacement are one script, so only one wins.
        won = await asyncio.gather(lease_a.acquire(), lease_b.acquire())
        assert sorted(won) == [False, True]
        holder, other = (lease_a, lease_b) if won[0] else (lease_b, lease_a)
        assert 0 < int(str(store.command("PTTL", name))) <= 30_000
        assert await holder.renew() and not await other.acquire()
        store.command("DEL", name)
        store.command(command, name, *args)  # planted again: taken by the other node
        assert await other.acquire() and not await holder.renew()
        store.command("DEL", name)
        store.command(command, name, *args)  # again, on the node that said it already
        assert await holder.acquire()
    planted = a.sample(PLANTED, operation="lease_planted") + b.sample(
        PLANTED, operation="lease_planted"
    )
    assert planted == 3
    assert a.sample(PLANTED, operation="lease") == b.sample(PLANTED, operation="lease") == 0
    assert a.tier.health().available and b.tier.health().available
    lines = [r for r in caplog.records if "was replaced" in r.getMessage()]
    # One line per node per log_interval, and no traceback: a writer's doing, not ours.
    assert len(lines) == 2 and all(r.exc_info is None for r in lines)
    assert "someone" not in caplog.text
    await close(a, b)


async def test_a_lease_with_an_expiry_an_agent_could_set_is_held(store: Store) -> None:
    script = Script(values={})
    a, b = Node(store, script), Node(store, script)
    # Another node configured with a longer lease time (within the margin) holds it.
    assert await a.tier.lease("feed", ttl=30.0 * MARGIN / 2).acquire()
    assert not await b.tier.lease("feed", ttl=30.0).acquire()
    name = lease_name("other")
    store.command("RPUSH", name, "someone")  # another type that expires: held until then
    store.command("PEXPIRE", name, "20000")
    assert not await b.tier.lease("other", ttl=30.0).acquire()
    assert store.command("TYPE", name) == b"list"
    assert b.sample(PLANTED, operation="lease_planted") == 0
    await close(a, b)


async def test_a_lease_holder_whose_expiry_was_removed_keeps_it(store: Store) -> None:
    script = Script(values={})
    a, b = Node(store, script), Node(store, script)
    lease_a = a.tier.lease("feed", ttl=30.0)
    assert await lease_a.acquire()
    store.command("PERSIST", lease_name("feed"))
    assert await lease_a.renew()  # the renewal sets the expiry again
    assert 0 < int(str(store.command("PTTL", lease_name("feed")))) <= 30_000
    assert not await b.tier.lease("feed", ttl=30.0).acquire()
    await close(a, b)


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
@pytest.mark.parametrize("pttl", [True, False], ids=["documented-acl", "acl-without-pttl"])
async def test_the_documented_acl_renews_and_takes_back_leases_and_locks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pttl: bool, kind: str
) -> None:
    # The documented ACL: renewing must not need PEXPIRE, and PTTL tells planted names. An ACL
    # from before the check (no +pttl) still takes free names, and says what it cannot do. On
    # a cluster too (MemoryDB and ElastiCache Serverless always run with an ACL user).
    acl = ACL.replace(PREFIX, "test:")  # the nodes' prefix
    if not pttl:
        acl = acl.replace(" +pttl", "")
    server: Store
    if kind == "cluster":
        server = ClusterServers(tmp_path / "cluster", user=AGENT_USER, acl=acl)
    else:
        server = RedisServer(tmp_path, user=AGENT_USER, acl=acl)
    server.start()
    script = Script(values={(V, "k"): "v"})
    a, b = Node(server, script), Node(server, script)
    try:
        with caplog.at_level(logging.INFO, logger="secrets_agent.lookup.shared"):
            lease = a.tier.lease("feed", ttl=30.0)
            assert await lease.acquire() and await lease.renew()
            assert not await b.tier.lease("feed", ttl=30.0).acquire()
            server.command("SET", lease_name("other"), "someone")
            assert await b.tier.lease("other", ttl=30.0).acquire() is pttl
            assert (await a.service.lookup(V, "k")).value == "v"  # the refresh lock is taken
            assert (await b.service.lookup(V, "k")).value == "v"
        assert b.sample(PLANTED, operation="lease_planted") == (1 if pttl else 0)
        assert a.tier.health().available and b.tier.health().available
        assert sum(a.sample(PLANTED, operation=op) for op in ("lease", "lock", "read")) == 0
        refused = [r.getMessage() for r in caplog.records if "refuses PTTL" in r.getMessage()]
        assert len(refused) == (0 if pttl else 2)  # one line per node per log_interval
    finally:
        await close(a, b)
        server.stop()


async def test_a_hint_reaches_every_other_node_and_only_its_topic(store: Store) -> None:
    script = Script(values={})
    a, b = Node(store, script), Node(store, script)
    got_a: list[Mapping[str, str | None]] = []
    got_b: list[Mapping[str, str | None]] = []
    a.tier.on_hint("feed", got_a.append)
    b.tier.on_hint("feed", got_b.append)
    await a.tier.start()
    await b.tier.start()
    await wait_for(lambda: subscribers(store) == 2)
    a.tier.broadcast("other-topic", {"x": "1"})
    a.tier.broadcast("feed", {"kind": "variable", "id": "k", "version": None})
    await wait_for(lambda: got_b)
    assert got_b == [{"kind": "variable", "id": "k", "version": None}]
    assert got_a == []  # not our own
    await close(a, b)


async def test_without_a_store_a_node_holds_every_lease() -> None:
    lease = NoSharedTier().lease("feed", ttl=10.0)
    assert await lease.acquire() and await lease.renew()


async def test_a_hint_naming_an_overlong_version_still_reaches_the_other_nodes(
    store: Store,
) -> None:
    """A feed event's version is the event's (a queue's sender chose it): one too long to seal
    under MESSAGE_MAX_BYTES is relayed without it, not refused by every other node."""
    script = Script(values={})
    a, b = Node(store, script), Node(store, script)
    got: list[Hint] = []
    FleetConsumers(b.tier, b.metrics).listen("aws", got.extend)
    await a.tier.start()
    await b.tier.start()
    await wait_for(lambda: subscribers(store) == 2)
    FleetConsumers(a.tier, a.metrics).relay("aws", [Hint(V, "k", "x" * MESSAGE_MAX_BYTES)])
    await wait_for(lambda: got)
    assert got == [Hint(V, "k", None)]  # no version: the other nodes refetch whatever it is
    assert b.sample("secrets_agent_shared_cache_messages_refused_total") == 0
    await close(a, b)
