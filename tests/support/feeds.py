"""What the change-feed tests share: waiting on the running agent's own state."""

from __future__ import annotations

import time
from collections.abc import Callable

from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import CacheState
from support.helpers import RunningAgent


def eventually(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    """Poll until true (a readiness wait; the bound is a hang guard, not a timing claim)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.05)


async def _fresh(agent: RunningAgent, kind: Kind, secret_id: str, team: str | None) -> str | None:
    result = agent.agent.service.cache.fresh((kind, secret_id, team))
    return None if result is None else result.value


async def _negative(agent: RunningAgent, kind: Kind, secret_id: str) -> bool:
    result = agent.agent.service.cache.fresh((kind, secret_id, None))
    return result is not None and result.state is CacheState.NEGATIVE


def fresh(agent: RunningAgent, kind: Kind, secret_id: str, team: str | None = None) -> str | None:
    """The value the node serves as fresh right now (None: none, or a fresh miss)."""
    return agent.call(_fresh(agent, kind, secret_id, team))


def negative(agent: RunningAgent, kind: Kind, secret_id: str) -> bool:
    """Whether the node holds a fresh miss for the id (a deleted or disabled secret)."""
    return agent.call(_negative(agent, kind, secret_id))


def value(agent: RunningAgent, kind: Kind, secret_id: str) -> str | None:
    """A lookup through the agent's service, as a request would make it."""
    return agent.call(agent.agent.service.lookup(kind, secret_id)).value


def feed_health(agent: RunningAgent, backend: str) -> str:
    return agent.agent.runtime.readiness()[f"[feed:{backend}]"].detail
