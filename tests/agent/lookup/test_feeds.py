"""Applying change-feed hints over a scripted backend: the feed faked behind its interface."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence

import pytest

from secrets_agent.backends.feeds import Feed, FeedOptions, Held, Hint, Message, ids_for
from secrets_agent.errors import TransientError
from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import CacheState, SecretCache
from secrets_agent.lookup.chain import BackendChain, Link
from secrets_agent.lookup.cipher import Cipher
from secrets_agent.lookup.feeds import Clocks, FeedRunner, Relayed
from secrets_agent.lookup.service import SecretService
from secrets_agent.lookup.shared.tier import NoSharedTier
from secrets_agent.ops.metrics import Metrics
from support.helpers import FakeClock, Script, ScriptedBackend

V, C = Kind.VARIABLE, Kind.CONNECTION


class QueueFeed(Feed):
    """What a queue would deliver, one list per ``receive``; an exception fails a round."""

    def __init__(self, options: FeedOptions | None = None) -> None:
        super().__init__("a", options or FeedOptions(key_interval=0.0))
        self.rounds: list[list[Message] | Exception] = []
        self.acked: list[Message] = []

    async def receive(self, held: Held) -> list[Message]:
        if not self.rounds:
            await asyncio.sleep(0.01)  # a queue's wait for messages, bounded
            return []
        got = self.rounds.pop(0)
        if isinstance(got, Exception):
            raise got
        return got

    async def ack(self, messages: Sequence[Message]) -> None:
        self.acked.extend(messages)


class Fixture:
    def __init__(self, feed: QueueFeed | None = None, pattern: str = "") -> None:
        self.clock = FakeClock()
        self.pace = FakeClock()
        self.metrics = Metrics()
        self.script = Script(values={(V, "k"): "v1"}, versions={(V, "k"): "1"})
        ScriptedBackend.scripts = {"a": self.script}
        link = Link(ScriptedBackend("a", None), {V: re.compile(pattern) if pattern else None})
        cache = SecretCache(
            max_entries=100,
            ttl=lambda k: 3600.0,
            negative_ttl=10.0,
            max_stale=7200.0,
            cipher=Cipher([]),
            clock=self.clock,
        )
        self.service = SecretService(BackendChain([link], self.metrics), cache, self.metrics)
        self.feed = feed or QueueFeed()
        clocks = Clocks(wall=lambda: 5000.0, pace=self.pace, rng=lambda: 0.0)
        self.runner = FeedRunner(self.feed, link, self.service, self.metrics, clocks)

    async def deliver(self, *messages: Message) -> None:
        self.feed.rounds.append(list(messages))
        await self.runner.round()
        await self.runner.idle()

    def events(self, result: str) -> float:
        labels = {"feed": "a", "result": result}
        sample = self.metrics.registry.get_sample_value
        return sample("secrets_agent_feed_events_total", labels) or 0.0


async def until(condition: Callable[[], bool]) -> None:
    """Readiness by polling the runner's own state (no timing assumption)."""
    deadline = asyncio.get_running_loop().time() + 60  # a hang guard, not a timing claim
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.005)


def hint(
    secret_id: str = "k",  # noqa: S107 - an id, not a password
    version: str | None = None,
    gone: bool = False,
) -> Message:
    return Message((Hint(V, secret_id, version, at=4998.0, gone=gone),))


async def test_an_event_refetches_a_held_key_in_the_background() -> None:
    f = Fixture()
    assert (await f.service.lookup(V, "k")).value == "v1"
    f.script.values[(V, "k")], f.script.versions[(V, "k")] = "v2", "2"
    await f.deliver(hint(version="2"))
    after = await f.service.lookup(V, "k")
    assert (after.state, after.value) == (CacheState.HIT, "v2")  # fresh before the next read
    assert len(f.script.calls) == 2
    assert f.events("applied") == 1 and len(f.feed.acked) == 1
    lag = {"feed": "a"}
    assert f.metrics.registry.get_sample_value("secrets_agent_feed_lag_seconds_sum", lag) == 2.0


