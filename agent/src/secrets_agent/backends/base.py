"""The one small interface every backend implements."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from secrets_agent.backends.feeds import Feed
from secrets_agent.kinds import Kind
from secrets_agent.ops.metrics import Metrics


@dataclass(frozen=True)
class BackendContext:
    """What the agent lends every backend: its metrics, and the clock that tests move."""

    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class Versioned:
    """A value plus a validator the backend can check more cheaply than a fetch."""

    value: str
    version: str | None = None


@dataclass(frozen=True)
class Prefetched:
    kind: Kind
    secret_id: str
    found: Versioned


@dataclass(frozen=True)
class Health:
    ready: bool
    detail: str = "ok"


class Backend(abc.ABC):
    """Fetches one secret by kind and id: a value, ``None`` for a miss, or an agent error."""

    type_name: ClassVar[str]
    Options: ClassVar[type]
    # Backends that log in upstream report auth themselves; the others hold all they need once
    # started, and the agent reports them authenticated.
    manages_auth: ClassVar[bool] = False
    # Flags for matching the ``*_lookup_pattern`` options, as the provider being replaced does.
    lookup_pattern_flags: ClassVar[int] = 0

    def __init__(self, name: str, options: Any, context: BackendContext | None = None) -> None:
        self.name = name
        self.options = options
        self.context = context or BackendContext()

    async def start(self) -> None:
        """Authenticate / open files; raise ``BackendError`` if the backend is unusable."""
        return None

    async def check_local(self) -> None:
        """Read the local files ``start`` would read (``check-config``); raise ``BackendError``."""
        return None

    async def close(self) -> None:
        """Release clients and credentials."""
        return None

    def health(self) -> Health:
        return Health(ready=True)

    def upstream_failure(self) -> str | None:
        """Why the last upstream call failed to get an answer, if it did (see ``ApiCalls``)."""
        from secrets_agent.backends.calls import ApiCalls

        calls = getattr(self, "calls", None)
        return calls.last_failure if isinstance(calls, ApiCalls) else None

    def upstream_gave_no_answer(self, reason: str) -> None:
        """A call ran past the chain's ``deadline``: ``upstream_failure`` says so until the
        next call that gets an answer."""
        from secrets_agent.backends.calls import ApiCalls

        calls = getattr(self, "calls", None)
        if isinstance(calls, ApiCalls):
            calls.gave_no_answer(reason)

    def supports(self, kind: Kind) -> bool:
        """Whether this backend is configured to hold ``kind`` at all."""
        return True

    @abc.abstractmethod
    async def fetch(self, kind: Kind, secret_id: str) -> str | None:
        """Return the value as Airflow expects it, or None when the backend does not have it."""

    async def fetch_versioned(self, kind: Kind, secret_id: str) -> Versioned | None:
        """``fetch`` plus a version, for backends that can revalidate cheaply."""
        value = await self.fetch(kind, secret_id)
        return None if value is None else Versioned(value)

    async def fetch_for_team(
        self, kind: Kind, secret_id: str, team: str | None
    ) -> Versioned | None:
        """``fetch_versioned`` for a lookup made for ``team``; team layouts override it."""
        return await self.fetch_versioned(kind, secret_id)

    async def revalidate(self, kind: Kind, secret_id: str, version: str) -> bool:
        """True when the upstream value is still ``version`` (so the cache may re-stamp it)."""
        return False

    async def prefetch(self) -> list[Prefetched]:
        """Values to load into the cache at start (configured per backend)."""
        return []

    def change_feed(self) -> Feed | None:
        """A new feed of this backend's change events, when its ``feed`` table is configured."""
        return None
