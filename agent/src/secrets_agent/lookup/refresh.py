"""Background refreshes: at most one per key, at most ``concurrency`` at a time per backend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)


class Refresher:
    """Runs refresh calls off the request path; a caller never waits on one."""

    def __init__(self, concurrency: int) -> None:
        self._concurrency = concurrency
        self._limits: dict[str | None, asyncio.Semaphore] = {}
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def submit(self, key: Hashable, group: str | None, call: Callable[[], Awaitable[None]]) -> bool:
        """Start ``call`` for ``key`` in the background unless one is pending; True if started."""
        if self._closed or key in self._tasks:
            return False
        task = asyncio.ensure_future(self._run(group, call))
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._done(key, t))
        return True

    async def _run(self, group: str | None, call: Callable[[], Awaitable[None]]) -> None:
        # One semaphore per backend: a slow upstream cannot hold back the others' refreshes.
        limit = self._limits.setdefault(group, asyncio.Semaphore(self._concurrency))
        async with limit:
            try:
                await call()
            except Exception as exc:  # the next lookup retries in the foreground
                log.warning("background refresh failed: %s", type(exc).__name__)

    def _done(self, key: Hashable, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]

    async def drain(self) -> None:
        """Wait until no refresh is pending (tests, and a snapshot at shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        """Cancel what is pending: the backends it would call are closing."""
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