async def test_duplicate_and_unrelated_events_cost_no_upstream_read() -> None:
    f = Fixture(pattern="^k$")
    await f.service.lookup(V, "k")
    await f.deliver(hint(version="1"), hint("other"), Message(malformed=True))
    assert len(f.script.calls) == 1
    assert (f.events("duplicate"), f.events("ignored"), f.events("malformed")) == (1, 1, 1)
    assert len(f.feed.acked) == 3  # malformed ones too: never a poison loop


async def test_events_about_another_scopes_secrets_are_counted_logged_once_and_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    f = Fixture()
    await f.service.lookup(V, "k")
    # The same name as ours, in another region: not a change of what this node holds.
    other = Message(hint(version="2").hints, foreign="region (eu-west-1; this backend's: x)")
    with caplog.at_level(logging.WARNING, logger="secrets_agent.lookup.feeds"):
        await f.deliver(other, other)
        await f.deliver(other)
        assert (await f.service.lookup(V, "k")).state is CacheState.HIT  # still fresh
        assert len(f.script.calls) == 1 and f.events("foreign") == 3
        assert f.events("applied") == f.events("ignored") == 0
        assert len(f.feed.acked) == 3  # removed from the queue all the same
        f.pace.advance(f.feed.options.log_interval)
        await f.deliver(other)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "feed 'a': removed an event about a secret of another region (eu-west-1; this "
        "backend's: x)",
        "feed 'a': removed an event about a secret of another region (eu-west-1; this "
        "backend's: x) (2 more since the last line)",
    ]
    assert all(r.exc_info is None for r in caplog.records)


async def test_deleted_secret_becomes_a_miss() -> None:
    f = Fixture()
    await f.service.lookup(V, "k")
    del f.script.values[(V, "k")]
    await f.deliver(hint(gone=True))
    assert (await f.service.lookup(V, "k")).state is CacheState.NEGATIVE


async def test_failed_refetch_serves_the_old_value_only_stale() -> None:
    f = Fixture()
    await f.service.lookup(V, "k")
    f.script.error = TransientError("a", "down")
    await f.deliver(hint(version="2"))
    result = await f.service.lookup(V, "k")
    assert (result.state, result.value) == (CacheState.STALE, "v1")


async def test_a_load_in_flight_during_the_event_does_not_store_the_old_value_as_fresh() -> None:
    f = Fixture()
    f.script.gate = asyncio.Event()
    lookup = asyncio.create_task(f.service.lookup(V, "k"))  # reads v1, held at the gate
    await f.script.called.wait()
    f.feed.rounds.append([hint(version="2")])
    await f.runner.round()
    f.script.gate.set()
    await lookup
    assert f.service.cache.fresh((V, "k", None)) is None  # what it read may predate the change


async def test_per_key_interval_and_feed_rate_bound_refetches() -> None:
    feed = QueueFeed(FeedOptions(refetch_rate=1.0, key_interval=0.0))
    f = Fixture(feed)
    for key in ("k", "k2", "k3"):
        f.script.values[(V, key)] = "x"
        await f.service.lookup(V, key)
    await f.deliver(hint("k"), hint("k"), hint("k2"), hint("k3"))  # "k" twice: one refetch
    refetches = f.metrics.registry.get_sample_value
    labels = {"feed": "a", "trigger": "event", "result": "limited"}
    assert refetches("secrets_agent_feed_refetches_total", labels) == 2  # one token a second
    assert len(f.script.calls) + f.script.revalidations == 4
    # Limited keys are still not fresh: their next read goes upstream.
    assert (await f.service.lookup(V, "k3")).state is CacheState.MISS


async def test_a_failing_feed_is_a_detail_and_a_gap_revalidates() -> None:
    f = Fixture(QueueFeed(FeedOptions(backoff_initial=0.01, backoff_max=0.02)))
    await f.service.lookup(V, "k")
    f.feed.rounds.append(TransientError("a", "queue unreachable"))
    runner = asyncio.create_task(f.runner.run())
    try:
        await until(lambda: "failing" in f.runner.health().detail)
        health = f.runner.health()
        assert health.ready and "queue unreachable" in health.detail
        assert (await f.service.lookup(V, "k")).state is CacheState.HIT  # still serving
        f.script.values[(V, "k")], f.script.versions[(V, "k")] = "v3", "3"
        await until(lambda: f.runner.health().detail == "ok" and len(f.script.calls) == 2)
        await f.runner.idle()
        assert (await f.service.lookup(V, "k")).value == "v3"  # revalidated after the gap
    finally:
        runner.cancel()
        await f.runner.close()


