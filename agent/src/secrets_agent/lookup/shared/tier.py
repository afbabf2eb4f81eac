"""The interface the lookup service calls on a node-cache miss, and the tier that is not there."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from secrets_agent.kinds import Kind
from secrets_agent.lookup.chain import Found

Upstream = Callable[[], Awaitable[Found | None]]
Invalidated = Callable[[Kind | None, str | None], object]
HintHandler = Callable[[Mapping[str, str | None]], object]


@dataclass(frozen=True)
class Shared:
    """What a lookup found (None: a miss), for how much longer it is fresh (None: full TTL),
    and how long ago the upstream gave it (on whichever node)."""

    found: Found | None
    ttl: float | None = None
    age: float = 0.0


@dataclass(frozen=True)
class TierHealth:
    available: bool
    detail: str


class LeaseUnknown(Exception):
    """The store did not answer: whether this node holds the lease cannot be told."""


class Lease(Protocol):
    """One node of the fleet at a time: ``acquire``, then ``renew`` within ``ttl``, ``release``.

    ``acquire`` and ``renew`` raise ``LeaseUnknown`` when the store does not answer: then no
    node can know who holds it, which is not the same as another node holding it.
    """

    ttl: float

    async def acquire(self) -> bool:
        """True if this node holds the lease now (taken, or still ours)."""
        ...

    async def renew(self) -> bool:
        """True if it was still ours and now lasts ``ttl`` again; False: stop the job."""
        ...

    async def release(self) -> None: ...


class SoloLease:
    """No shared tier: this node is the only one, so it always holds the lease."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl

    async def acquire(self) -> bool:
        return True

    async def renew(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class SharedTier(Protocol):
    shares_refreshes: bool  # True: expired values are refreshed through the tier

    async def fetch(
        self, kind: Kind, secret_id: str, team: str | None, upstream: Upstream
    ) -> Shared:
        """The shared entry, or ``upstream()``'s answer (then shared with the fleet)."""
        ...

    def invalidate(self, kind: Kind | None, secret_id: str | None) -> None:
        """Drop the shared entries and tell the other nodes; returns at once."""
        ...

    def attach(self, local: Invalidated) -> None:
        """Where invalidations from other nodes land (the newest runtime's node cache)."""
        ...

    def broadcast(self, topic: str, data: Mapping[str, str | None]) -> None:
        """Send a sealed hint to every other node (best effort, in the background)."""
        ...

    def on_hint(self, topic: str, handler: HintHandler) -> None:
        """Where other nodes' hints of ``topic`` land (the last handler registered)."""
        ...

    def lease(self, purpose: str, ttl: float) -> Lease:
        """A lease named after ``purpose`` in this namespace (one holder in the fleet)."""
        ...

    def health(self) -> TierHealth | None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class NoSharedTier:
    """No ``[shared_cache]``: every node-cache miss goes straight to the upstream."""

    shares_refreshes = False

    async def fetch(
        self, kind: Kind, secret_id: str, team: str | None, upstream: Upstream
    ) -> Shared:
        return Shared(await upstream())

    def invalidate(self, kind: Kind | None, secret_id: str | None) -> None:
        return None

    def attach(self, local: Invalidated) -> None:
        return None

    def broadcast(self, topic: str, data: Mapping[str, str | None]) -> None:
        return None

    def on_hint(self, topic: str, handler: HintHandler) -> None:
        return None

    def lease(self, purpose: str, ttl: float) -> Lease:
        return SoloLease(ttl)

    def health(self) -> TierHealth | None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
