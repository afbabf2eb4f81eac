"""The ordered backend chain for a lookup: first backend that has the id wins."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from secrets_agent.backends.base import Backend
from secrets_agent.errors import BackendError, DeniedError, TransientError
from secrets_agent.kinds import Kind
from secrets_agent.ops.logs import RateLimited
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Link:
    backend: Backend
    patterns: dict[Kind, re.Pattern[str] | None]
    teams: frozenset[str] = frozenset()  # empty: serves every lookup, with or without a team
    deadline: float = 120.0  # seconds one fetch may take in all (``[[backends]] deadline``)

    def __post_init__(self) -> None:
        # The backend's own flags (the amazon provider matches ignoring case) folded in once:
        # every negative answered from the cache asks which backends it spared.
        flags = self.backend.lookup_pattern_flags
        patterns = {
            kind: re.compile(p.pattern, p.flags | flags) if p is not None and flags else p
            for kind, p in self.patterns.items()
        }
        object.__setattr__(self, "patterns", patterns)

    def accepts(self, kind: Kind, secret_id: str, team: str | None = None) -> bool:
        """Like the Airflow providers' ``*_lookup_pattern``: only ask where the id can live."""
        if self.teams and team not in self.teams:
            return False
        pattern = self.patterns.get(kind)
        return self.backend.supports(kind) and (pattern is None or bool(pattern.match(secret_id)))


@dataclass(frozen=True)
class Found:
    value: str
    source: str  # the backend's name, so a revalidation asks the same backend
    version: str | None = None


class BackendChain:
    def __init__(self, links: Sequence[Link], metrics: Metrics) -> None:
        self.links = tuple(links)
        self._metrics = metrics
        self._late = RateLimited(log)  # an upstream that hangs for every key: a line a minute

    @property
    def backends(self) -> tuple[Backend, ...]:
        return tuple(link.backend for link in self.links)

    def accepting(self, kind: Kind, secret_id: str, team: str | None = None) -> list[str]:
        """The backends ``fetch`` would ask, in order, when none has the id."""
        return [lk.backend.name for lk in self.links if lk.accepts(kind, secret_id, team)]

    async def fetch(self, kind: Kind, secret_id: str, team: str | None = None) -> Found | None:
        """Ask each accepting backend in order.

        An error stops the walk instead of falling through: a later backend's answer could
        shadow the value the failing backend is authoritative for.
        """
        for link in self.links:
            if link.accepts(kind, secret_id, team):
                found = await self._fetch_from(link, kind, secret_id, team)
                if found is not None:
                    return found
        return None

    async def _fetch_from(
        self, link: Link, kind: Kind, secret_id: str, team: str | None = None
    ) -> Found | None:
        backend = link.backend
        got = await self._guard(
            link,
            kind,
            lambda: backend.fetch_for_team(kind, secret_id, team),
            lambda v: "missing" if v is None else "found",
        )
        return None if got is None else Found(got.value, backend.name, got.version)

    async def revalidate(
        self, kind: Kind, secret_id: str, found: Found, team: str | None = None
    ) -> bool:
        """Ask the backend that produced ``found`` whether it is still current."""
        link = next((lk for lk in self.links if lk.backend.name == found.source), None)
        if link is None or found.version is None or not link.accepts(kind, secret_id, team):
            return False
        backend, version = link.backend, found.version
        return await self._guard(
            link,
            kind,
            lambda: backend.revalidate(kind, secret_id, version),
            lambda same: "unchanged" if same else "changed",
        )

    async def _guard(
        self,
        link: Link,
        kind: Kind,
        call: Callable[[], Awaitable[T]],
        outcome: Callable[[T], str],
    ) -> T:
        """Run one backend call with metrics, within its deadline; anything but our own
        errors becomes one."""
        backend = link.backend
        started = time.perf_counter()
        result = "error"
        deadline = asyncio.timeout(link.deadline)
        try:
            async with deadline:
                answer = await call()
            result = outcome(answer)
            return answer
        except DeniedError:
            result = "denied"
            raise
        except TransientError:
            result = "transient"
            raise
        except BackendError:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                result = "transient"
                self._late.log(
                    backend.name,
                    logging.WARNING,
                    "backend %r gave no answer within its deadline (%gs)",
                    backend.name,
                    link.deadline,
                )
                error = TransientError(
                    backend.name, f"no answer within {link.deadline:g}s (deadline)"
                )
                backend.upstream_gave_no_answer(str(error))
                raise error from None
            # A backend bug must not leak SDK text (it may quote a value): keep the type only.
            log.error("backend %r raised %s on a %s", backend.name, type(exc).__name__, kind)
            raise BackendError(backend.name, f"unexpected {type(exc).__name__}") from None
        finally:
            self._metrics.fetched(backend.name, kind.value, result, time.perf_counter() - started)
