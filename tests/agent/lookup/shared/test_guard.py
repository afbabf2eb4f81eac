"""What the guard makes of a store's answers: which open the breaker, and the line it logs."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import NoPermissionError, ResponseError

from secrets_agent.lookup.shared.breaker import Breaker
from secrets_agent.lookup.shared.guard import StoreDown, StoreGuard
from secrets_agent.ops.metrics import Metrics
from support.helpers import FakeClock


def guard() -> StoreGuard:
    clock = FakeClock()
    return StoreGuard(Breaker(1, 5.0, clock), Metrics(), timeout=0.05, log_interval=60, clock=clock)


async def fails(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    ("operation", "exc", "said", "opens"),
    [
        (
            "publish",
            NoPermissionError("this user has no permissions to run the 'publish' command"),
            "publish refused",
            False,
        ),
        ("publish", ResponseError("unknown command 'SPUBLISH', with args"), "refused", False),
        # A URL naming a plain server as a Sentinel: not a pub/sub refusal, whatever the command.
        (
            "subscribe",
            ResponseError("unknown command 'SENTINEL', with args beginning with: 'MASTERS'"),
            "subscribe failed",
            True,
        ),
        ("read", NoPermissionError("this user has no permissions to run the 'get'"), "", True),
    ],
)
async def test_only_a_refused_pub_sub_command_leaves_the_breaker_closed(
    caplog: pytest.LogCaptureFixture, operation: str, exc: BaseException, said: str, opens: bool
) -> None:
    checked = guard()
    with caplog.at_level(logging.WARNING), pytest.raises(StoreDown):
        await checked.call(operation, fails(exc))
    assert checked.breaker.closed is not opens
    assert said in caplog.text


async def test_a_timeout_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), pytest.raises(StoreDown):
        await guard().call("read", asyncio.sleep(5))
    assert "read failed (TimeoutError: no answer within 0.05 s)" in caplog.text