def test_ids_for_inverts_a_backend_naming_function() -> None:
    def named(kind: Kind, secret_id: str, team: str | None) -> str | None:
        base = "p/conns/" if kind is C else "p/vars/"
        return base + (f"{team}--{secret_id}" if team else secret_id)

    assert ids_for("p/vars/x", (C, V), named) == [(V, "x")]
    assert ids_for("p/conns/t--db", (C, V), named) == [(C, "t--db"), (C, "db")]
    assert ids_for("other/x", (C, V), named) == []
    assert ids_for("p/vars/../x", (C, V), named) == []


class Lease:
    """A fleet's lease and channel, faked behind the Consumers interface."""

    def __init__(self) -> None:
        self.ours = False
        self.relayed: list[Hint] = []
        self.listener: Relayed | None = None
        self.released = 0

    async def turn(self, feed: str, ttl: float) -> bool:
        return self.ours

    def relay(self, feed: str, hints: Sequence[Hint]) -> None:
        self.relayed.extend(hints)

    def listen(self, feed: str, relayed: Relayed) -> None:
        self.listener = relayed

    async def release(self, feed: str) -> None:
        self.released += 1


async def test_a_standby_node_takes_the_feed_over_and_revalidates() -> None:
    f = Fixture(QueueFeed(FeedOptions(backoff_initial=0.01, key_interval=0.0)))
    lease = Lease()
    runner = FeedRunner(f.feed, f.runner.link, f.service, f.metrics, consumers=lease)
    await f.service.lookup(V, "k")
    f.feed.rounds.append([hint(version="9")])
    await runner.round()
    assert runner.health().detail.startswith("standby") and f.feed.rounds  # not consumed
    f.script.values[(V, "k")], f.script.versions[(V, "k")] = "v9", "9"
    lease.ours = True
    await runner.round()  # takes over: revalidates what it holds, then applies the event
    await runner.idle()
    assert (await f.service.lookup(V, "k")).value == "v9"
    assert [h.secret_id for h in lease.relayed] == ["k"]
    # Another node's relayed hint lands here as its own would.
    other = Fixture()
    await other.service.lookup(V, "k")
    other.script.values[(V, "k")], other.script.versions[(V, "k")] = "v9", "9"
    other.runner.apply_relayed(lease.relayed)
    assert other.service.cache.fresh((V, "k", None)) is None  # not fresh; the next read fetches
    assert (await other.service.lookup(V, "k")).value == "v9"
    await runner.close()
    assert lease.released == 1  # the holder lets go at once


async def test_a_replica_behind_the_event_is_asked_again_until_the_version_moves() -> None:
    f = Fixture()
    await f.service.lookup(V, "k")
    f.script.values[(V, "k")] = "v1-still"  # the write has not reached this replica yet
    f.feed.rounds.append([hint(version="2")])
    await f.runner.round()
    # The re-read answered the old version: it is not left fresh (without the retry it would
    # be, and this wait would fail).
    await until(
        lambda: f.script.revalidations >= 1 and f.service.cache.fresh((V, "k", None)) is None
    )
    f.script.values[(V, "k")], f.script.versions[(V, "k")] = "v2", "2"
    await f.runner.idle()
    assert (await f.service.lookup(V, "k")).value == "v2"


class SwallowingFeed(QueueFeed):
    """A receive that eats a cancellation and returns, as some library calls do when the
    cancellation lands as they finish (asyncio.wait_for on 3.11, for one)."""

    async def receive(self, held: Held) -> list[Message]:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.01)
        return []


async def test_closing_stops_a_feed_whose_round_swallowed_the_cancellation() -> None:
    from secrets_agent.lookup.feeds import ChangeFeeds

    f = Fixture(SwallowingFeed())
    feeds = ChangeFeeds([f.runner])
    feeds.start()
    await until(lambda: f.runner.health().detail == "ok")
    closing = asyncio.ensure_future(feeds.close())
    # A hang guard, not a timing claim: a runner that loops on after close never returns.
    done, _ = await asyncio.wait({closing}, timeout=60)
    assert closing in done, "the feed ran on after close"
    f.runner.stop()  # (when the assertion failed: let the runaway loop end with the test)


