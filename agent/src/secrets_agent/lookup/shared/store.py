"""The shared tier on Valkey/Redis: read, lock, fetch once for the fleet, write, invalidate.

Every store call is bounded by a timeout and guarded by a breaker; any store failure means
"ask the upstream", never an error for the caller. Only sealed entries (see ``sealing``) and
HMAC names are sent to the store. Each call names keys of one hash slot at most (a pipeline
may carry several single-slot commands), so the same code serves one server and a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from secrets_agent.kinds import Kind
from secrets_agent.lookup.shared.breaker import Breaker
from secrets_agent.lookup.shared.bus import Bus, ClassicBus, ShardedBus
from secrets_agent.lookup.shared.channel import Invalidations
from secrets_agent.lookup.shared.claim import Claims, ms
from secrets_agent.lookup.shared.floors import Floors
from secrets_agent.lookup.shared.guard import StoreDown, StoreGuard
from secrets_agent.lookup.shared.lease import StoreLease
from secrets_agent.lookup.shared.sealing import Names, Place, Sealer
from secrets_agent.lookup.shared.tier import (
    HintHandler,
    Invalidated,
    Lease,
    Shared,
    TierHealth,
    Upstream,
)
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Store = Redis | RedisCluster

# A sealed entry larger than this is not shared (a value of roughly 750 KB, ten times what a
# cloud manager holds), and a larger value at our name is not downloaded: a store writer's huge
# value must not cost every node that misses it the memory and time to read it.
MAX_ENTRY = 1 << 20  # bytes
# An entry sealed as fetched later than this past our clock is refused: its writer's clock is
# ahead, and its copies would pass an invalidation made after they were fetched. Clocks kept by
# NTP are well within it; a node further ahead only costs the others an upstream read.
CLOCK_AHEAD = 1.0  # seconds
# GET, but an empty (unreadable) string for a value larger than ARGV[1]. Lua on one key: the
# ACL's +eval and +get, the key's slot.
# Another type at the name (a store writer's, or another application's key) reads as garbage
# does (''): unreadable at that name only. Raised, it would send the id upstream on every
# lookup while any of its names (the old key's, during a key rotation) held it. Only a
# WRONGTYPE: any other error (an ACL refusing the GET, ...) is the store's, returned as raised.
_READ = (
    "local v = redis.pcall('get', KEYS[1]) "
    "if type(v) == 'table' and v.err then "
    "if string.sub(v.err, 1, 9) == 'WRONGTYPE' then return '' end return v end "
    "if v and string.len(v) > tonumber(ARGV[1]) then return '' end return v"
)

# Delete the lock only if we still hold it (it may have expired and been taken by another node).
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


class RedisTier:
    shares_refreshes = True

    def __init__(
        self,
        client: Store,
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
        bus: Bus | None = None,
        teams: Iterable[str] = (),
    ) -> None:
        self._client, self._sealer = client, sealer
        self._ttl, self._negative_ttl = ttl, negative_ttl
        self._lock_ttl, self._lock_wait = lock_ttl, lock_wait
        self._metrics, self._also_close = metrics, also_close
        # An invalidation deletes these teams' entries by name (and no team's); copies of teams
        # this node never heard of are refused by every node the message reaches.
        self._teams: tuple[str | None, ...] = (None, *sorted(set(teams)))
        self._guard = StoreGuard(
            breaker, metrics, timeout=timeout, log_interval=log_interval, clock=clock
        )
        self._skew = self._guard.throttled(log)
        self._claims = Claims(metrics, self._guard.throttled(log), self._guard.throttled(log))
        # An entry lives at most its TTL: what refuses older copies needs to remember no longer.
        horizon = max(negative_ttl, *(ttl(kind) for kind in Kind))
        self.floors = Floors(horizon, clock=clock)
        if bus is None:
            bus = ShardedBus(client) if isinstance(client, RedisCluster) else ClassicBus(client)
        self._channel = Invalidations(bus, sealer, self._guard, self.floors, metrics, self.delete)

    # -- lookups ---------------------------------------------------------------------------

    async def fetch(
        self, kind: Kind, secret_id: str, team: str | None, upstream: Upstream
    ) -> Shared:
        await self._channel.settled()  # our own invalidation lands before we read again
        if not self._guard.breaker.allow():
            return Shared(await upstream())
        names = self._sealer.names(kind, secret_id, team)
        name = (kind, secret_id, team)
        token = secrets.token_hex(16)
        try:
            hit = await self._read(names, name)
            if hit is not None:
                return hit
            locked, hit = await self._lock(names, token, name)
            if hit is not None:
                if locked:
                    await self._guard.quietly(self._unlock(names.primary.lock, token), "unlock")
                return hit
            if not locked:
                waited = await self._wait(names, name)
                if waited is not None:
                    return waited
        except StoreDown:
            return Shared(await upstream())
        fetched = self._sealer.wall()  # when we asked: the value is at least this fresh
        try:
            found = await upstream()
        except BaseException:
            if locked:
                await self._guard.quietly(self._unlock(names.primary.lock, token), "unlock")
            raise
        ttl = self._negative_ttl if found is None else self._ttl(kind)
        self.floors.saw(name, fetched)
        entry = self._sealer.seal(kind, secret_id, team, found, ttl, fetched)
        write = self._write(names.primary, entry, ttl, token if locked else None)
        await self._guard.quietly(write, "write")
        return Shared(found)

    async def _lock(self, names: Names, token: str, name: Name) -> tuple[bool, Shared | None]:
        """Take the refresh lock and look again in the same round trip: the entry may have
        been written between our read and the lock (by a holder that already released it)."""
        pipe = self._client.pipeline(transaction=False)
        self._claims.claim(pipe, names.primary.lock, token, self._lock_ttl)  # planted: replaced
        for place in names.places:
            _read(pipe, place.entry)
        claimed, *tokens = await self._guard.call("lock", pipe.execute())
        locked = self._claims.taken("lock", claimed)
        return locked, self._first_readable(tokens, name, again=True)

    async def _read(self, names: Names, name: Name) -> Shared | None:
        pipe = self._client.pipeline(transaction=False)
        for place in names.places:
            _read(pipe, place.entry)
        tokens = await self._guard.call("read", pipe.execute())
        if not any(isinstance(t, bytes) for t in tokens):
            self._metrics.shared_results.labels("miss").inc()
            return None
        return self._first_readable(tokens, name)

    def _first_readable(
        self, tokens: Sequence[object], name: Name, *, again: bool = False
    ) -> Shared | None:
        """The first entry we can open; ``again``: a re-read, unreadable ones were counted."""
        for token in tokens:
            if isinstance(token, bytes):
                got = self._opened(token, name, again=again)
                if got is not None:
                    return got
        return None

    def _opened(self, token: bytes, name: Name, *, again: bool = False) -> Shared | None:
        opened = self._sealer.open(token, *name)
        if opened is None:  # other keys, another name's entry, or expired: never an error
            if not again:
                self._metrics.shared_results.labels("unreadable").inc()
            return None
        ahead = opened.fetched - self._sealer.wall()
        if ahead > CLOCK_AHEAD:
            if not again:
                self._metrics.shared_results.labels("refused").inc()
                self._skew.warning(
                    f"shared cache: an entry sealed {ahead:.0f} s ahead of this node's clock "
                    "was refused (its writer's clock is ahead: keep the fleet's clocks in sync)"
                )
            return None
        if not self.floors.admits(name, opened.fetched):
            # Older than a copy we saw or an invalidation: put back, or not yet replaced.
            if not again:
                self._metrics.shared_results.labels("refused").inc()
            return None
        self.floors.saw(name, opened.fetched)
        self._metrics.shared_results.labels("hit").inc()
        self._metrics.shared_avoided.inc()
        # Never longer than our own TTL, whatever the writer's clock said.
        limit = self._negative_ttl if opened.found is None else self._ttl(name[0])
        age = max(0.0, self._sealer.wall() - opened.fetched)
        return Shared(opened.found, min(opened.ttl, limit), age)

    async def _wait(self, names: Names, name: Name) -> Shared | None:
        """Another node holds the lock: wait a bounded moment for its value to appear."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self._lock_wait, 0.005
        while True:
            await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
            delay = min(delay * 2, 0.1)
            # The lock first: the holder writes the entry before it releases the lock, so a lock
            # seen gone means the entry read after it is there if the holder succeeded.
            pipe = self._client.pipeline(transaction=False)
            pipe.exists(names.primary.lock)
            for place in names.places:
                _read(pipe, place.entry)
            held, *tokens = await self._guard.call("wait", pipe.execute())
            got = self._first_readable(tokens, name, again=True)
            if got is not None:
                self._metrics.shared_lock_waits.labels("value").inc()
                return got
            if not held:  # the holder gave up or died: do not wait for its lock to expire
                self._metrics.shared_lock_waits.labels("released").inc()
                return None
            if loop.time() >= deadline:
                self._metrics.shared_lock_waits.labels("timeout").inc()
                return None

    async def _write(self, place: Place, entry: bytes, ttl: float, lock_token: str | None) -> None:
        pipe = self._client.pipeline(transaction=False)  # one slot: the entry and its lock
        if ttl > 0 and len(entry) <= MAX_ENTRY:
            pipe.set(place.entry, entry, px=ms(ttl))
        if lock_token is not None:
            pipe.eval(_UNLOCK, 1, place.lock, lock_token)
        await pipe.execute()

    async def _unlock(self, lock: str, token: str) -> None:
        await self._client.eval(_UNLOCK, 1, lock, token)

    # -- invalidation and life cycle ------------------------------------------------------

    async def delete(self, kind: Kind, secret_id: str) -> None:
        """Drop (kind, id)'s entries by their exact names: single-key commands, one slot per key."""
        pipe = self._client.pipeline(transaction=False)
        for name in self._sealer.entries(kind, secret_id, self._teams):
            pipe.execute_command("UNLINK", name)  # a cluster pipeline's unlink() is not stacked
        await pipe.execute()

    def attach(self, local: Invalidated) -> None:
        self._channel.attach(local)

    def broadcast(self, topic: str, data: Mapping[str, str | None]) -> None:
        self._channel.broadcast(topic, data)

    def on_hint(self, topic: str, handler: HintHandler) -> None:
        self._channel.on_hint(topic, handler)

    def lease(self, purpose: str, ttl: float) -> Lease:
        name = self._sealer.lease(purpose)
        return StoreLease(self._client, name, ttl, self._guard, self._claims)

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


Name = tuple[Kind, str, str | None]


def _read(pipe: Any, entry: str) -> None:
    """Stack an entry's read: its token, or b"" when it is too large to be one of ours."""
    pipe.eval(_READ, 1, entry, MAX_ENTRY)
