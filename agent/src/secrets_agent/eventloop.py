"""The event loop the agent runs on: uvloop's where it is installed, else asyncio's own.

uvloop runs the loop itself in C: about a third less CPU per cached lookup on the agent's
socket than asyncio's loop, which spends most of a request's time in Python. Everything the
agent does works on both (the test suite runs the daemon on uvloop and the in-process tests on
asyncio's loop); ``listener.event_loop`` picks one explicitly.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable

from secrets_agent.errors import StartupError

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: str) -> tuple[str, LoopFactory]:
    """The loop's name and factory for ``listener.event_loop`` (auto, uvloop or asyncio)."""
    if choice != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            if choice == "uvloop":
                raise StartupError(
                    'listener.event_loop is "uvloop" but uvloop is not installed '
                    "(pip install uvloop)"
                ) from None
        else:
            factory: LoopFactory = uvloop.new_event_loop
            return "uvloop", factory
    return "asyncio", asyncio.new_event_loop
