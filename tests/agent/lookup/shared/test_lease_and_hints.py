"""What a fleet-wide job (a change feed) builds on: a lease one node holds at a time, and
hints every other node receives, on one server and on a cluster."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from secrets_agent.lookup.shared.sealing import Sealer
from secrets_agent.lookup.shared.tier import NoSharedTier
from support.helpers import Script
from support.redis_server import Store
from support.shared_nodes import KEY, Node, close, subscribers, wait_for

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
