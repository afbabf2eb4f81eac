"""Blocking SDK calls on a few threads of their own, each answer handed back to the event loop.

What ``loop.run_in_executor`` does, for less: a call there makes a ``concurrent.futures.Future``
(a lock and a condition), an asyncio future chained to it by callbacks on both threads, and
the pool's work item and idle semaphore — ~70 µs of CPU per call between the two threads,
measured around a ~700 µs hvac read. Here a call is one asyncio future, one ``SimpleQueue.put``
and one ``call_soon_threadsafe`` with the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

from secrets_agent.errors import ClosedError

T = TypeVar("T")
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class Workers:
    """Up to ``size`` threads, started as calls need them; ``run`` awaits one call's result."""

    def __init__(self, size: int, name: str) -> None:
        self._size, self._name = size, name
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pending = 0  # calls submitted and not yet answered (kept on the loop's thread)
        self._closed = False

    async def run(self, call: Callable[[], T]) -> T:
        """``call()`` on a worker thread; cancelling the wait leaves a started call to finish."""
        if self._closed:
            raise ClosedError(f"{self._name}: the worker threads are closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending += 1
        try:
            if self._pending > len(self._threads) and len(self._threads) < self._size:
                self._start_thread()
            self._jobs.put((loop, future, call))
            return await future
        finally:
            self._pending -= 1

    def close(self) -> None:
        """Stop the threads once their current call ends; calls not yet started fail with
        ``ClosedError`` (their callers get an answer, not a cancellation)."""
        self._closed = True
        while True:
            try:  # not ``empty()`` then ``get_nowait()``: a worker may take the job between
                job = self._jobs.get_nowait()
            except Empty:
                break
            if job is not None and not job[1].done():
                job[1].set_exception(ClosedError(f"{self._name}: closed before the call ran"))
        for _ in self._threads:
            self._jobs.put(None)
        self._threads.clear()

    def _start_thread(self) -> None:
        # Daemon threads: a call stuck on a dead upstream must not hold up the process's exit.
        thread = threading.Thread(
            target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _work(self) -> None:
        jobs = self._jobs
        while (job := jobs.get()) is not None:
            loop, future, call = job
            if future.done():  # its caller went away (or close failed it) before it started
                continue
            failed, outcome = False, None
            try:
                outcome = call()
            except BaseException as exc:  # handed to the caller, whatever it is
                failed, outcome = True, exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, future, failed, outcome)
            del job, call, future, outcome  # nothing of the call outlives it here


def _settle(future: asyncio.Future[Any], failed: bool, outcome: Any) -> None:
    if future.done():  # cancelled while the call ran
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
