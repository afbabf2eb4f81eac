"""What a node has seen and invalidated: a store copy older than either is refused.

A store writer holds no key, yet can put an earlier token back under its own name. Every entry
carries when its value was fetched from the upstream, sealed; this node remembers, per name, the
newest fetch it has seen and when it (or the fleet, by message) invalidated it, and refuses an
entry fetched before either: a miss, never the old value. An entry lives at most its TTL, so the
memory needs to last no longer (``horizon``), and it is bounded (``size`` names).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cachetools import TTLCache

from secrets_agent.kinds import Kind

Name = tuple[Kind, str, str | None]


class Floors:
    def __init__(
        self, horizon: float, size: int = 65536, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._seen: TTLCache[Name, float] = TTLCache(size, max(horizon, 1.0), timer=clock)
        self._ids: TTLCache[tuple[Kind, str], float] = TTLCache(size, max(horizon, 1.0), clock)
        self._kinds: dict[Kind, float] = {}
        self._all = 0.0

    def admits(self, name: Name, fetched: float) -> bool:
        kind, secret_id, _ = name
        floor = max(
            self._seen.get(name, 0.0),
            self._ids.get((kind, secret_id), 0.0),
            self._kinds.get(kind, 0.0),
            self._all,
        )
        return fetched >= floor

    def saw(self, name: Name, fetched: float) -> None:
        if fetched > self._seen.get(name, 0.0):
            self._seen[name] = fetched

    def invalidated(self, kind: Kind | None, secret_id: str | None, at: float) -> None:
        """Copies fetched before ``at`` are refused (kind None: every kind)."""
        if kind is None:
            self._all = max(self._all, at)
        elif secret_id is None:
            self._kinds[kind] = max(self._kinds.get(kind, 0.0), at)
        elif at > self._ids.get((kind, secret_id), 0.0):
            self._ids[(kind, secret_id)] = at
