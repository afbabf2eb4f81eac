"""SecretService over a scripted backend chain: cache states, single-flight, stale-on-error."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from secrets_agent.backends.base import Backend
from secrets_agent.backends.calls import ApiCalls
from secrets_agent.errors import BackendError, DeniedError, TransientError
from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import CacheState, RefreshAhead, SecretCache
from secrets_agent.lookup.chain import BackendChain, Found, Link
from secrets_agent.lookup.cipher import Cipher
from secrets_agent.lookup.service import SecretService
from secrets_agent.lookup.shared.tier import NoSharedTier, Shared, Upstream
from secrets_agent.lookup.singleflight import SingleFlight
from secrets_agent.ops.metrics import Metrics
from support.helpers import FakeClock, Script, ScriptedBackend, ScriptOptions

V = Kind.VARIABLE


class Fixture:
    def __init__(
        self,
        *scripts: tuple[str, Script, str],
        deadline: float = 120.0,
        max_stale: float = 120.0,
        refresh: RefreshAhead | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.metrics = Metrics()
        ScriptedBackend.scripts = {name: script for name, script, _ in scripts}
        links = [
            Link(ScriptedBackend(name, None), {V: re.compile(p) if p else None}, deadline=deadline)
            for name, _, p in scripts
        ]
        cache = SecretCache(
            max_entries=100,
            ttl=lambda k: 60.0,
            negative_ttl=10.0,
            max_stale=max_stale,
            cipher=Cipher([]),
            clock=self.clock,
            refresh=refresh,
        )
        self.service = SecretService(BackendChain(links, self.metrics), cache, self.metrics)

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_miss_then_hit_then_refresh_after_ttl() -> None:
    script = Script(values={(V, "k"): "v1"})
    f = Fixture(("a", script, ""))
    first = await f.service.lookup(V, "k")
    f.clock.advance(10)
    second = await f.service.lookup(V, "k")
    assert (first.state, first.value) == (CacheState.MISS, "v1")
    assert (second.state, second.value, second.age) == (CacheState.HIT, "v1", 10.0)
    script.values[(V, "k")] = "v2"
    f.clock.advance(60)
    third = await f.service.lookup(V, "k")
    assert (third.state, third.value) == (CacheState.MISS, "v2")
    assert len(script.calls) == 2
    assert f.sample("secrets_agent_cache_results_total", kind="variable", result="hit") == 1


async def test_not_found_is_cached_negatively() -> None:
    script = Script()
    f = Fixture(("a", script, ""))
    assert (await f.service.lookup(V, "nope")).state is CacheState.MISS
    again = await f.service.lookup(V, "nope")
    assert (again.state, again.value) == (CacheState.NEGATIVE, None)
    assert len(script.calls) == 1
    f.clock.advance(10)
    await f.service.lookup(V, "nope")
    assert len(script.calls) == 2


async def test_concurrent_misses_make_one_upstream_call() -> None:
    script = Script(values={(V, "k"): "v"}, gate=asyncio.Event())
    f = Fixture(("a", script, ""))
    lookups = [asyncio.create_task(f.service.lookup(V, "k")) for _ in range(20)]
    await script.called.wait()
    script.gate.set()  # type: ignore[union-attr]
    results = await asyncio.gather(*lookups)
    assert {r.value for r in results} == {"v"}
    assert len(script.calls) == 1
    assert f.sample("secrets_agent_coalesced_requests_total", kind="variable") == 19


async def test_a_cancelled_waiter_does_not_cancel_the_shared_call() -> None:
    flight: SingleFlight[str] = SingleFlight()
    gate = asyncio.Event()

    async def call() -> str:
        await gate.wait()
        return "done"

    first = asyncio.create_task(flight.do("k", call))
    second = asyncio.create_task(flight.do("k", call))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == ("done", True)
    assert len(flight) == 0


async def test_transient_failure_serves_stale_within_max_stale_only() -> None:
    script = Script(values={(V, "k"): "v"})
    f = Fixture(("a", script, ""))
    await f.service.lookup(V, "k")
    script.error = TransientError("a", "connection refused")
    f.clock.advance(61)
    stale = await f.service.lookup(V, "k")
    assert (stale.state, stale.value, stale.age) == (CacheState.STALE, "v", 61.0)
    f.clock.advance(120)
    with pytest.raises(TransientError):
        await f.service.lookup(V, "k")
    script.error = None
    assert (await f.service.lookup(V, "k")).state is CacheState.MISS


async def test_transient_failure_without_a_cached_value_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    f = Fixture(("a", Script(error=TransientError("a", "timeout")), ""))
    for secret_id in ("k", "l", "m"):
        with pytest.raises(TransientError):
            await f.service.lookup(V, secret_id)
    # The operator hears of the failing upstream: once a minute, not once a lookup.
    assert caplog.text.count("backend 'a': timeout: lookups get cached values stale") == 1


async def test_an_upstream_that_never_answers_ends_at_the_deadline_and_frees_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An answer trickled inside every read timeout never ends on its own: without a deadline
    # the key's single flight would hold every later lookup of it until a restart.
    never = Script(values={(V, "k"): "v"}, gate=asyncio.Event())  # the gate is never opened
    f = Fixture(("a", never, ""), deadline=0.05)
    async with asyncio.timeout(60):  # without the deadline: a failure here, not a hung suite
        for _ in range(2):
            with pytest.raises(TransientError, match=r"no answer within 0\.05s \(deadline\)"):
                await f.service.lookup(V, "k")
    assert len(never.calls) == 2  # the second lookup asked again: the first flight had ended
    assert (
        f.sample(
            "secrets_agent_upstream_requests_total",
            backend="a",
            kind="variable",
            result="transient",
        )
        == 2
    )
    assert caplog.text.count("gave no answer within its deadline") == 1  # once a minute


async def test_denied_is_raised_and_not_cached() -> None:
    script = Script(error=DeniedError("a", "permission denied"))
    f = Fixture(("a", script, ""))
    for _ in range(2):
        with pytest.raises(DeniedError):
            await f.service.lookup(V, "k")
    assert len(script.calls) == 2
    assert (
        f.sample(
            "secrets_agent_upstream_requests_total", backend="a", kind="variable", result="denied"
        )
        == 2
    )


async def test_chain_order_and_lookup_patterns() -> None:
    first = Script(values={(V, "team_x"): "from-first", (V, "other"): "never-asked"})
    second = Script(values={(V, "other"): "from-second", (V, "team_x"): "shadowed"})
    f = Fixture(("first", first, "^team_"), ("second", second, ""))
    assert (await f.service.lookup(V, "team_x")).value == "from-first"
    assert (await f.service.lookup(V, "other")).value == "from-second"
    assert first.calls == [(V, "team_x")]
    assert second.calls == [(V, "other")]


async def test_an_error_stops_the_chain_instead_of_falling_through() -> None:
    second = Script(values={(V, "k"): "wrong"})
    f = Fixture(
        ("first", Script(error=TransientError("first", "down")), ""), ("second", second, "")
    )
    with pytest.raises(TransientError):
        await f.service.lookup(V, "k")
    assert second.calls == []


async def test_unexpected_backend_exception_is_translated_without_its_text() -> None:
    f = Fixture(("a", Script(error=ValueError("leaked s3cret")), ""))
    with pytest.raises(BackendError) as info:
        await f.service.lookup(V, "k")
    assert "s3cret" not in str(info.value)
    assert "ValueError" in str(info.value)


async def test_expired_entry_is_revalidated_by_version_instead_of_refetched() -> None:
    script = Script(values={(V, "k"): "v1"}, versions={(V, "k"): "ver-1"})
    f = Fixture(("a", script, ""))
    await f.service.lookup(V, "k")
    f.clock.advance(61)
    again = await f.service.lookup(V, "k")
    assert (again.state, again.value, again.age) == (CacheState.HIT, "v1", 0.0)
    assert (len(script.calls), script.revalidations) == (1, 1)
    assert f.sample("secrets_agent_cache_results_total", kind="variable", result="revalidated") == 1
    f.clock.advance(30)
    assert (await f.service.lookup(V, "k")).state is CacheState.HIT  # re-stamped: fresh again

    script.values[(V, "k")], script.versions[(V, "k")] = "v2", "ver-2"
    f.clock.advance(31)
    changed = await f.service.lookup(V, "k")
    assert (changed.state, changed.value) == (CacheState.MISS, "v2")
    assert (len(script.calls), script.revalidations) == (2, 2)


async def test_revalidation_failure_serves_stale() -> None:
    script = Script(values={(V, "k"): "v1"}, versions={(V, "k"): "ver-1"})
    f = Fixture(("a", script, ""))
    await f.service.lookup(V, "k")
    script.error = TransientError("a", "throttled")
    f.clock.advance(61)
    assert (await f.service.lookup(V, "k")).state is CacheState.STALE


async def test_once_a_refresh_failed_the_value_is_served_stale_at_once_and_retried_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An upstream that hangs (or throttles) must not make every lookup of a stale value wait
    on it, nor get one more call per lookup: after the first failure the value is answered
    stale at once, and one retry at a time goes out in the background, with backoff."""
    script = Script(values={(V, "k"): "v1"})
    f = Fixture(("a", script, ""))
    await f.service.lookup(V, "k")
    f.clock.advance(61)
    script.error = TransientError("a", "timed out")
    with caplog.at_level(logging.WARNING):
        for _ in range(50):
            stale = await f.service.lookup(V, "k")
            assert (stale.state, stale.value) == (CacheState.STALE, "v1")
    assert len(script.calls) == 2  # the first fetch, and the refresh that failed: no more
    assert caplog.text.count("lookups get cached values stale while it fails") == 1
    assert "timed out" in caplog.text

    script.gate = asyncio.Event()  # the upstream hangs now: lookups still answer at once
    for wait, calls in ((1.0, 3), (2.0, 4), (4.0, 5)):  # each failure doubles the backoff
        f.clock.advance(wait - 0.5)
        assert (await f.service.lookup(V, "k")).state is CacheState.STALE
        await f.service.idle()
        assert len(script.calls) == calls - 1  # not due yet
        f.clock.advance(0.5)
        async with asyncio.timeout(60):
            assert (await f.service.lookup(V, "k")).state is CacheState.STALE
            await script.called.wait()
            script.called.clear()
            assert (await f.service.lookup(V, "k")).state is CacheState.STALE  # no waiting
            script.gate.set()
            await f.service.idle()
            script.gate.clear()
        assert len(script.calls) == calls
    retries = {"kind": "variable", "trigger": "stale", "result": "error"}
    assert f.sample("secrets_agent_refreshes_total", **retries) == 3

    script.error, script.gate = None, None  # back: the next retry brings the value back fresh
    script.values[(V, "k")] = "v2"
    f.clock.advance(8)
    assert (await f.service.lookup(V, "k")).state is CacheState.STALE
    await f.service.idle()
    fresh = await f.service.lookup(V, "k")
    assert (fresh.state, fresh.value) == (CacheState.HIT, "v2")
    assert f.sample("secrets_agent_refreshes_total", **{**retries, "result": "fetched"}) == 1
    assert f.sample("secrets_agent_cache_results_total", kind="variable", result="stale") == 60