def gauge(f: Fixture, name: str) -> float | None:
    return f.metrics.registry.get_sample_value(name, {"feed": "a"})


async def test_a_node_that_lost_the_lease_while_failing_stands_by_healthy() -> None:
    # A holder whose queue failed backs off; its lease lapses and another node takes the feed
    # over. This node is then a healthy standby: not "failing" in /readyz, up and alive in the
    # metrics (else the failing and silent alerts fire on every node but the consumer).
    f = Fixture(QueueFeed(FeedOptions(backoff_initial=0.01, backoff_max=0.02)))
    lease = Lease()
    lease.ours = True
    runner = FeedRunner(f.feed, f.runner.link, f.service, f.metrics, consumers=lease)
    f.feed.rounds.append(TransientError("a", "queue unreachable"))
    task = asyncio.create_task(runner.run())
    try:
        await until(lambda: "failing" in runner.health().detail)
        lease.ours = False
        await until(lambda: runner.health().detail.startswith("standby"))
        assert gauge(f, "secrets_agent_feed_up") == 1
        assert (gauge(f, "secrets_agent_feed_last_receive_timestamp_seconds") or 0) > 0
    finally:
        runner.stop()
        task.cancel()
        await runner.close()


async def test_a_standby_node_reports_its_loop_alive() -> None:
    f = Fixture(QueueFeed(FeedOptions(backoff_initial=0.01)))
    clocks = Clocks(wall=lambda: 7000.0, pace=f.pace, rng=lambda: 0.0)
    runner = FeedRunner(f.feed, f.runner.link, f.service, f.metrics, clocks, Lease())
    await runner.round()
    assert runner.health().detail.startswith("standby")
    assert gauge(f, "secrets_agent_feed_up") == 1  # nothing is failing here
    assert gauge(f, "secrets_agent_feed_last_receive_timestamp_seconds") == 7000.0


async def test_a_duplicate_at_the_consumer_is_still_relayed_to_the_fleet() -> None:
    # The consumer already holds the version the event names (it read the rotated value
    # itself); another node may still hold the old one and must hear of the change.
    f = Fixture()
    lease = Lease()
    lease.ours = True
    runner = FeedRunner(f.feed, f.runner.link, f.service, f.metrics, consumers=lease)
    await f.service.lookup(V, "k")  # version "1"
    f.feed.rounds.append([hint(version="1")])
    await runner.round()
    await runner.idle()
    assert f.events("duplicate") == 1 and len(f.script.calls) == 1  # no read here
    assert [(h.secret_id, h.version) for h in lease.relayed] == [("k", "1")]
    other = Fixture()
    other.script.versions[(V, "k")] = "0"
    await other.service.lookup(V, "k")  # the old version
    other.script.versions[(V, "k")] = "1"
    other.runner.apply_relayed(lease.relayed)
    assert other.service.cache.fresh((V, "k", None)) is None  # the next read fetches
    await runner.close()


class UnstartableFeed(QueueFeed):
    async def start(self) -> None:
        raise TransientError("a", "no credentials for the queue here")


async def test_a_node_whose_feed_cannot_start_still_hears_the_fleet() -> None:
    # Its own client cannot start (another node consumes the feed anyway): what the consumer
    # relays must still reach this node's cache.
    f = Fixture(UnstartableFeed())
    lease = Lease()
    runner = FeedRunner(f.feed, f.runner.link, f.service, f.metrics, consumers=lease)
    await f.service.lookup(V, "k")
    task = asyncio.create_task(runner.run())
    try:
        await until(lambda: "failing" in runner.health().detail)
        assert lease.listener is not None
        lease.listener([Hint(V, "k", "2")])
        assert f.service.cache.fresh((V, "k", None)) is None  # the next read fetches
    finally:
        runner.stop()
        task.cancel()
        await runner.close()


class FoldingFeed(QueueFeed):
    """Names in which "_" and "-" are one character (Key Vault's): hints name the "-" form."""

    def fold(self, secret_id: str) -> str:
        return secret_id.replace("_", "-")

    @property
    def folds(self) -> bool:
        return True


