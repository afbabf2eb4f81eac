"""Pacing for background work: a token bucket, and a log line at most once per interval."""

from __future__ import annotations

import logging
from collections.abc import Callable

Clock = Callable[[], float]


class Bucket:
    """A token bucket: ``rate`` per second, up to ``rate`` (at least one) saved up."""

    def __init__(self, rate: float, clock: Clock) -> None:
        self._rate, self._clock = rate, clock
        self._capacity = max(1.0, rate)
        self._tokens, self._at = self._capacity, clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def wait(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1.0 - self._tokens) / self._rate)


class Throttled:
    """One log line per interval, with how many were folded into it."""

    def __init__(self, interval: float, clock: Clock, log: logging.Logger) -> None:
        self._interval, self._clock, self._log = interval, clock, log
        self._next, self._folded = 0.0, 0

    def __call__(self, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next:
            self._folded += 1
            return
        suffix = f" ({self._folded} more since the last line)" if self._folded else ""
        self._log.warning(message + suffix, *args)
        self._next, self._folded = now + self._interval, 0
