"""Where change-feed hints are applied: drop what a node holds, fetch it again, bounded.

An event is a hint, never a value. For each hint about a name the backend serves, the node's
copy stops being fresh at once (a deleted or disabled secret is forgotten), the fleet's copy is
dropped, and a held key is fetched again in the background (single-flight, jittered), so a hot
key is fresh before its next read. If that fetch fails, the old value is served only as
``X-Cache: STALE`` (stale-on-error, as after a TTL) until the upstream answers again.

A failing feed is never an outage: lookups go on with TTLs, ``/readyz`` carries a detail, one
line is logged per interval; when it answers again, what the node holds from its backend is
revalidated at the feed's rate, since events may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from secrets_agent.backends.base import Health
from secrets_agent.backends.feeds import Feed, Hint, Message
from secrets_agent.errors import AgentError
from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import Key
from secrets_agent.lookup.chain import Link
from secrets_agent.lookup.pace import Bucket, Throttled
from secrets_agent.lookup.service import SecretService
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Index = dict[tuple[Kind, str], list[tuple[Key, str | None]]]
CONCURRENCY = 4  # background refetches at a time, per feed
JITTER = 0.25  # seconds a refetch may wait, so a fleet's nodes do not all read at once
READINESS_PREFIX = "[feed:"  # not a valid backend name: a feed never hides a backend
LAG_MEMORY = 300.0  # seconds a late event keeps the feed "lagging" in /readyz
# Pub/Sub's longest retention (SQS keeps 14 days; only a Storage queue can keep a message for
# ever): an older time is a broken or hostile sender's far more often than a month's backlog,
# and says nothing about how late the feed is now.
MAX_EVENT_AGE = 31 * 86400.0
RETRIES = 3  # re-reads after one that answered another version than the event named
RETRY_DELAY = 0.5  # seconds before the first of them, doubling
# An event older than this when its re-read answers another version is late or superseded,
# not ahead of a lagging replica (those catch up within seconds): no retries.
REPLICA_LAG = 10.0


@dataclass(frozen=True)
class Clocks:
    """Wall time (events carry it) and a monotonic pace for the rate bounds; tests inject."""

    wall: Clock = time.time
    pace: Clock = time.monotonic
    rng: Callable[[], float] = random.random
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


Relayed = Callable[[Sequence[Hint]], None]


class Consumers(Protocol):
    """Who consumes a feed, and who hears of what it applied.

    Alone, a node reads its own queue and tells nobody. In a fleet (``lookup/feed_lease.py``)
    one node at a time holds a lease per feed in the store, and relays what it applied over the
    tier's channel to the others, which hand it to ``FeedRunner.apply_relayed``.
    """

    async def turn(self, feed: str, ttl: float) -> bool:
        """True while this node should consume ``feed`` (it holds, or renewed, its lease)."""
        ...

    def relay(self, feed: str, hints: Sequence[Hint]) -> None:
        """Tell the other nodes what this node applied; returns at once."""
        ...

    def listen(self, feed: str, relayed: Relayed) -> None:
        """Where other nodes' relayed hints for ``feed`` land."""
        ...

    async def release(self, feed: str) -> None:
        """Stop consuming (shutdown, reload): another node takes over at once."""
        ...


class Alone:
    """Every node consumes its own queue or subscription."""

    async def turn(self, feed: str, ttl: float) -> bool:
        return True

    def relay(self, feed: str, hints: Sequence[Hint]) -> None:
        return None

    def listen(self, feed: str, relayed: Relayed) -> None:
        return None

    async def release(self, feed: str) -> None:
        return None


