"""The shared tier on Valkey/Redis: read, lock, fetch once for the fleet, write, invalidate.

Every store call is bounded by a timeout and guarded by a breaker; any store failure means
"ask the upstream", never an error for the caller. Only sealed entries (see ``sealing``) and
HMAC names are sent to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from secrets_agent.kinds import Kind
from secrets_agent.lookup.chain import Found
from secrets_agent.lookup.shared.breaker import Breaker, ThrottledLog
from secrets_agent.lookup.shared.sealing import Names, Sealer
from secrets_agent.lookup.shared.tier import Invalidated, Shared, TierHealth, Upstream
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]

# Delete the lock only if we still hold it (it may have expired and been taken by another node).
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


class _Down(Exception):
    """The store did not answer usefully; the caller goes to the upstream."""


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
        self._timeout, self._lock_ttl, self._lock_wait = timeout, lock_ttl, lock_wait
        self._breaker, self._metrics, self._clock = breaker, metrics, clock
        self._warn = ThrottledLog(log, log_interval, clock)
        self._node = secrets.token_hex(8)
        self._local: Invalidated = lambda kind, secret_id: None
        self._pending: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._last_error = ""
        self._also_close = also_close

    # -- lookups ---------------------------------------------------------------------------

    async def fetch(
        self, kind: Kind, secret_id: str, team: str | None, upstream: Upstream
    ) -> Shared:
        if self._pending:  # an invalidation from this node must land before we read again
            await asyncio.wait(set(self._pending), timeout=self._timeout)
        if not self._breaker.allow():
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
                    await self._quietly(self._unlock(names.lock, token))
                return hit
            if not locked:
                waited = await self._wait(names, kind, secret_id, team)
                if waited is not None:
                    return waited
        except _Down:
            return Shared(await upstream())
        try:
            found = await upstream()
        except BaseException:
            if locked:
                await self._quietly(self._unlock(names.lock, token))
            raise
        ttl = self._negative_ttl if found is None else self._ttl(kind)
        await self._quietly(
            self._write(names, kind, secret_id, team, found, ttl, token if locked else None)
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
        locked, tokens = await self._call("lock", pipe.execute())
        return bool(locked), self._first_readable(tokens, kind, secret_id, team, again=True)

    async def _read(
        self, names: Names, kind: Kind, secret_id: str, team: str | None
    ) -> Shared | None:
        tokens = await self._call("read", self._client.mget(names.reads))
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
            held, tokens = await self._call("wait", pipe.execute())
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
        await self._call("write", pipe.execute())

    async def _unlock(self, lock: str, token: str) -> None:
        await self._call("unlock", self._client.eval(_UNLOCK, 1, lock, token))

    # -- invalidation ----------------------------------------------------------------------

    def attach(self, local: Invalidated) -> None:
        self._local = local

    def invalidate(self, kind: Kind | None, secret_id: str | None) -> None:
        task = asyncio.get_running_loop().create_task(self._invalidate(kind, secret_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _invalidate(self, kind: Kind | None, secret_id: str | None) -> None:
        # Names do not reveal the kind, so a kind-wide invalidation drops the whole namespace.
        patterns = self._sealer.groups(kind, secret_id)
        with contextlib.suppress(_Down):
            # A scan of the whole store: invalidations are rare, and names carry no index.
            await self._call("invalidate", self._drop(patterns), self._timeout * 20)
            for channel, message in self._sealer.seal_messages(kind, secret_id, self._node):
                await self._call("publish", self._client.publish(channel, message))

    async def _drop(self, patterns: list[str]) -> None:
        for pattern in patterns:
            names = [name async for name in self._client.scan_iter(match=pattern, count=1000)]
            if names:
                await self._client.unlink(*names)

    async def start(self) -> None:
        """Subscribe, and own the availability gauge (started: this tier serves now)."""
        self._metrics.shared_available.set_function(lambda: float(self._breaker.closed))
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen_forever())

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                self._metrics.shared_errors.labels("subscribe").inc()
                self._warn.warning(f"shared cache: invalidation channel lost ({_describe(exc)})")
            except Exception as exc:  # a bug here must not end invalidations for good
                self._metrics.shared_errors.labels("subscribe").inc()
                log.error("shared cache: invalidation listener failed: %s", type(exc).__name__)
            await asyncio.sleep(self._breaker_cooldown())

    async def _listen(self) -> None:
        async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(*self._sealer.channels)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._received(message.get("data"))

    def _received(self, data: Any) -> None:
        opened = self._sealer.open_message(data) if isinstance(data, bytes) else None
        if opened is None:
            return  # another key set's message, or not a message at all
        kind, secret_id, sender = opened
        if sender != self._node:
            self._metrics.shared_invalidations.inc()
            self._local(kind, secret_id)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=self._timeout)
        await self._client.aclose()
        for other in self._also_close:
            await other.aclose()

    # -- health ----------------------------------------------------------------------------

    def health(self) -> TierHealth:
        if self._breaker.closed:
            return TierHealth(True, "in use")
        return TierHealth(False, f"unreachable, lookups go to the upstream: {self._last_error}")

    async def _call(self, operation: str, call: Awaitable[T], bound: float | None = None) -> T:
        try:
            result = await asyncio.wait_for(call, bound or self._timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self._metrics.shared_errors.labels(operation).inc()
            self._last_error = _describe(exc)
            self._breaker.failure()
            self._warn.warning(
                f"shared cache: {operation} failed ({self._last_error}); using the upstream"
            )
            raise _Down from None
        if self._breaker.success():
            self._warn.reset()
            log.info("shared cache: reachable again")
        return result

    async def _quietly(self, call: Awaitable[None]) -> None:
        with contextlib.suppress(_Down):
            await call

    def _breaker_cooldown(self) -> float:
        return max(0.1, min(1.0, self._timeout * 4))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _describe(exc: BaseException) -> str:
    # Store errors name hosts and commands, never values; still keep them short.
    text = str(exc).strip() or "no detail"
    return f"{type(exc).__name__}: {text[:200]}"
