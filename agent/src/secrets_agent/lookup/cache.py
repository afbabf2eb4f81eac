"""Bounded, encrypted TTL cache that keeps expired values for a bounded stale window."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache

from secrets_agent.kinds import Kind
from secrets_agent.lookup.cipher import Cipher

Clock = Callable[[], float]
Key = tuple[Kind, str, str | None]  # kind, id, team (None: no team scope)


@dataclass(frozen=True, slots=True)
class _Entry:
    token: bytes | None  # None records a miss (negative entry)
    stored_at: float
    expires_at: float
    source: str | None = None  # the backend that produced the value
    version: str | None = None  # its validator, for revalidation without a full fetch


@dataclass(frozen=True, slots=True)
class Cached:
    value: str | None
    age: float
    fresh: bool
    source: str | None = None
    version: str | None = None


class SecretCache:
    """LRU-bounded; each entry is fresh until its TTL, then servable stale for ``max_stale``.

    Not thread-safe: the agent uses it from its event loop only.
    """

    def __init__(
        self,
        *,
        max_entries: int,
        ttl: Callable[[Kind], float],
        negative_ttl: float,
        max_stale: float,
        cipher: Cipher,
        clock: Clock,
    ) -> None:
        self._entries: LRUCache[Key, _Entry] = LRUCache(maxsize=max_entries)
        self._ttl, self._negative_ttl, self._max_stale = ttl, negative_ttl, max_stale
        self._cipher, self._clock = cipher, clock

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, kind: Kind, secret_id: str, team: str | None = None) -> Cached | None:
        """Return the entry (fresh or stale), or None when absent or past its stale window."""
        key = (kind, secret_id, team)
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        fresh = now < entry.expires_at
        if not fresh and not self._servable_stale(entry, now):
            del self._entries[key]
            return None
        value = None if entry.token is None else self._cipher.decrypt(entry.token)
        if entry.token is not None and value is None:
            del self._entries[key]  # encrypted under a key we no longer hold
            return None
        age = max(0.0, now - entry.stored_at)
        return Cached(value, age, fresh, entry.source, entry.version)

    def put(
        self,
        kind: Kind,
        secret_id: str,
        value: str | None,
        source: str | None = None,
        version: str | None = None,
        *,
        team: str | None = None,
        ttl: float | None = None,
    ) -> None:
        """Store a value (None: a miss); ``ttl`` overrides the kind's (the shared entry's rest)."""
        if ttl is None:
            ttl = self._negative_ttl if value is None else self._ttl(kind)
        key = (kind, secret_id, team)
        if ttl <= 0:
            self._entries.pop(key, None)
            return
        now = self._clock()
        token = None if value is None else self._cipher.encrypt(value)
        self._entries[key] = _Entry(token, now, now + ttl, source, version)

    def restamp(self, kind: Kind, secret_id: str, team: str | None = None) -> None:
        """The upstream confirmed the value is current: fresh again, without re-encrypting."""
        key = (kind, secret_id, team)
        entry = self._entries.get(key)
        if entry is not None and entry.token is not None:
            now = self._clock()
            self._entries[key] = _Entry(
                entry.token, now, now + self._ttl(kind), entry.source, entry.version
            )

    def invalidate(self, kind: Kind | None = None, secret_id: str | None = None) -> int:
        """Drop everything, one kind, or one id of a kind; return how many entries went."""
        doomed = [
            key
            for key in self._entries
            if (kind is None or key[0] is kind) and (secret_id is None or key[1] == secret_id)
        ]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def carried_over(self, sources: set[str]) -> SecretCache:
        """A new cache with the same settings and the entries ``sources`` produced.

        For a reload that changed the chain: misses may now be found elsewhere, and values of a
        replaced backend may be wrong, so only the unchanged backends' values come along.
        """
        copy = SecretCache(
            max_entries=int(self._entries.maxsize),
            ttl=self._ttl,
            negative_ttl=self._negative_ttl,
            max_stale=self._max_stale,
            cipher=self._cipher,
            clock=self._clock,
        )
        for key, entry in list(self._entries.items()):
            if entry.source in sources:
                copy._entries[key] = entry
        return copy

    def sweep(self) -> int:
        """Forget entries that can no longer be served, so old secrets leave memory."""
        now = self._clock()
        doomed = [
            key
            for key, entry in self._entries.items()
            if now >= entry.expires_at and not self._servable_stale(entry, now)
        ]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def _servable_stale(self, entry: _Entry, now: float) -> bool:
        # Misses are never served stale: "not found" from an unreachable upstream proves nothing.
        return entry.token is not None and now < entry.expires_at + self._max_stale
