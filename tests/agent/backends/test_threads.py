"""Blocking calls on the backends' own worker threads, answered on the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from secrets_agent.backends.threads import Workers
from secrets_agent.errors import ClosedError


async def test_a_call_runs_on_a_worker_thread_and_its_result_comes_back() -> None:
    workers = Workers(2, "t")
    try:
        name = await workers.run(lambda: threading.current_thread().name)
        assert name == "t_0" and name != threading.current_thread().name
    finally:
        workers.close()


async def test_an_exception_reaches_the_caller() -> None:
    workers = Workers(1, "t")

    def boom() -> None:
        raise ValueError("upstream said no")

    try:
        with pytest.raises(ValueError, match="upstream said no"):
            await workers.run(boom)
        assert await workers.run(lambda: 7) == 7  # the thread lives on
    finally:
        workers.close()


async def test_threads_start_as_calls_overlap_and_never_exceed_size() -> None:
    workers = Workers(3, "t")
    release = threading.Event()
    started = threading.Semaphore(0)
    seen: set[str] = set()

    def blocking() -> str:
        seen.add(threading.current_thread().name)
        started.release()
        release.wait(10)
        return "done"

    try:
        assert await workers.run(lambda: 1) == 1
        assert threading.active_count() >= 2
        calls = [asyncio.ensure_future(workers.run(blocking)) for _ in range(5)]
        loop = asyncio.get_running_loop()
        for _ in range(3):  # three run at once: one per thread
            assert await loop.run_in_executor(None, started.acquire, True, 10)
        assert not await loop.run_in_executor(None, started.acquire, True, 0.2)  # no fourth
        release.set()
        assert await asyncio.gather(*calls) == ["done"] * 5
        assert seen == {"t_0", "t_1", "t_2"}
    finally:
        release.set()
        workers.close()


async def test_a_cancelled_wait_leaves_the_others_and_skips_a_call_not_started() -> None:
    workers = Workers(1, "t")
    release, begun = threading.Event(), threading.Event()
    ran: list[str] = []

    def first() -> str:
        begun.set()
        release.wait(10)
        ran.append("first")
        return "first"

    try:
        running = asyncio.ensure_future(workers.run(first))
        queued = asyncio.ensure_future(workers.run(lambda: ran.append("queued")))
        await asyncio.get_running_loop().run_in_executor(None, begun.wait, 10)
        queued.cancel()
        running.cancel()  # the call goes on; nobody is told its result
        release.set()
        assert await workers.run(lambda: "after") == "after"
        assert ran == ["first"]
        with pytest.raises(asyncio.CancelledError):
            await running
    finally:
        workers.close()


async def test_close_fails_calls_not_started_and_refuses_new_ones() -> None:
    workers = Workers(1, "t")
    release, begun = threading.Event(), threading.Event()
    worker: list[threading.Thread] = []

    def first() -> bool:
        worker.append(threading.current_thread())
        begun.set()
        return release.wait(10)

    running = asyncio.ensure_future(workers.run(first))
    queued = asyncio.ensure_future(workers.run(lambda: "never"))
    assert await asyncio.get_running_loop().run_in_executor(None, begun.wait, 10)
    workers.close()
    release.set()
    # An answer, not a cancellation: the lookup waiting on it answers its client (a 503).
    with pytest.raises(ClosedError, match="closed before the call ran"):
        await queued
    assert await running is True  # the call under way finishes
    with pytest.raises(ClosedError, match="closed"):
        await workers.run(lambda: 1)
    # ... and then its thread ends: nothing of a closed backend lingers.
    await asyncio.get_running_loop().run_in_executor(None, worker[0].join, 10)
    assert not worker[0].is_alive()
