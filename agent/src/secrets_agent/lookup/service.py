"""Lookup service: cache first, one upstream call per key at a time, stale on transient errors.

Every upstream call goes through ``_load`` under the per-key single-flight, whatever asked for
it: a lookup that missed, a refresh-ahead in the background, a retry of a value served stale,
or a peer's refresh-now.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

from cachetools import TTLCache

from secrets_agent.errors import AgentError, TransientError
from secrets_agent.kinds import Kind
from secrets_agent.lookup.budget import Budget
from secrets_agent.lookup.cache import Cached, CacheState, Key, Result, SecretCache
from secrets_agent.lookup.chain import BackendChain, Found
from secrets_agent.lookup.refresh import Refresher
from secrets_agent.lookup.shared.tier import NoSharedTier, SharedTier
from secrets_agent.lookup.singleflight import SingleFlight
from secrets_agent.ops.logs import RateLimited
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)


_RESULT_LABEL = {state: state.lower() for state in CacheState}
_KIND_LABEL = {kind: kind.value for kind in Kind}


@dataclass(frozen=True)
class Loaded:
    """What one upstream round gave: a value (None: not found) and whether it was revalidated."""

    value: str | None
    source: str | None
    revalidated: bool = False
    age: float = 0.0  # a value another node fetched: how long ago

    @property
    def outcome(self) -> str:
        if self.revalidated:
            return "unchanged"
        return "fetched" if self.value is not None else "gone"


@dataclass(frozen=True)
class RefreshPolicy:
    concurrency: int = 4  # background refreshes at a time, per backend
    now_interval: float = 30.0  # a peer's refresh-now reaches the upstream at most this often
    now_keys: int = 10000  # refresh-now times remembered (the rate limit's memory)
    now_per_peer: int = 60  # forced reads a minute per peer (uid), whatever the ids
    now_total: int = 600  # forced reads a minute for the whole agent


class SecretService:
    def __init__(
        self,
        chain: BackendChain,
        cache: SecretCache,
        metrics: Metrics,
        refresh: RefreshPolicy | None = None,
        shared: SharedTier | None = None,
    ) -> None:
        self.chain, self.cache = chain, cache
        self.shared: SharedTier = shared or NoSharedTier()
        self._metrics = metrics
        policy = self._policy = refresh or RefreshPolicy()
        self._flight: SingleFlight[Loaded] = SingleFlight()
        self._refresher = Refresher(policy.concurrency)
        self._refreshed_now: TTLCache[Key, bool] = TTLCache(
            maxsize=policy.now_keys, ttl=policy.now_interval, timer=cache.clock
        )
        self._budget = Budget(policy.now_per_peer, policy.now_total, cache.clock)
        # An upstream down fails every lookup of every key it held: a line a minute for each.
        self._stale_log = RateLimited(log)
        # Change feeds: the load count when each key last changed upstream, so a load that
        # began before the change cannot store the old value as fresh (``_load``).
        self._loads = 0
        self._changed: dict[tuple[Kind, str], int] = {}

    async def lookup(
        self,
        kind: Kind,
        secret_id: str,
        team: str | None = None,
        *,
        refresh: bool = False,
        peer: int | None = None,
    ) -> Result:
        """The cached value when fresh; ``refresh`` asks the upstream now (rate-limited per
        key, per ``peer`` and for the agent)."""
        key = (kind, secret_id, team)
        forced = refresh and self._may_refresh_now(key, peer)
        if not forced and (result := self.cached(key)) is not None:
            return result
        cached = self.cache.get(kind, secret_id, team)
        if cached is not None and cached.failing and not forced:
            return self._stale_while_failing(key, cached)
        joins = key in self._flight  # then the call's owner counts the refresh, not us
        try:
            if forced and not joins:
                # The fleet's copy is as old as ours: drop it (and tell the other nodes). The
                # tier refuses copies older than now at once, so the load below reaches the
                # upstream (or a newer copy) even before the delete is done.
                self.shared.invalidate(kind, secret_id)
            loaded, shared = await self._flight.do(
                key, lambda: self._load(key, cached, lookup=True)
            )
        except TransientError as exc:
            if forced and not joins:
                self._metrics.refreshes.labels(kind.value, "now", "error").inc()
            self._failing(exc)
            # What the cache holds now, not when the lookup began: meanwhile the value may
            # have been deleted upstream, invalidated, or outlived its stale window.
            held = self.cache.get(kind, secret_id, team)
            if held is None or held.value is None:
                raise
            return self._count(kind, Result(held.value, CacheState.STALE, held.age, held.source))
        if shared:
            self._metrics.coalesced.labels(kind.value).inc()
            self._avoided(key, loaded.source)
        elif forced:
            self._metrics.refreshes.labels(kind.value, "now", loaded.outcome).inc()
        if loaded.revalidated:
            self._metrics.looked_up(kind.value, "revalidated")
            return Result(loaded.value, CacheState.HIT, 0.0, loaded.source)
        return self._count(kind, Result(loaded.value, CacheState.MISS, loaded.age, loaded.source))

    def cached(self, key: Key) -> Result | None:
        """The answer without waiting, if the cache holds a fresh one (a hit or a negative)."""
        result = self.cache.fresh(key)
        if result is None:
            return None
        if result.refresh_due:
            self._refresh_ahead(key, result.source)
        source = result.source
        if source is not None:  # a value: the lookup and the one call it spared, in one call
            self._metrics.served(_KIND_LABEL[key[0]], _RESULT_LABEL[result.state], source)
        else:
            self.spared(key, result.state)
        return result

    def spared_at(self, key: Key) -> tuple[str, ...]:
        """The backends a known miss of ``key`` spares a call to: every one that would be asked
        (fixed for this service: its chain never changes)."""
        return tuple(self.chain.accepting(*key))

    def spared(self, key: Key, state: CacheState) -> None:
        """A cached answer no backend is named for (a known miss): its cache result, and one
        call spared at every backend that would have been asked."""
        self._avoided(key, None)
        self._metrics.looked_up(_KIND_LABEL[key[0]], _RESULT_LABEL[state])

    def carry_limits(self, previous: SecretService) -> None:
        """Keep ``previous``'s refresh-now memory (keys refreshed lately, peers' budgets) when
        the limits are the same: a reload must not hand every peer a fresh allowance."""
        if previous._policy == self._policy and previous.cache.clock is self.cache.clock:
            self._refreshed_now, self._budget = previous._refreshed_now, previous._budget

    def invalidate(self, kind: Kind | None = None, secret_id: str | None = None) -> int:
        self.shared.invalidate(kind, secret_id)  # the fleet's copies, in the background
        for key in self._flight.pending():
            kind_, id_, _ = cast(Key, key)
            if (kind is None or kind_ is kind) and (secret_id is None or id_ == secret_id):
                # A load out now may bring back what the invalidation is meant to forget: what
                # it stores is not fresh (``_load``), so the next lookup asks again.
                self.note_change(kind_, id_)
        return self.cache.invalidate(kind, secret_id)

    def note_change(self, kind: Kind, secret_id: str) -> None:
        """A change feed says the id changed upstream: loads out now must not store as fresh."""
        self._changed[(kind, secret_id)] = self._loads
        while len(self._changed) > 4 * len(self.cache) + 1024:  # bounded: oldest notes first
            del self._changed[next(iter(self._changed))]

    def loading(self, kind: Kind) -> list[str]:
        """The ids of ``kind`` with a load in flight now (any team's)."""
        return [key[1] for key in cast(list[Key], self._flight.pending()) if key[0] is kind]

    def changed(self, key: Key, *, gone: bool = False) -> bool:
        """``key`` changed upstream: its value stops being fresh at once (``gone``: forgotten,
        not even stale). True when the node held it."""
        self.note_change(key[0], key[1])
        return self.cache.drop(key) if gone else self.cache.expire(key)

    async def renew(self, key: Key) -> Loaded:
        """Load ``key`` again after a change; a load already in flight began before the change,
        so this one starts after it. With a fleet tier it reads through the tier, which refuses
        copies older than the change's invalidation: one upstream read for the fleet."""
        await self._flight.settled(key)
        loaded, _ = await self._flight.do(key, lambda: self._load(key, self.cache.get(*key)))
        return loaded

    def refresh_due(self) -> int:
        """Start background refreshes for read keys past their refresh point; return how many."""
        return sum(self._refresh_ahead(key, source) for key, source in self.cache.due_for_refresh())

    async def idle(self) -> None:
        """Wait for the background refreshes in progress."""
        await self._refresher.drain()

    async def close(self, *, final: bool = False) -> None:
        """Stop the background refreshes; ``final`` (the agent stops) also cancels the loads
        still waiting on an upstream, whose callers had ``shutdown_timeout`` to get answers."""
        await self._refresher.close()
        if final:
            await self._flight.cancel()

    async def _load(self, key: Key, cached: Cached | None, *, lookup: bool = False) -> Loaded:
        """The one place the upstream is asked: revalidate the value held, else fetch
        (``lookup``: for a lookup that missed, not the agent's own refresh)."""
        kind, secret_id, team = key
        self._loads += 1
        started = self._loads
        try:
            # With a shared cache, an expired value is refreshed through it (one upstream call
            # for the fleet) rather than revalidated upstream by every node.
            held = None if self.shared.shares_refreshes else _held(cached)
            if held is not None and await self.chain.revalidate(kind, secret_id, held, team):
                self.cache.restamp(kind, secret_id, team)
                return Loaded(held.value, held.source, revalidated=True)
            # Node cache → shared cache (when configured) → upstream: where a miss goes out.
            asked: list[bool] = []

            def upstream() -> Awaitable[Found | None]:
                asked.append(True)
                return self.chain.fetch(kind, secret_id, team)

            shared = await self.shared.fetch(kind, secret_id, team, upstream)
            found, ttl, age = shared.found, shared.ttl, shared.age
            if not asked and lookup:
                # The fleet's copy answered a lookup: the call Airflow would have made. One that
                # answered the agent's own refresh (ahead, stale retry, a feed's renewal) spared
                # Airflow nothing: the lookups it serves count as hits.
                self._avoided(key, None if found is None else found.source)
            if found is None:
                self.cache.put(kind, secret_id, None, team=team, ttl=ttl, age=age)
                return Loaded(None, None, age=age)
            self.cache.put(
                kind,
                secret_id,
                found.value,
                found.source,
                found.version,
                team=team,
                ttl=ttl,
                age=age,
            )
            return Loaded(found.value, found.source, age=age)
        except TransientError:
            self.cache.failed(key)  # if it is stale: served so until a retry succeeds
            raise
        finally:
            if self._changed.get((kind, secret_id), -1) >= started:
                # The upstream changed while this load was out: what it stored may be the old
                # value, so it is not fresh (the change's own renew follows this load).
                self.cache.expire(key)

    def _stale_while_failing(self, key: Key, cached: Cached) -> Result:
        """The upstream failed for this value lately: serve it stale at once rather than make
        every lookup wait on (and add to) a failing upstream; it is asked again in the
        background, with backoff (``SecretCache.failed``)."""
        if cached.retry_due:
            self._refresher.submit(key, cached.source, lambda: self._retry_stale(key))
        return self._count(
            key[0], Result(cached.value, CacheState.STALE, cached.age, cached.source)
        )

    async def _retry_stale(self, key: Key) -> None:
        cached = self.cache.get(*key)
        if cached is None or not cached.failing:
            return  # refreshed, invalidated or past its stale window meanwhile
        try:
            loaded, _ = await self._flight.do(key, lambda: self._load(key, cached))
            result = loaded.outcome
        except TransientError as exc:
            self._failing(exc)
            result = "error"
        except AgentError as exc:
            # Not a passing failure (denied, a bad answer): stop serving it stale, so the next
            # lookup asks the upstream itself and gets the error.
            log.debug("retry of a stale %s failed: %s", key[0], exc)
            self.cache.retry_now(key)
            result = "error"
        self._metrics.refreshes.labels(key[0].value, "stale", result).inc()

    def _failing(self, exc: TransientError) -> None:
        self._stale_log.log(
            exc.backend,
            logging.WARNING,
            "%s: lookups get cached values stale while it fails, and 503 without one",
            exc,
        )

    def _may_refresh_now(self, key: Key, peer: int | None) -> bool:
        """Join a call in flight, or start one unless this key had one within the interval or
        the peer's or the agent's budget is spent."""
        if key in self._flight:
            return True
        if key in self._refreshed_now or not self._budget.take(peer):
            self._metrics.refreshes.labels(key[0].value, "now", "limited").inc()
            return False
        self._refreshed_now[key] = True
        return True

    def _refresh_ahead(self, key: Key, source: str | None) -> bool:
        return self._refresher.submit(key, source, lambda: self._refresh_in_background(key))

    async def _refresh_in_background(self, key: Key) -> None:
        cached = self.cache.get(*key)
        if cached is None or not cached.fresh or cached.value is None:
            return  # invalidated or expired meanwhile: the next lookup fetches in the foreground
        try:
            loaded, _ = await self._flight.do(key, lambda: self._load(key, cached))
            result = loaded.outcome
        except AgentError as exc:
            # The value stays fresh until its TTL; a failure here costs nothing yet.
            log.debug("refresh-ahead of a %s failed: %s", key[0], exc)
            self.cache.postpone_refresh(*key)
            result = "error"
        self._metrics.refreshes.labels(key[0].value, "ahead", result).inc()

    def _avoided(self, key: Key, source: str | None) -> None:
        """A lookup answered without the upstream: one call saved at the backend holding the
        value (a floor: misses further up the chain are not counted), or for a known miss, at
        every backend that would have been asked."""
        if source is not None:
            self._metrics.avoided(source)
            return
        for name in self.chain.accepting(*key):
            self._metrics.avoided(name)

    def _count(self, kind: Kind, result: Result) -> Result:
        self._metrics.looked_up(_KIND_LABEL[kind], _RESULT_LABEL[result.state])
        return result


def _held(cached: Cached | None) -> Found | None:
    """The cached value as something its backend can revalidate, if it has a version."""
    if cached is None or cached.value is None or cached.source is None or cached.version is None:
        return None
    return Found(cached.value, cached.source, cached.version)
