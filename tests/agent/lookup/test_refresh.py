"""Refresh-ahead and refresh-now over a scripted backend, with the clock moved by the test."""

from __future__ import annotations

import asyncio
import math
import random

from secrets_agent.errors import TransientError
from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import CacheState, RefreshAhead, SecretCache
from secrets_agent.lookup.chain import BackendChain, Link
from secrets_agent.lookup.cipher import Cipher
from secrets_agent.lookup.service import RefreshPolicy, SecretService
from secrets_agent.ops.metrics import Metrics
from support.helpers import FakeClock, Script, ScriptedBackend

V = Kind.VARIABLE
TTL = 60.0


class Fixture:
    def __init__(
        self,
        script: Script,
        *,
        share: float = 0.8,
        jitter: float = 0.1,
        concurrency: int = 4,
        now_interval: float = 30.0,
    ) -> None:
        self.script = script
        self.clock = FakeClock()
        self.metrics = Metrics()
        ScriptedBackend.scripts = {"a": script}
        cache = SecretCache(
            max_entries=1000,
            ttl=lambda k: TTL,
            negative_ttl=10.0,
            max_stale=120.0,
            cipher=Cipher([]),
            clock=self.clock,
            refresh=RefreshAhead(share, jitter, random.Random(7).random),
        )
        chain = BackendChain([Link(ScriptedBackend("a", None), {V: None})], self.metrics)
        policy = RefreshPolicy(concurrency=concurrency, now_interval=now_interval)
        self.service = SecretService(chain, cache, self.metrics, policy)

    def refreshes(self, trigger: str, result: str) -> float:
        labels = {"kind": "variable", "trigger": trigger, "result": result}
        return self.metrics.registry.get_sample_value("secrets_agent_refreshes_total", labels) or 0


async def test_a_key_read_steadily_only_hits_and_costs_about_one_call_per_ttl() -> None:
    script = Script(values={(V, "hot"): "v"})
    f = Fixture(script)
    states = []
    periods = 10
    for _ in range(int(periods * TTL)):
        states.append((await f.service.lookup(V, "hot")).state)
        await f.service.idle()
        f.clock.advance(1.0)
    assert states[0] is CacheState.MISS
    assert set(states[1:]) == {CacheState.HIT}
    # Refreshed at 0.8 of the TTL, jittered by +-10%: never more often than every 0.72 TTL.
    assert periods < len(script.calls) <= math.ceil(periods / 0.72) + 1
    assert f.refreshes("ahead", "fetched") == len(script.calls) - 1


async def test_without_refresh_ahead_the_hot_key_misses_once_per_ttl() -> None:
    script = Script(values={(V, "hot"): "v"})
    f = Fixture(script, share=0.0)
    states = []
    for _ in range(int(3 * TTL)):
        states.append((await f.service.lookup(V, "hot")).state)
        await f.service.idle()
        f.clock.advance(1.0)
    assert states.count(CacheState.MISS) == 3


async def test_only_keys_read_during_their_ttl_are_refreshed() -> None:
    script = Script(values={(V, "read"): "1", (V, "unread"): "2"})
    f = Fixture(script, jitter=0.0)
    await f.service.lookup(V, "read")
    await f.service.lookup(V, "unread")  # stored, never read again
    f.clock.advance(10)
    assert (await f.service.lookup(V, "read")).state is CacheState.HIT
    f.clock.advance(40)  # past 0.8 * TTL = 48 s
    assert f.service.refresh_due() == 1
    await f.service.idle()
    assert script.calls == [(V, "read"), (V, "unread"), (V, "read")]
    # The refreshed entry was not read since: nothing more, even past its own refresh point.
    f.clock.advance(50)
    assert f.service.refresh_due() == 0


async def test_jitter_spreads_keys_cached_together() -> None:
    script = Script(values={(V, f"k{i}"): "v" for i in range(40)})
    for jitter, expected in ((0.0, 1), (0.1, 5)):
        f = Fixture(script, jitter=jitter)
        for i in range(40):
            await f.service.lookup(V, f"k{i}")
            await f.service.lookup(V, f"k{i}")  # read while fresh
        moments = set()
        for second in range(int(TTL)):
            if f.service.refresh_due():
                moments.add(second)
            await f.service.idle()
            f.clock.advance(1.0)
        assert len(moments) >= expected
        assert len(moments) == 1 if jitter == 0 else len(moments) > 1