async def test_the_backoff_is_capped_and_refresh_now_still_asks_the_upstream() -> None:
    script = Script(values={(V, "k"): "v1"})
    f = Fixture(("a", script, ""), max_stale=3600)
    await f.service.lookup(V, "k")
    f.clock.advance(61)
    script.error = TransientError("a", "throttled")
    for _ in range(8):  # backoffs of 1, 2, 4, 8, then 10 s at most
        f.clock.advance(10)
        await f.service.lookup(V, "k")
        await f.service.idle()
    calls = len(script.calls)
    assert calls == 9
    f.clock.advance(9.9)
    await f.service.lookup(V, "k")
    await f.service.idle()
    assert len(script.calls) == calls
    f.clock.advance(0.1)
    await f.service.lookup(V, "k")
    await f.service.idle()
    assert len(script.calls) == calls + 1
    forced = await f.service.lookup(V, "k", refresh=True)  # the peer asks: in the foreground
    assert (forced.state, len(script.calls)) == (CacheState.STALE, calls + 2)


async def test_a_retry_that_is_denied_stops_serving_the_value_stale() -> None:
    script = Script(values={(V, "k"): "v1"})
    f = Fixture(("a", script, ""))
    await f.service.lookup(V, "k")
    f.clock.advance(61)
    script.error = TransientError("a", "down")
    assert (await f.service.lookup(V, "k")).state is CacheState.STALE
    script.error = DeniedError("a", "permission denied")
    f.clock.advance(1)
    assert (await f.service.lookup(V, "k")).state is CacheState.STALE  # the retry goes out
    await f.service.idle()
    with pytest.raises(DeniedError):  # and the next lookup asks itself
        await f.service.lookup(V, "k")


