"""The shared tier on Valkey/Redis: read, lock, fetch once for the fleet, write, invalidate.

Every store call is bounded by a timeout and guarded by a breaker; any store failure means
"ask the upstream", never an error for the caller. Only sealed entries (see ``sealing``) and
HMAC names are sent to the store.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence

from redis.asyncio import Redis

from secrets_agent.kinds import Kind
from secrets_agent.lookup.chain import Found
from secrets_agent.lookup.shared.breaker import Breaker
from secrets_agent.lookup.shared.channel import Invalidations
from secrets_agent.lookup.shared.guard import StoreDown, StoreGuard
from secrets_agent.lookup.shared.sealing import Names, Sealer
from secrets_agent.lookup.shared.tier import Invalidated, Shared, TierHealth, Upstream
from secrets_agent.ops.metrics import Metrics

Clock = Callable[[], float]

# Delete the lock only if we still hold it (it may have expired and been taken by another node).
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


class RedisTier:
    shares_refreshes = True

    def __init__(
        self,
        client: Redis,
        sealer: Sealer,
        *,
        ttl: Callable[[Kind], float],
        negative_ttl: float,
        timeout: float,
        lock_ttl: float,
        lock_wait: float,
        breaker: Breaker,
        log_interval: float,
        metrics: Metrics,
        clock: Clock = time.monotonic,
        also_close: Sequence[Redis] = (),
    ) -> None:
        self._client, self._sealer = client, sealer
        self._ttl, self._negative_ttl = ttl, negative_ttl
        self._lock_ttl, self._lock_wait = lock_ttl, lock_wait
        self._metrics, self._also_close = metrics, also_close
        self._guard = StoreGuard(
            breaker, metrics, timeout=timeout, log_interval=log_interval, clock=clock
        )
        self._channel = Invalidations(client, sealer, self._guard, metrics)

    # -- lookups ---------------------------------------------------------------------------

    async def fetch(
        self, kind: Kind, secret_id: str, team: str | None, upstream: Upstream
    ) -> Shared:
        await self._channel.settled()  # our own invalidation lands before we read again
        if not self._guard.breaker.allow():
            return Shared(await upstream())
        names = self._sealer.names(kind, secret_id, team)
        try:
            hit = await self._read(names, kind, secret_id, team)
            if hit is not None:
                return hit
            token = secrets.token_hex(16)
            locked, hit = await self._lock(names, token, kind, secret_id, team)
            if hit is not None:
                if locked:
                    await self._guard.quietly(self._unlock(names.lock, token), "unlock")
                return hit
            if not locked:
                waited = await self._wait(names, kind, secret_id, team)
                if waited is not None:
                    return waited
        except StoreDown:
            return Shared(await upstream())
        try:
            found = await upstream()
        except BaseException:
            if locked:
                await self._guard.quietly(self._unlock(names.lock, token), "unlock")
            raise
        ttl = self._negative_ttl if found is None else self._ttl(kind)
        lock_token = token if locked else None
        await self._guard.quietly(
            self._write(names, kind, secret_id, team, found, ttl, lock_token), "write"
        )
        return Shared(found)

    async def _lock(
        self, names: Names, token: str, kind: Kind, secret_id: str, team: str | None
    ) -> tuple[bool, Shared | None]:
        """Take the refresh lock and look again in the same round trip: the entry may have
        been written between our read and the lock (by a holder that already released it)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.set(names.lock, token, nx=True, px=_ms(self._lock_ttl))
        pipe.mget(names.reads)
        locked, tokens = await self._guard.call("lock", pipe.execute())
        return bool(locked), self._first_readable(tokens, kind, secret_id, team, again=True)

    async def _read(
        self, names: Names, kind: Kind, secret_id: str, team: str | None
    ) -> Shared | None:
        tokens = await self._guard.call("read", self._client.mget(names.reads))
        if not any(isinstance(t, bytes) for t in tokens):
            self._metrics.shared_results.labels("miss").inc()
            return None
        return self._first_readable(tokens, kind, secret_id, team)

    def _first_readable(
        self,
        tokens: Sequence[object],
        kind: Kind,
        secret_id: str,
        team: str | None,
        *,
        again: bool = False,
    ) -> Shared | None:
        """The first entry we can open; ``again``: a re-read, unreadable ones were counted."""
        for token in tokens:
            if isinstance(token, bytes):
                got = self._opened(token, kind, secret_id, team, again=again)
                if got is not None:
                    return got
        return None

    def _opened(
        self, token: bytes, kind: Kind, secret_id: str, team: str | None, *, again: bool = False
    ) -> Shared | None:
        opened = self._sealer.open(token, kind, secret_id, team)
        if opened is None:  # other keys, another name's entry, or expired: never an error
            if not again:
                self._metrics.shared_results.labels("unreadable").inc()
            return None
        self._metrics.shared_results.labels("hit").inc()
        self._metrics.shared_avoided.inc()
        # Never longer than our own TTL, whatever the writer's clock said.
        limit = self._negative_ttl if opened.found is None else self._ttl(kind)
        return Shared(opened.found, min(opened.ttl, limit))

    async def _wait(
        self, names: Names, kind: Kind, secret_id: str, team: str | None
    ) -> Shared | None:
        """Another node holds the lock: wait a bounded moment for its value to appear."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self._lock_wait, 0.005
        while True:
            await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
            delay = min(delay * 2, 0.1)
            # The lock first: the holder writes the entry before it releases the lock, so a lock
            # seen gone means the entry read after it is there if the holder succeeded.
            pipe = self._client.pipeline(transaction=False)
            pipe.exists(names.lock)
            pipe.mget(names.reads)
            held, tokens = await self._guard.call("wait", pipe.execute())
            got = self._first_readable(tokens, kind, secret_id, team, again=True)
            if got is not None:
                self._metrics.shared_lock_waits.labels("value").inc()
                return got
            if not held:  # the holder gave up or died: do not wait for its lock to expire
                self._metrics.shared_lock_waits.labels("released").inc()
                return None
            if loop.time() >= deadline:
                self._metrics.shared_lock_waits.labels("timeout").inc()
                return None

    async def _write(
        self,
        names: Names,
        kind: Kind,
        secret_id: str,
        team: str | None,
        found: Found | None,
        ttl: float,
        lock_token: str | None,
    ) -> None:
        pipe = self._client.pipeline(transaction=False)
        if ttl > 0:
            pipe.set(names.entry, self._sealer.seal(kind, secret_id, team, found, ttl), px=_ms(ttl))
        if lock_token is not None:
            pipe.eval(_UNLOCK, 1, names.lock, lock_token)
        await pipe.execute()

    async def _unlock(self, lock: str, token: str) -> None:
        await self._client.eval(_UNLOCK, 1, lock, token)

    # -- invalidation and life cycle ------------------------------------------------------

    def attach(self, local: Invalidated) -> None:
        self._channel.attach(local)

    def invalidate(self, kind: Kind | None, secret_id: str | None) -> None:
        self._channel.publish(kind, secret_id)

    async def start(self) -> None:
        """Subscribe, and own the availability gauge (started: this tier serves now)."""
        self._metrics.shared_available.set_function(lambda: float(self._guard.breaker.closed))
        self._channel.start()

    async def close(self) -> None:
        await self._channel.close()
        await self._client.aclose()
        for other in self._also_close:
            await other.aclose()

    def health(self) -> TierHealth:
        return self._guard.health()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
