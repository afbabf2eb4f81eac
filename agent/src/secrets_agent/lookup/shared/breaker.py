"""A circuit breaker and a throttled log: a dead store costs one timeout per cooldown, not one
per lookup, and one log line per interval, not one per request."""

from __future__ import annotations

import logging
from collections.abc import Callable

Clock = Callable[[], float]


class Breaker:
    """Closed until ``failures`` in a row; then open for ``cooldown``; then one probe at a time."""

    def __init__(self, failures: int, cooldown: float, clock: Clock) -> None:
        self._threshold, self._cooldown, self._clock = failures, cooldown, clock
        self._failures = 0
        self._open_until: float | None = None

    @property
    def closed(self) -> bool:
        return self._open_until is None

    def allow(self) -> bool:
        if self._open_until is None:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        # Half-open: this caller probes; the others keep skipping until it reports back.
        self._open_until = now + self._cooldown
        return True

    def success(self) -> bool:
        """Record a success; True when it closes an open breaker (the store is back)."""
        reopened = self._open_until is not None
        self._failures, self._open_until = 0, None
        return reopened

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= self._threshold or self._open_until is not None:
            self._open_until = self._clock() + self._cooldown


class ThrottledLog:
    """Logs the first warning, then at most one per ``interval`` with a count of the rest."""

    def __init__(self, logger: logging.Logger, interval: float, clock: Clock) -> None:
        self._log, self._interval, self._clock = logger, interval, clock
        self._next: float | None = None
        self._suppressed = 0

    def warning(self, message: str) -> None:
        now = self._clock()
        if self._next is not None and now < self._next:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last message)" if self._suppressed else ""
        self._log.warning("%s%s", message, more)
        self._next, self._suppressed = now + self._interval, 0

    def reset(self) -> None:
        self._next, self._suppressed = None, 0
