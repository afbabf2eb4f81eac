"""The ordered backend chain for a lookup: first backend that has the id wins."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from secrets_agent.backends.base import Backend
from secrets_agent.errors import BackendError, DeniedError, TransientError
from secrets_agent.kinds import Kind
from secrets_agent.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Link:
    backend: Backend
    patterns: dict[Kind, re.Pattern[str] | None]

    def accepts(self, kind: Kind, secret_id: str) -> bool:
        """Like the Airflow providers' ``*_lookup_pattern``: only ask where the id can live."""
        pattern = self.patterns.get(kind)
        return self.backend.supports(kind) and (pattern is None or bool(pattern.match(secret_id)))


class BackendChain:
    def __init__(self, links: Sequence[Link], metrics: Metrics) -> None:
        self.links = tuple(links)
        self._metrics = metrics

    @property
    def backends(self) -> tuple[Backend, ...]:
        return tuple(link.backend for link in self.links)

    async def fetch(self, kind: Kind, secret_id: str) -> str | None:
        """Ask each accepting backend in order.

        An error stops the walk instead of falling through: a later backend's answer could
        shadow the value the failing backend is authoritative for.
        """
        for link in self.links:
            if link.accepts(kind, secret_id):
                value = await self._fetch_one(link.backend, kind, secret_id)
                if value is not None:
                    return value
        return None

    async def _fetch_one(self, backend: Backend, kind: Kind, secret_id: str) -> str | None:
        started = time.perf_counter()
        result = "error"
        try:
            value = await backend.fetch(kind, secret_id)
            result = "found" if value is not None else "missing"
            return value
        except DeniedError:
            result = "denied"
            raise
        except TransientError:
            result = "transient"
            raise
        except BackendError:
            raise
        except Exception as exc:
            # A backend bug must not leak SDK text (it may quote a value): keep the type only.
            log.error("backend %r raised %s fetching a %s", backend.name, type(exc).__name__, kind)
            raise BackendError(backend.name, f"unexpected {type(exc).__name__}") from None
        finally:
            self._metrics.upstream_calls.labels(backend.name, kind.value, result).inc()
            self._metrics.upstream_latency.labels(backend.name).observe(
                time.perf_counter() - started
            )