class RecordingTier(NoSharedTier):
    """The fleet tier's invalidations, recorded (the tier faked behind its interface)."""

    def __init__(self) -> None:
        self.invalidated: list[tuple[Kind | None, str | None]] = []

    def invalidate(self, kind: Kind | None, secret_id: str | None) -> None:
        self.invalidated.append((kind, secret_id))


async def test_the_fleets_copy_is_dropped_under_the_id_it_was_read_as() -> None:
    # The fleet tier keeps "my_var" under that id; a Key Vault event names "my-var". Dropping
    # only "my-var" left the fleet's old copy for the refetch (and every node) to read again.
    f = Fixture(FoldingFeed())
    tier = RecordingTier()
    f.service.shared = tier
    f.script.values[(V, "my_var")], f.script.versions[(V, "my_var")] = "old", "1"
    await f.service.lookup(V, "my_var")
    f.script.versions[(V, "my_var")] = "2"
    await f.deliver(Message((Hint(V, "my-var", "2"),)))
    assert (V, "my_var") in tier.invalidated
    relayed = Fixture(FoldingFeed())
    relayed.service.shared = other = RecordingTier()
    relayed.script.values[(V, "my_var")], relayed.script.versions[(V, "my_var")] = "old", "1"
    await relayed.service.lookup(V, "my_var")
    relayed.runner.apply_relayed([Hint(V, "my-var", "2")])
    # Another node holds an id the consumer may not (the consumer names the fold only).
    assert other.invalidated == [(V, "my_var")]


class PollFeed(QueueFeed):
    """A feed that looks for changes every 30 s: a change waits up to that to be seen."""

    @property
    def poll_delay(self) -> float:
        return 30.0


async def test_a_poll_feed_is_not_lagging_for_its_own_poll_interval() -> None:
    f = Fixture(PollFeed(FeedOptions(key_interval=0.0, lag_warning=10.0)))
    await f.service.lookup(V, "k")
    f.script.versions[(V, "k")] = "2"
    await f.deliver(Message((Hint(V, "k", "2", at=5000.0 - 27),)))  # seen within one poll
    assert f.runner.health().detail == "ok"
    f.script.versions[(V, "k")] = "3"
    await f.deliver(Message((Hint(V, "k", "3", at=5000.0 - 102),)))  # a poll and the warning
    assert f.runner.health().detail.startswith("lagging")


async def test_an_event_time_no_queue_could_have_kept_is_not_taken_for_lag() -> None:
    """A time older than any manager keeps an event (a broken or hostile sender: 40 days,
    year 1) still applies the change, but says nothing about how late the feed is: no
    "lagging" for five minutes, no centuries in the lag histogram."""
    f = Fixture(PollFeed(FeedOptions(key_interval=0.0, lag_warning=10.0)))
    await f.service.lookup(V, "k")
    for version, at in (("2", 5000.0 - 40 * 86400), ("3", -62135596800.0)):
        f.script.versions[(V, "k")] = version
        f.script.values[(V, "k")] = f"v{version}"
        await f.deliver(Message((Hint(V, "k", version, at=at),)))
        assert (await f.service.lookup(V, "k")).value == f"v{version}"
    assert f.runner.health().detail == "ok"
    lag = {"feed": "a"}
    assert not f.metrics.registry.get_sample_value("secrets_agent_feed_lag_seconds_count", lag)


async def test_a_failing_consumer_keeps_its_lease_while_it_backs_off() -> None:
    # Its retries renew the lease; a backoff longer than the lease handed the failing feed
    # from node to node, each failing a while then standing by, so no node stayed failing
    # long enough for the alert.
    waits: list[float] = []
    options = FeedOptions(backoff_initial=1.0, backoff_max=600.0, lease_ttl=30.0)
    f = Fixture(QueueFeed(options))
    failures = 8
    f.feed.rounds.extend(TransientError("a", "queue unreachable") for _ in range(failures))

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)

    clocks = Clocks(wall=lambda: 5000.0, pace=f.pace, rng=lambda: 1.0, sleep=sleep)
    lease = Lease()
    lease.ours = True
    runner = FeedRunner(f.feed, f.runner.link, f.service, f.metrics, clocks, lease)
    task = asyncio.create_task(runner.run())
    try:
        await until(lambda: len(waits) >= failures)
        assert max(waits) <= 30.0 / 2  # a retry (and its renewal) within half the lease
        assert waits[:3] == [1.5, 3.0, 6.0]  # still doubling below that, jitter at its top
    finally:
        runner.stop()
        task.cancel()
        await runner.close()