async def test_refresh_ahead_revalidates_by_version() -> None:
    script = Script(values={(V, "k"): "v"}, versions={(V, "k"): "ver-1"})
    f = Fixture(script, jitter=0.0)
    await f.service.lookup(V, "k")
    f.clock.advance(50)
    assert (await f.service.lookup(V, "k")).state is CacheState.HIT  # starts the refresh
    await f.service.idle()
    assert (len(script.calls), script.revalidations) == (1, 1)
    assert f.refreshes("ahead", "unchanged") == 1
    f.clock.advance(TTL - 1)  # fresh again from the revalidation, not from the first fetch
    assert (await f.service.lookup(V, "k")).state is CacheState.HIT


async def test_background_refreshes_are_bounded_per_backend() -> None:
    script = Script(values={(V, f"k{i}"): "v" for i in range(10)})
    f = Fixture(script, jitter=0.0, concurrency=2)
    for i in range(10):
        await f.service.lookup(V, f"k{i}")
        await f.service.lookup(V, f"k{i}")
    script.calls.clear()
    script.gate = asyncio.Event()
    f.clock.advance(50)
    assert f.service.refresh_due() == 10
    assert f.service.refresh_due() == 0  # already pending: not started twice
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(script.calls) == 2
    script.gate.set()
    await f.service.idle()
    assert len(script.calls) == 10


async def test_a_failed_refresh_ahead_keeps_serving_the_fresh_value() -> None:
    script = Script(values={(V, "k"): "v"})
    f = Fixture(script, jitter=0.0)
    await f.service.lookup(V, "k")
    f.clock.advance(50)
    script.error = TransientError("a", "down")
    assert (await f.service.lookup(V, "k")).state is CacheState.HIT
    await f.service.idle()
    assert f.refreshes("ahead", "error") == 1
    assert (await f.service.lookup(V, "k")).value == "v"
    # Retried halfway to expiry (at 55 s), not at every scan: an outage is not hammered.
    f.clock.advance(4)
    assert f.service.refresh_due() == 0
    f.clock.advance(1)
    assert f.service.refresh_due() == 1
    await f.service.idle()
    assert f.refreshes("ahead", "error") == 2


async def test_refresh_now_is_coalesced_and_rate_limited_per_key() -> None:
    script = Script(values={(V, "k"): "v1"})
    f = Fixture(script, now_interval=30.0)
    await f.service.lookup(V, "k")
    script.values[(V, "k")] = "v2"
    script.gate = asyncio.Event()
    script.called.clear()
    lookups = [asyncio.create_task(f.service.lookup(V, "k", refresh=True)) for _ in range(10)]
    await script.called.wait()
    script.gate.set()
    results = await asyncio.gather(*lookups)
    assert {(r.state, r.value) for r in results} == {(CacheState.MISS, "v2")}
    assert len(script.calls) == 2
    assert f.refreshes("now", "fetched") == 1

    script.values[(V, "k")] = "v3"
    f.clock.advance(10)
    limited = await f.service.lookup(V, "k", refresh=True)
    assert (limited.state, limited.value) == (CacheState.HIT, "v2")
    assert len(script.calls) == 2
    assert f.refreshes("now", "limited") == 1
    f.clock.advance(20)
    assert (await f.service.lookup(V, "k", refresh=True)).value == "v3"
    assert len(script.calls) == 3


async def test_refresh_now_is_per_key_and_serves_stale_when_the_upstream_fails() -> None:
    script = Script(values={(V, "a"): "1", (V, "b"): "2"})
    f = Fixture(script)
    await f.service.lookup(V, "a")
    await f.service.lookup(V, "b")
    await f.service.lookup(V, "a", refresh=True)
    script.error = TransientError("a", "down")
    stale = await f.service.lookup(V, "b", refresh=True)
    assert (stale.state, stale.value) == (CacheState.STALE, "2")
    assert f.refreshes("now", "error") == 1
    assert len(script.calls) == 4


async def test_the_service_a_reload_builds_keeps_the_refresh_now_memory() -> None:
    script = Script(values={(V, "k"): "v1"})
    f = Fixture(script, now_interval=30.0)
    assert (await f.service.lookup(V, "k", refresh=True)).state is CacheState.MISS
    calls = len(script.calls)
    old = f.service

    def rebuilt(policy: RefreshPolicy) -> SecretService:
        service = SecretService(old.chain, old.cache, f.metrics, policy)
        service.carry_limits(old)
        return service

    same = rebuilt(RefreshPolicy(concurrency=4, now_interval=30.0))
    assert (await same.lookup(V, "k", refresh=True)).state is CacheState.HIT  # still limited
    assert len(script.calls) == calls
    assert f.refreshes("now", "limited") == 1
    # Other limits: their own memory, from nothing.
    other = rebuilt(RefreshPolicy(concurrency=4, now_interval=10.0))
    assert (await other.lookup(V, "k", refresh=True)).state is CacheState.MISS
    assert len(script.calls) == calls + 1