class FeedRunner:
    """Receives one backend's feed in a loop and applies what it says to the service."""

    def __init__(
        self,
        feed: Feed,
        link: Link,
        service: SecretService,
        metrics: Metrics,
        clocks: Clocks | None = None,
        consumers: Consumers | None = None,
    ) -> None:
        self.feed, self.link, self.service = feed, link, service
        self._consumers: Consumers = consumers or Alone()
        self.name = feed.backend
        self._metrics = metrics
        self._clocks = clocks or Clocks()
        o = feed.options
        self._bucket = Bucket(o.refetch_rate, self._clocks.pace)
        self._limit = asyncio.Semaphore(CONCURRENCY)
        self._last_refetch: dict[Key, float] = {}
        self._pending: dict[Key, asyncio.Task[None]] = {}
        self._wants: dict[Key, str | None] = {}  # the version a pending refetch should find
        self._malformed_log = Throttled(o.log_interval, self._clocks.pace, log)
        self._foreign_log = Throttled(o.log_interval, self._clocks.pace, log)
        self._failure_log = Throttled(o.log_interval, self._clocks.pace, log)
        self._started = False
        self._live = False  # a round went through: "ok" means it received (or stands by)
        self._failing: str | None = None
        self._gap = False  # failed since the last good round: events may have been missed
        self._standby = False  # another node consumes this feed (a fleet's lease)
        self._lag: tuple[float, float] | None = None  # the last event's lag, and when
        self._revalidation: asyncio.Task[None] | None = None
        self._closed = False
        metrics.feed_up.labels(self.name).set(0)

    # -- health ----------------------------------------------------------------------------

    def health(self) -> Health:
        """Always ready (a feed is a freshness aid, lookups never need it); the detail says."""
        if self._failing is not None:
            return Health(True, f"failing, serving on TTLs: {self._failing}")
        if not self._live:
            return Health(True, "starting")
        if self._standby:
            return Health(True, "standby: another node consumes this feed")
        if self._lag is not None:
            lag, seen = self._lag
            recent = self._clocks.pace() - seen < LAG_MEMORY
            if recent and lag > self.feed.options.lag_warning + self.feed.poll_delay:
                return Health(True, f"lagging: the last event arrived {lag:.0f}s after it")
        return Health(True, "ok")

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Receive and apply until closed or cancelled; failures back off, never end it."""
        delay = self.feed.options.backoff_initial
        # Until closed, not only until cancelled: an SDK or library call that swallows a
        # cancellation (finishing at the same moment) must not keep a closed feed running.
        while not self._closed:
            try:
                await self.round()
                delay = self.feed.options.backoff_initial
                await asyncio.sleep(0)  # a feed that answers at once must not hold the loop
            except AgentError as exc:
                self._failed(str(exc))
            except Exception as exc:  # our own bug must not end the feed (nor leak SDK text)
                log.error("feed %r: unexpected %s", self.name, type(exc).__name__)
                self._failed(f"unexpected {type(exc).__name__}")
            else:
                continue
            # At most half the lease: a consumer's retries renew it, so a failing feed stays
            # with one node (failing, and alerting) instead of passing round the fleet.
            await self._clocks.sleep(min(delay * (0.5 + self._clocks.rng()), self.lease_ttl / 2))
            delay = min(delay * 2, self.feed.options.backoff_max)

    async def round(self) -> None:
        """Start the feed if needed, receive once, apply, then remove what was received."""
        if not self._started:
            # Listening first: a node whose own client cannot start still hears the consumer.
            self._consumers.listen(self.name, self.apply_relayed)
            await self.feed.start()
            self._started = True
        if not await self._consumers.turn(self.name, self.lease_ttl):
            self._standing_by()
            await asyncio.sleep(self.feed.options.backoff_initial)
            return
        if self._standby:  # taking the feed over: what the last consumer missed is not trusted
            self._standby, self._gap = False, True
        messages = await self.feed.receive(self._held)
        self._received()
        self._consumers.relay(self.name, self.apply(messages))
        if messages:
            await self.feed.ack(messages)

    @property
    def lease_ttl(self) -> float:
        return self.feed.lease_ttl

    def apply_relayed(self, hints: Sequence[Hint]) -> None:
        """Apply what the node consuming this feed applied (and relayed) there; that node
        already dropped the fleet's copies."""
        self.apply([Message(tuple(hints))], relayed=True)

    def _failed(self, reason: str) -> None:
        self._failing, self._gap = reason, True
        self._metrics.feed_up.labels(self.name).set(0)
        self._failure_log("feed %r failing, serving on TTLs: %s", self.name, reason)

    def _standing_by(self) -> None:
        """Another node consumes the feed: this node's part is done, so it is neither failing
        nor silent (the alerts fire on the consumer, not on every node of the fleet)."""
        self._standby = self._live = True
        self._failing = None  # a failure while it held the lease is the new holder's to see
        self._metrics.feed_up.labels(self.name).set(1)
        self._metrics.feed_last_receive.labels(self.name).set(self._clocks.wall())

    def _received(self) -> None:
        self._live = True
        self._metrics.feed_up.labels(self.name).set(1)
        self._metrics.feed_last_receive.labels(self.name).set(self._clocks.wall())
        if self._failing is not None:
            log.info("feed %r is receiving again; revalidating what this node holds", self.name)
            self._failing = None
        if self._gap:
            self._gap = False
            self.revalidate_held()

    # -- applying --------------------------------------------------------------------------

    def apply(self, messages: Sequence[Message], *, relayed: bool = False) -> list[Hint]:
        """Apply each message's hints; count what was ignored or unparseable; return the
        hints about ids the backend serves (for the other nodes of a fleet)."""
        events = self._metrics.feed_events
        held: Index | None = None  # built once per batch, on its first hint
        out: list[Hint] = []
        for message in messages:
            self._metrics.feed_received.labels(self.name).inc()
            if message.malformed:
                events.labels(self.name, "malformed").inc()
                self._malformed_log("feed %r: removed an unparseable message", self.name)
                continue
            if message.foreign:
                events.labels(self.name, "foreign").inc()
                self._foreign_log(
                    "feed %r: removed an event about a secret of another %s",
                    self.name,
                    message.foreign,
                )
                continue
            if message.hints and held is None:
                held = self._index()
            fold = self.feed.fold  # hints in any spelling that names the same upstream secret
            outcomes = [
                (hint, self._apply(hint, held.get((hint.kind, fold(hint.secret_id)), []), relayed))
                for hint in message.hints
                if held is not None
            ]
            applied = [outcome for _, outcome in outcomes if outcome is not None]
            # Duplicates too: this node held the version, another node may hold an older one.
            out += [hint for hint, outcome in outcomes if outcome is not None]
            if not applied:
                events.labels(self.name, "ignored").inc()
            else:
                events.labels(self.name, "applied" if any(applied) else "duplicate").inc()
        return out

    def _serves(self, hint: Hint) -> bool:
        if self.feed.folds:
            # The hint names one of several ids ("my-var" for "my_var" too) and a lookup pattern
            # sees ids: ruled out by it, this node would neither expire nor pass on a change to
            # an id the fleet's other nodes read. Only the kind can say no.
            return self.link.backend.supports(hint.kind)
        teams: tuple[str | None, ...] = (None, *self.link.teams)
        return any(self.link.accepts(hint.kind, hint.secret_id, team) for team in teams)

    def _apply(
        self, hint: Hint, keys: list[tuple[Key, str | None]], relayed: bool = False
    ) -> bool | None:
        """Expire (or forget) every held copy of the id; False when all held it at the version,
        None when the backend does not serve the id."""
        # Loads out now of an id in another spelling of the same name (Key Vault's "my_var"
        # for an event's "my-var"), held or not yet: what they read may predate the change.
        named = self.feed.fold(hint.secret_id)
        loading = {i for i in self.service.loading(hint.kind) if self.feed.fold(i) == named}
        if not keys and not loading and not self._serves(hint):
            return None
        if (
            keys
            and not hint.gone
            and hint.version is not None
            and all(version == hint.version for _, version in keys)
        ):
            return False  # a duplicate or late event: versions decide
        # The fleet's copies, under every id this node read the name as ("my_var" for a Key
        # Vault event's "my-var"): the consumer drops them all; another node, the ones the
        # consumer could not know of.
        ids = {key[1] for key, _ in keys} | {hint.secret_id} | loading
        for secret_id in sorted(ids - {hint.secret_id} if relayed else ids):
            self.service.shared.invalidate(hint.kind, secret_id)
        for secret_id in ids:
            self.service.note_change(hint.kind, secret_id)  # a load out now is already old
        for key, _ in keys:
            self.service.changed(key, gone=hint.gone)
            if not relayed:  # relayed: the consumer refilled the fleet's copy; reads find it
                self._schedule(key, "event", hint.at, None if hint.gone else hint.version)
        if not keys or relayed:
            self._observe_lag(hint.at)  # nothing held: the next read fetches the new value
        return True

    def _index(self) -> Index:
        """Held keys by (kind, id as hints name it): every team's, and misses, with versions.

        One pass over the cache per received batch, not one per event.
        """
        fold = self.feed.fold
        index: Index = {}
        for key, source, version in self.service.cache.holding():
            if source in (self.name, None):
                index.setdefault((key[0], fold(key[1])), []).append((key, version))
        return index

    def _held(self) -> list[Key]:
        """The keys (every team's) this node holds values for from this feed's backend."""
        keys = {key for key, source, _ in self.service.cache.holding() if source == self.name}
        return sorted(keys, key=lambda k: (k[0], k[1], k[2] or ""))

    # -- refetching ------------------------------------------------------------------------

    def _schedule(
        self, key: Key, trigger: str, at: float | None, want: str | None = None, attempt: int = 0
    ) -> None:
        """Fetch ``key`` again in the background: at most once per key_interval, jittered."""
        if key in self._pending:
            # One pending refetch per key; it runs after this change was noted. Events that
            # name different versions (unordered): none of them is the one to insist on.
            if self._wants.get(key) != want:
                self._wants[key] = None
            return
        self._wants[key] = want
        now = self._clocks.pace()
        wait = self._last_refetch.get(key, -1e18) + self.feed.options.key_interval - now
        wait = max(wait, RETRY_DELAY * 2 ** (attempt - 1) if attempt else 0.0)
        delay = max(0.0, wait) + JITTER * self._clocks.rng()
        task = asyncio.ensure_future(self._refetch(key, trigger, at, delay, want, attempt))
        self._pending[key] = task
        task.add_done_callback(lambda t: self._forget(key, t))

    def _forget(self, key: Key, task: asyncio.Task[None]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]

    async def _refetch(
        self,
        key: Key,
        trigger: str,
        at: float | None,
        delay: float,
        want: str | None = None,
        attempt: int = 0,
    ) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        self._pending.pop(key, None)  # from here on a new change schedules another refetch
        want = self._wants.pop(key, want)
        if not self._bucket.take():
            # Over the feed's rate: the entry is already not fresh, so the next read fetches.
            self._metrics.feed_refetches.labels(self.name, trigger, "limited").inc()
            return
        self._last_refetch[key] = self._clocks.pace()
        if len(self._last_refetch) > 4 * len(self.service.cache) + 1024:
            del self._last_refetch[next(iter(self._last_refetch))]
        async with self._limit:
            try:
                loaded = await self.service.renew(key)
            except AgentError as exc:
                log.debug("feed %r: refetch of a %s failed: %s", self.name, key[0], exc)
                self._metrics.feed_refetches.labels(self.name, trigger, "error").inc()
                return
        self._metrics.feed_refetches.labels(self.name, trigger, loaded.outcome).inc()
        held = self.service.cache.get(*key)
        if (
            want is not None
            and attempt < RETRIES
            and (at is None or self._clocks.wall() - at < REPLICA_LAG)
            and held is not None
            and held.version is not None
            and held.version != want
        ):
            # The event named a version the upstream did not answer with: a replica that has
            # not seen the write yet (or a late event). Not fresh; ask again shortly, bounded.
            self.service.changed(key)
            self._schedule(key, trigger, at, want, attempt + 1)
            return
        self._observe_lag(at)

    def _observe_lag(self, at: float | None) -> None:
        if at is None:
            return
        lag = max(0.0, self._clocks.wall() - at)
        if lag > MAX_EVENT_AGE:
            return
        self._lag = (lag, self._clocks.pace())
        self._metrics.feed_lag.labels(self.name).observe(lag)

    def revalidate_held(self) -> None:
        """After a gap: refetch what this node holds from the backend, at the feed's rate."""
        if self._revalidation is None or self._revalidation.done():
            self._revalidation = asyncio.ensure_future(self._revalidate())

    async def _revalidate(self) -> None:
        keys = [key for key, source, _ in self.service.cache.holding() if source == self.name]
        for key in keys:
            await self._token()
            self._last_refetch[key] = self._clocks.pace()
            async with self._limit:
                try:
                    loaded = await self.service.renew(key)
                except AgentError:
                    self._metrics.feed_refetches.labels(self.name, "gap", "error").inc()
                    continue
            self._metrics.feed_refetches.labels(self.name, "gap", loaded.outcome).inc()

    async def _token(self) -> None:
        """Wait for the rate bound to allow one more upstream read."""
        while not self._bucket.take():  # noqa: ASYNC110 - a rate, not an event to wait on
            await asyncio.sleep(max(0.01, self._bucket.wait()))

    async def idle(self) -> None:
        """Wait for the refetches in progress (tests)."""
        while self._pending or (self._revalidation is not None and not self._revalidation.done()):
            tasks = [*self._pending.values()]
            if self._revalidation is not None:
                tasks.append(self._revalidation)
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """No more rounds (``run`` returns at its next turn, cancelled or not)."""
        self._closed = True

    async def close(self) -> None:
        self.stop()
        tasks = [*self._pending.values()]
        if self._revalidation is not None:
            tasks.append(self._revalidation)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if not self._standby:
                await self._consumers.release(self.name)
            await self.feed.close()
        except Exception as exc:  # closing one feed must not stop the others
            log.warning("feed %r failed to close: %s", self.name, type(exc).__name__)


class ChangeFeeds:
    """Every feed of one runtime: started with it, closed when it retires."""

    def __init__(self, runners: Sequence[FeedRunner]) -> None:
        self.runners = tuple(runners)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(runner.run()) for runner in self.runners]

    def readiness(self) -> dict[str, Health]:
        return {f"{READINESS_PREFIX}{r.name}]": r.health() for r in self.runners}

    async def close(self) -> None:
        for runner in self.runners:
            runner.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for runner in self.runners:
            await runner.close()