async def test_an_invalidation_during_a_load_keeps_that_load_from_storing_a_fresh_value() -> None:
    """An operator invalidates after a rotation: a read that left before it may bring the old
    value back, which must not then be served as fresh for a whole TTL."""
    script = Script(values={(V, "k"): "old"}, gate=asyncio.Event())
    f = Fixture(("a", script, ""))
    async with asyncio.timeout(60):
        first = asyncio.create_task(f.service.lookup(V, "k"))
        await script.called.wait()
        assert f.service.invalidate(V, "k") == 0  # nothing cached yet, but a load is out
        script.gate.set()  # type: ignore[union-attr]
        assert (await first).value == "old"  # its callers asked before the invalidation
        script.values[(V, "k")] = "new"
        again = await f.service.lookup(V, "k")
    assert (again.state, again.value, len(script.calls)) == (CacheState.MISS, "new", 2)


class Hanging(Backend):
    """A backend whose upstream calls (through ``ApiCalls``, as every real one) never end."""

    type_name = "hanging"
    Options = ScriptOptions

    def __init__(self, name: str, metrics: Metrics) -> None:
        super().__init__(name, None)
        self.calls = ApiCalls(name, metrics, lambda b, e, o: BackendError(b, o))

    async def fetch(self, kind: Kind, secret_id: str) -> str | None:
        await self.calls("read", asyncio.Event().wait)
        return None


