"""Pacing: the token bucket's rate, and one log line per interval."""

from __future__ import annotations

import logging

import pytest

from secrets_agent.lookup.pace import Bucket, Throttled
from support.helpers import FakeClock


def test_bucket_allows_its_rate_and_refills_with_time() -> None:
    clock = FakeClock()
    bucket = Bucket(2.0, clock)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    assert bucket.wait() == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.take() and not bucket.take()


def test_throttled_logs_once_per_interval_with_what_it_folded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    line = Throttled(60.0, clock, logging.getLogger("test.pace"))
    with caplog.at_level(logging.WARNING, logger="test.pace"):
        for _ in range(3):
            line("feed %r: bad message", "a")
        clock.advance(60)
        line("feed %r: bad message", "a")
    assert [r.getMessage() for r in caplog.records] == [
        "feed 'a': bad message",
        "feed 'a': bad message (2 more since the last line)",
    ]
