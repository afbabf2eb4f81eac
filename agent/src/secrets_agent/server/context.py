"""What the API's handlers (aiohttp's and the lean read path's) are given to work with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from secrets_agent.backends.base import Backend, Health
from secrets_agent.config.schema import AgentConfig, BackendConfig
from secrets_agent.lookup.service import SecretService
from secrets_agent.ops.audit import AuditLog
from secrets_agent.ops.metrics import Metrics
from secrets_agent.server.access import AccessRules
from secrets_agent.server.peers import AccessPolicy


class Serving(Protocol):
    """The part of the agent's runtime that requests use (``secrets_agent.runtime.Runtime``)."""

    @property
    def service(self) -> SecretService: ...
    @property
    def policy(self) -> AccessPolicy: ...
    @property
    def access(self) -> AccessRules | None: ...
    @property
    def config(self) -> AgentConfig: ...
    @property
    def backends(self) -> tuple[tuple[BackendConfig, Backend], ...]: ...
    def readiness(self) -> dict[str, Health]: ...


S = TypeVar("S", bound=Serving)


class Current(Generic[S]):
    """The runtime serving now, returned when called (``ApiContext.current``); a reload sets
    ``runtime``. The compiled read path reads the slot itself: a frame less per read."""

    __slots__ = ("runtime",)

    def __init__(self) -> None:
        self.runtime: S | None = None

    def __call__(self) -> S:
        if (runtime := self.runtime) is None:
            raise RuntimeError("the agent is not started")
        return runtime


@dataclass(frozen=True)
class ApiContext:
    """What handlers need. ``current`` returns the runtime serving now: a reload swaps it."""

    current: Callable[[], Serving]
    metrics: Metrics
    audit: AuditLog | None = None
