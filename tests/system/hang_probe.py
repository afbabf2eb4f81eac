"""A test that never finishes, run only by ``test_hang_guard`` (its name keeps it out of the
suite's own collection)."""

from __future__ import annotations

import asyncio


async def test_waits_forever() -> None:
    await asyncio.Event().wait()
