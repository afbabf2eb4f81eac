"""The one small interface every backend implements."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from secrets_agent.kinds import Kind
from secrets_agent.metrics import Metrics


@dataclass(frozen=True)
class BackendContext:
    """What the agent lends every backend: its metrics, and the clock that tests move."""

    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], float] = time.monotonic


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

    def __init__(self, name: str, options: Any, context: BackendContext | None = None) -> None:
        self.name = name
        self.options = options
        self.context = context or BackendContext()

    async def start(self) -> None:
        """Authenticate / open files; raise ``BackendError`` if the backend is unusable."""
        return None

    async def close(self) -> None:
        """Release clients and credentials."""
        return None

    def health(self) -> Health:
        return Health(ready=True)

    def supports(self, kind: Kind) -> bool:
        """Whether this backend is configured to hold ``kind`` at all."""
        return True

    @abc.abstractmethod
    async def fetch(self, kind: Kind, secret_id: str) -> str | None:
        """Return the value as Airflow expects it, or None when the backend does not have it."""
