"""The breaker and the throttled log, on a clock the test moves."""

from __future__ import annotations

import logging

import pytest

from secrets_agent.lookup.shared.breaker import Breaker, ThrottledLog
from support.helpers import FakeClock


def test_opens_after_the_threshold_and_lets_one_probe_through_after_the_cooldown() -> None:
    clock = FakeClock()
    breaker = Breaker(failures=2, cooldown=5.0, clock=clock)
    breaker.failure()
    assert (breaker.allow(), is_closed(breaker)) == (True, True)
    breaker.failure()
    assert (breaker.allow(), is_closed(breaker)) == (False, False)
    clock.advance(5.0)
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else keeps skipping while it is out
    breaker.failure()  # the probe failed: open for another cooldown at once
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.success() is True  # closed again, and says so once
    assert (is_closed(breaker), breaker.allow(), breaker.success()) == (True, True, False)


def is_closed(breaker: Breaker) -> bool:
    return breaker.closed  # read through a call: mypy would narrow the property


def test_one_line_per_interval_with_a_count_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    throttled = ThrottledLog(logging.getLogger("test.throttled"), 60.0, clock)
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        for _ in range(5):
            throttled.warning("store down")
        clock.advance(60.0)
        throttled.warning("store down")
        throttled.reset()
        throttled.warning("store down again")
    assert [r.getMessage() for r in caplog.records] == [
        "store down",
        "store down (4 more since the last message)",
        "store down again",
    ]
