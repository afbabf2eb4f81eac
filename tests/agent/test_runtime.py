"""The backend pool: what a start opens is closed, however the start ends."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from secrets_agent.backends import registry
from secrets_agent.config.schema import BackendCommon, BackendConfig
from secrets_agent.ops.metrics import Metrics
from secrets_agent.runtime import BackendPool, Runtime
from support.helpers import (
    FakeClock,
    ScriptedBackend,
    ScriptOptions,
    SlowToPrefetch,
    agent_config,
)


class SlowToStart(ScriptedBackend):
    """A backend whose start opens something, then waits (an upstream that does not answer)."""

    started = asyncio.Event()
    closed = 0

    async def start(self) -> None:
        SlowToStart.started.set()
        await asyncio.Event().wait()

    async def close(self) -> None:
        SlowToStart.closed += 1


async def cancelled_once(reached: asyncio.Event, work: Coroutine[Any, Any, object]) -> None:
    """Run ``work`` until ``reached`` is set, then cancel it and let it end."""
    task = asyncio.create_task(work)
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancelled_start_closes_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # A reload bounded by shutdown_timeout, or a shutdown, cancels a start under way.
    monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", SlowToStart)
    monkeypatch.setattr(SlowToStart, "started", asyncio.Event())
    monkeypatch.setattr(SlowToStart, "closed", 0)
    pool = BackendPool(Metrics(), FakeClock())
    config = BackendConfig(BackendCommon(name="slow", type="scripted"), ScriptOptions())
    await cancelled_once(SlowToStart.started, pool.start([config], ()))
    assert SlowToStart.closed == 1
    assert len(pool) == 0


@pytest.fixture
def slow_prefetch(monkeypatch: pytest.MonkeyPatch) -> type[SlowToPrefetch]:
    return SlowToPrefetch.installed(monkeypatch)


async def test_a_build_cancelled_after_the_starts_closes_what_it_started(
    short_tmp: Path, slow_prefetch: type[SlowToPrefetch]
) -> None:
    # Past the starts (warm-up reads, the shared tier's start), a shutdown cancelling a reload
    # used to leave the new backends started and owned by no runtime: never closed.
    config = agent_config(short_tmp, backends='[[backends]]\nname = "slow"\ntype = "scripted"\n')
    pool = BackendPool(Metrics(), FakeClock())
    await cancelled_once(
        slow_prefetch.prefetching, Runtime.build(config, pool, Metrics(), FakeClock())
    )
    assert slow_prefetch.closed == 1
    assert len(pool) == 0