async def test_a_call_past_the_deadline_counts_as_cancelled_and_makes_the_backend_unready() -> None:
    metrics = Metrics()
    backend = Hanging("slow", metrics)
    chain = BackendChain([Link(backend, {V: None}, deadline=0.05)], metrics)
    cache = Fixture(("a", Script(), "")).service.cache
    service = SecretService(chain, cache, metrics)
    assert backend.upstream_failure() is None
    async with asyncio.timeout(60):
        with pytest.raises(TransientError):
            await service.lookup(V, "k")
    assert backend.upstream_failure() == "backend 'slow': no answer within 0.05s (deadline)"

    labels = {"backend": "slow", "operation": "read"}
    calls = "secrets_agent_upstream_api_calls_total"
    assert metrics.registry.get_sample_value(calls, {**labels, "result": "cancelled"}) == 1
    assert metrics.registry.get_sample_value(calls, {**labels, "result": "ok"}) is None


class FleetCopy(NoSharedTier):
    """A shared tier that always holds a copy: the upstream is never asked."""

    shares_refreshes = True

    async def fetch(
        self, kind: Kind, secret_id: str, team: str | None, upstream: Upstream
    ) -> Shared:
        return Shared(Found("v", "a"))


async def test_only_lookups_the_fleet_copy_answered_count_as_calls_avoided() -> None:
    script = Script(values={(V, "k"): "v"})
    f = Fixture(("a", script, ""), refresh=RefreshAhead(share=0.5, jitter=0.0))
    f.service.shared = FleetCopy()
    avoided = "secrets_agent_upstream_api_calls_avoided_total"
    await f.service.lookup(V, "k")  # a miss the fleet's copy answered: one call avoided
    await f.service.lookup(V, "k")  # a hit: another
    assert f.sample(avoided, backend="a") == 2
    # Refreshes ahead, stale retries and a feed's renewals are the agent's own calls, not
    # Airflow's: one the fleet's copy answered spared Airflow nothing.
    f.clock.advance(59)
    assert f.service.refresh_due() == 1
    await f.service.idle()
    await f.service.renew((V, "k", None))
    assert f.sample(avoided, backend="a") == 2 and script.calls == []


@pytest.mark.parametrize("meanwhile", ["deleted", "past max_stale"])
async def test_a_failed_load_serves_only_what_the_cache_still_holds_stale(meanwhile: str) -> None:
    """The value held when the lookup began may be gone by the time its load fails: a secret
    deleted upstream, or a stale window that ended while the upstream hung."""
    script = Script(values={(V, "k"): "v"})
    f = Fixture(("a", script, ""))
    await f.service.lookup(V, "k")
    f.clock.advance(61)  # expired: the next lookup asks the upstream, stale if that fails
    script.gate, script.error = asyncio.Event(), TransientError("a", "connection reset")
    script.called.clear()
    async with asyncio.timeout(60):
        lookup = asyncio.create_task(f.service.lookup(V, "k"))
        await script.called.wait()
        if meanwhile == "deleted":
            assert f.service.changed((V, "k", None), gone=True)
        else:
            f.clock.advance(120)
        script.gate.set()
        with pytest.raises(TransientError):
            await lookup
