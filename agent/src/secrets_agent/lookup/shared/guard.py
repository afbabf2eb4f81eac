"""Every store call goes through one guard: bounded in time, counted, and behind the breaker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import (
    AskError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from secrets_agent.lookup.shared.breaker import Breaker, ThrottledLog
from secrets_agent.lookup.shared.tier import TierHealth
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a store call may raise when the store (or a cluster's slot) is unavailable; a cluster's
# "slot not covered" is not a RedisError.
STORE_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)

# What the tier does without, when the store refuses it (an ACL, a service without pub/sub):
# entries are still shared, so a refusal is logged and counted, and opens no breaker.
_PUB_SUB = re.compile(r"'s?(publish|subscribe)'|channels")  # in NOPERM's and ERR's words
_WITHOUT = {
    "publish": "other nodes hear of this node's invalidations only through their TTL",
    "subscribe": "this node hears of other nodes' invalidations only through the TTL",
}


class StoreDown(Exception):
    """The store did not answer usefully; the caller goes to the upstream."""


class Squatted(StoreDown):
    """A name of ours holds another type than agents write (planted by a store writer, or
    another application's key): that name's problem, not a sign that the store is down."""


class StoreGuard:
    def __init__(
        self,
        breaker: Breaker,
        metrics: Metrics,
        *,
        timeout: float,
        log_interval: float,
        clock: Callable[[], float],
    ) -> None:
        self.breaker, self.timeout = breaker, timeout
        self._metrics, self._log_interval, self._clock = metrics, log_interval, clock
        self._warn = self.throttled(log)
        self._last_error = ""

    async def call(self, operation: str, call: Awaitable[T], bound: float | None = None) -> T:
        """The call's result, or ``StoreDown`` after counting and (throttled) logging why."""
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the caller's own
            # cancellation when the call finishes at the same moment, and a background loop
            # (a feed's lease renewal) then runs on after its runtime closed it.
            async with asyncio.timeout(bound or self.timeout):
                result = await call
        except STORE_ERRORS as exc:
            if type(exc) is TimeoutError and not str(exc):  # ours: asyncio.timeout's
                exc = TimeoutError(f"no answer within {bound or self.timeout:g} s")
            if squatted(exc):  # the store answered: one name is unusable, not the store
                self._answered()
                raise Squatted from None
            self.failed(operation, exc)
            if not (operation in _WITHOUT and refused(exc)):
                self.breaker.failure()
            raise StoreDown from None
        self._answered()
        return result

    def _answered(self) -> None:
        if self.breaker.success():
            self._warn.reset()
            log.info("shared cache: reachable again")

    def throttled(self, logger: logging.Logger) -> ThrottledLog:
        """A log of its own, one line per ``log_interval`` as the store's warnings."""
        return ThrottledLog(logger, self._log_interval, self._clock)

    async def quietly(self, call: Awaitable[None], operation: str) -> None:
        with contextlib.suppress(StoreDown):
            await self.call(operation, call)

    def failed(self, operation: str, exc: BaseException) -> None:
        self._metrics.shared_errors.labels(operation).inc()
        if operation in _WITHOUT and refused(exc):
            self._warn.warning(
                f"shared cache: {operation} refused ({describe(exc)}); {_WITHOUT[operation]}"
            )
            return
        self._last_error = describe(exc)
        self._warn.warning(
            f"shared cache: {operation} failed ({self._last_error}); using the upstream"
        )

    def health(self) -> TierHealth:
        if self.breaker.closed:
            return TierHealth(True, "in use")
        return TierHealth(False, f"unreachable, lookups go to the upstream: {self._last_error}")


def refused(exc: BaseException) -> bool:
    """The store answered that this user may not use pub/sub, or that it has none."""
    if not isinstance(exc, ResponseError):
        return False
    text = str(exc).lower()
    denied = isinstance(exc, NoPermissionError) or "unknown command" in text
    return denied and _PUB_SUB.search(text) is not None


def squatted(exc: BaseException) -> bool:
    """A command met a name holding another type (a list where an entry belongs)."""
    return isinstance(exc, ResponseError) and "WRONGTYPE" in str(exc)


def describe(exc: BaseException) -> str:
    # Store errors name hosts and commands, never values; still keep them short.
    text = str(exc).strip() or "no detail"
    described = f"{type(exc).__name__}: {text[:200]}"
    if isinstance(exc, AskError):  # MOVED or ASK reach us only from a client for one server
        described += " - the store is a cluster: use a redis+cluster:// URL"
    return described
