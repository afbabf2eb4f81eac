"""Coalesce concurrent calls for one key into a single upstream call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._inflight: dict[Hashable, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._inflight

    def pending(self) -> list[Hashable]:
        """The keys with a call in flight."""
        return list(self._inflight)

    async def do(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``call`` unless one is already running for ``key``; return (result, shared)."""
        task = self._inflight.get(key)
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(call())
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        # shield: a caller that goes away must not cancel the call the others are waiting on.
        return await asyncio.shield(task), shared

    async def settled(self, key: Hashable) -> None:
        """Wait for the call in flight for ``key`` (if any) to end, whatever its outcome."""
        task = self._inflight.get(key)
        if task is not None:
            await asyncio.wait([task])

    async def cancel(self) -> None:
        """Cancel every call in flight and wait for them to end (the agent is stopping)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # mark retrieved even if every waiter went away