async def test_a_hint_finds_the_held_copy_in_whatever_spelling_the_names_share() -> None:
    # A node of another version (a rolling upgrade) may relay "MY-VAR" where this one folds
    # to "my-var": both name the held "my_var".
    f = Fixture(LowerFoldingFeed())
    f.script.values[(V, "my_var")], f.script.versions[(V, "my_var")] = "old", "1"
    await f.service.lookup(V, "my_var")
    f.runner.apply_relayed([Hint(V, "MY-VAR", "2")])
    assert f.service.cache.fresh((V, "my_var", None)) is None


class LowerFoldingFeed(QueueFeed):
    def fold(self, secret_id: str) -> str:
        return secret_id.replace("_", "-").lower()


async def test_a_late_event_is_read_once_not_taken_for_a_lagging_replica() -> None:
    # An event a minute old naming a version the upstream no longer answers was superseded
    # (reordered, redelivered): one re-read settles it, not four and seconds of misses.
    f = Fixture()
    await f.service.lookup(V, "k")  # version "1", what the upstream answers
    await f.deliver(Message((Hint(V, "k", "0", at=5000.0 - 60),)))
    assert len(f.script.calls) + f.script.revalidations == 2
    assert f.service.cache.fresh((V, "k", None)) is not None


async def test_two_versions_in_flight_for_one_key_cost_one_read() -> None:
    # Two rotations in quick succession: the pending re-read must not keep asking for the
    # first version once the second is announced.
    f = Fixture()
    await f.service.lookup(V, "k")
    f.script.values[(V, "k")], f.script.versions[(V, "k")] = "v3", "3"
    await f.deliver(hint(version="2"), hint(version="3"))
    assert (len(f.script.calls), f.script.revalidations) == (2, 1)  # one re-read: ask, fetch
    assert f.service.cache.fresh((V, "k", None)) is not None


@pytest.mark.parametrize("pattern", ["", "^my_"])
async def test_a_load_in_flight_under_another_spelling_does_not_store_the_old_value_as_fresh(
    pattern: str,
) -> None:
    # A first read of "my_var" is on its way when Key Vault's event names "my-var": the note
    # of the change was kept under "my-var" only, so the old value was stored fresh for a TTL.
    # (With a lookup pattern "my-var" does not match, the event was even ignored.)
    f = Fixture(FoldingFeed(), pattern=pattern)
    f.script.values[(V, "my_var")], f.script.versions[(V, "my_var")] = "old", "1"
    f.script.gate = asyncio.Event()
    lookup = asyncio.create_task(f.service.lookup(V, "my_var"))
    await f.script.called.wait()
    f.feed.rounds.append([Message((Hint(V, "my-var", "2"),))])
    await f.runner.round()
    f.script.gate.set()
    assert (await lookup).value == "old"  # its caller is answered all the same
    assert f.service.cache.fresh((V, "my_var", None)) is None
    assert f.events("applied") == 1


async def test_a_folded_name_a_pattern_would_refuse_is_still_passed_on_to_the_fleet() -> None:
    # The consumer holds nothing; another node holds "my_var", read under the pattern "^my_".
    # Key Vault's event names "my-var", which the pattern refuses: ruled out by it, the change
    # was counted ignored and never passed on, and the other node served the old value fresh.
    f = Fixture(FoldingFeed(), pattern="^my_")
    lease = Lease()
    lease.ours = True
    runner = FeedRunner(f.feed, f.runner.link, f.service, f.metrics, consumers=lease)
    f.feed.rounds.append([Message((Hint(V, "my-var", "2"),))])
    await runner.round()
    await runner.idle()
    assert [h.secret_id for h in lease.relayed] == ["my-var"]
    assert f.events("ignored") == 0
    other = Fixture(FoldingFeed(), pattern="^my_")
    other.script.values[(V, "my_var")], other.script.versions[(V, "my_var")] = "old", "1"
    await other.service.lookup(V, "my_var")
    other.runner.apply_relayed(lease.relayed)
    assert other.service.cache.fresh((V, "my_var", None)) is None
    await runner.close()
