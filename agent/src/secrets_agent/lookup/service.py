"""Lookup service: cache first, one upstream call per key at a time, stale on transient errors."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from secrets_agent.errors import TransientError
from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import Cached, SecretCache
from secrets_agent.lookup.chain import BackendChain, Found
from secrets_agent.lookup.shared.tier import NoSharedTier, SharedTier
from secrets_agent.lookup.singleflight import SingleFlight
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)


class CacheState(enum.StrEnum):
    HIT = "HIT"
    MISS = "MISS"
    STALE = "STALE"
    NEGATIVE = "NEGATIVE"


@dataclass(frozen=True)
class Result:
    value: str | None
    state: CacheState
    age: float


class SecretService:
    def __init__(
        self,
        chain: BackendChain,
        cache: SecretCache,
        metrics: Metrics,
        shared: SharedTier | None = None,
    ) -> None:
        self.chain, self.cache = chain, cache
        self.shared: SharedTier = shared or NoSharedTier()
        self._metrics = metrics
        self._flight: SingleFlight[Found | None] = SingleFlight()
        self._revalidations: SingleFlight[bool] = SingleFlight()

    async def lookup(self, kind: Kind, secret_id: str, team: str | None = None) -> Result:
        cached = self.cache.get(kind, secret_id, team)
        if cached is not None and cached.fresh:
            state = CacheState.HIT if cached.value is not None else CacheState.NEGATIVE
            return self._count(kind, Result(cached.value, state, cached.age))
        try:
            # With a shared cache, an expired value is refreshed through it (one upstream call
            # for the fleet) rather than revalidated upstream by every node.
            if (
                cached is not None
                and cached.value is not None
                and cached.version is not None
                and not self.shared.shares_refreshes
            ):
                current, _ = await self._revalidations.do(
                    ("revalidate", kind, secret_id, team),
                    lambda: self._revalidate(kind, secret_id, team, cached),
                )
                if current:
                    self._metrics.cache_results.labels(kind.value, "revalidated").inc()
                    return Result(cached.value, CacheState.HIT, 0.0)
            found, shared = await self._flight.do(
                (kind, secret_id, team), lambda: self._refresh(kind, secret_id, team)
            )
        except TransientError as exc:
            if cached is None or cached.value is None:
                raise
            log.warning("serving a stale %s: %s", kind, exc)
            return self._count(kind, Result(cached.value, CacheState.STALE, cached.age))
        if shared:
            self._metrics.coalesced.labels(kind.value).inc()
        value = None if found is None else found.value
        return self._count(kind, Result(value, CacheState.MISS, 0.0))

    def invalidate(self, kind: Kind | None = None, secret_id: str | None = None) -> int:
        self.shared.invalidate(kind, secret_id)  # the fleet's copies, in the background
        return self.cache.invalidate(kind, secret_id)

    async def _refresh(self, kind: Kind, secret_id: str, team: str | None) -> Found | None:
        # Node cache → shared cache (when configured) → upstream: the one place a miss goes out.
        shared = await self.shared.fetch(
            kind, secret_id, team, lambda: self.chain.fetch(kind, secret_id, team)
        )
        found, ttl = shared.found, shared.ttl
        if found is None:
            self.cache.put(kind, secret_id, None, team=team, ttl=ttl)
        else:
            self.cache.put(
                kind, secret_id, found.value, found.source, found.version, team=team, ttl=ttl
            )
        return found

    async def _revalidate(
        self, kind: Kind, secret_id: str, team: str | None, cached: Cached
    ) -> bool:
        if cached.value is None or cached.source is None:
            return False
        found = Found(cached.value, cached.source, cached.version)
        if await self.chain.revalidate(kind, secret_id, found, team):
            self.cache.restamp(kind, secret_id, team)
            return True
        return False

    def _count(self, kind: Kind, result: Result) -> Result:
        self._metrics.cache_results.labels(kind.value, result.state.lower()).inc()
        return result
