"""The invalidation listener's life, over a bus faked behind its interface."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest
from cryptography.fernet import Fernet
from redis.exceptions import ConnectionError as RedisConnectionError

from secrets_agent.kinds import Kind
from secrets_agent.lookup.shared.breaker import Breaker
from secrets_agent.lookup.shared.bus import Deliver
from secrets_agent.lookup.shared.channel import Invalidations
from secrets_agent.lookup.shared.floors import Floors
from secrets_agent.lookup.shared.guard import StoreGuard
from secrets_agent.lookup.shared.sealing import Sealer
from secrets_agent.ops.metrics import Metrics
from support.helpers import FakeClock


class TornDownBus:
    """Waits for messages; cancelled, it ends the wait as redis-py can when the connection goes
    with it: as a connection closed by the server, the cancellation swallowed."""

    def __init__(self) -> None:
        self.listening = asyncio.Event()

    async def publish(self, channel: str, message: bytes) -> None:
        pass

    async def listen(self, channels: Sequence[str], deliver: Deliver) -> None:
        self.listening.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RedisConnectionError("Connection closed by server.") from None


async def _delete(kind: Kind, secret_id: str) -> None:
    pass


async def test_closing_the_listener_is_not_a_store_error(caplog: pytest.LogCaptureFixture) -> None:
    clock, metrics, bus = FakeClock(), Metrics(), TornDownBus()
    guard = StoreGuard(Breaker(3, 5.0, clock), metrics, timeout=1.0, log_interval=60, clock=clock)
    sealer = Sealer([Fernet.generate_key()], "test", "airflow-secrets-agent")
    channel = Invalidations(bus, sealer, guard, Floors(60.0, clock=clock), metrics, _delete)
    channel.start()
    await bus.listening.wait()
    with caplog.at_level(logging.WARNING):
        await channel.close()
    errors = metrics.registry.get_sample_value(
        "secrets_agent_shared_cache_errors_total", {"operation": "subscribe"}
    )
    assert not errors
    assert "subscribe failed" not in caplog.text
