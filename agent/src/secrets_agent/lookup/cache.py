"""Bounded, encrypted TTL cache that keeps expired values for a bounded stale window."""

from __future__ import annotations

import enum
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from secrets_agent.kinds import Kind
from secrets_agent.lookup.cipher import Cipher

Clock = Callable[[], float]
Key = tuple[Kind, str, str | None]  # kind, id, team (None: no team scope)
# After a stale value's refresh fails transiently, the upstream is asked again for it only in
# the background, this long after the failure, doubling with each failure up to the cap.
RETRY_FIRST, RETRY_MAX = 1.0, 10.0
# Used entries an eviction passes over at most, before it takes one anyway: a store costs at
# most this many moves, even when every entry was read since the last store.
SECOND_CHANCES = 64


@dataclass(slots=True)
class _Entry:
    token: bytes | None  # the value sealed (``Cipher.seal``); None records a miss
    stored_at: float
    expires_at: float
    source: str | None = None  # the backend that produced the value
    version: str | None = None  # its validator, for revalidation without a full fetch
    refresh_at: float = math.inf  # when a read entry is refreshed ahead of its expiry
    read: bool = False  # read while fresh since it was stored: worth refreshing ahead
    failures: int = 0  # refreshes of this stale value that failed transiently in a row
    retry_at: float = 0.0  # when the upstream may be asked for it again (after a failure)
    used: bool = False  # read since eviction last passed it over (its second chance)
    # Removed from the cache or replaced there: no longer its answer for the key. What the
    # compiled read path checks of an entry it remembers, instead of looking the key up.
    gone: bool = False


def _let_go(entry: _Entry) -> None:
    """An entry the cache no longer holds: ``gone`` for whoever still does (the compiled read
    path's memo, until it sees), and its value let go, so an old secret leaves memory."""
    entry.gone, entry.token = True, None


class CacheState(enum.StrEnum):
    HIT = "HIT"
    MISS = "MISS"
    STALE = "STALE"
    NEGATIVE = "NEGATIVE"


@dataclass(slots=True)  # not frozen: built on every hit, and frozen costs 3x to build
class Result:
    """A lookup's answer: the cache's for a fresh entry (``fresh``), else the service's."""

    value: str | None
    state: CacheState
    age: float
    source: str | None = None  # the backend the value came from (for the audit stream)
    refresh_due: bool = False  # fresh, but past its refresh-ahead point


@dataclass(slots=True)
class Cached:
    value: str | None
    age: float
    fresh: bool
    source: str | None = None
    version: str | None = None
    refresh_due: bool = False  # fresh, but past its refresh-ahead point
    failing: bool = False  # stale, and its last refresh failed transiently (``failed``)
    retry_due: bool = False  # failing, and its backoff is over: time for one more try


@dataclass(frozen=True, slots=True)
class Persisted:
    """A value as a snapshot keeps it: still a Fernet token, with its age instead of a clock."""

    key: Key
    token: bytes
    age: float
    source: str | None
    version: str | None


@dataclass(frozen=True)
class RefreshAhead:
    """Refresh read entries at ``share`` of their TTL, spread by ±``jitter`` of that point."""

    share: float = 0.0  # 0: off
    jitter: float = 0.0
    rng: Callable[[], float] = random.random

    def offset(self, ttl: float) -> float:
        if self.share <= 0:
            return math.inf
        spread = 1.0 + self.jitter * (2.0 * self.rng() - 1.0)
        return ttl * min(0.99, self.share * spread)


class SecretCache:
    """Bounded, evicting the least recently used (by second chance); each entry is fresh
    until its TTL, then servable stale for ``max_stale``.

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
        refresh: RefreshAhead | None = None,
    ) -> None:
        # Oldest first. A hit only marks its entry ``used``; eviction gives a used entry a
        # second chance (to the young end, unmarked) and takes the first unused one: a hit
        # touches no other entry, and no key is looked up twice (see ``_store``).
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._max_entries = max_entries
        self._ttl, self._negative_ttl, self._max_stale = ttl, negative_ttl, max_stale
        self._cipher, self._clock = cipher, clock
        self._refresh = refresh or RefreshAhead()

    def __len__(self) -> int:
        return len(self._entries)

    def negatives(self) -> int:
        """Entries that record a miss (for ``status``: a scan, never on the read path)."""
        return sum(1 for entry in self._entries.values() if entry.token is None)

    @property
    def cipher(self) -> Cipher:
        return self._cipher

    @property
    def clock(self) -> Clock:
        return self._clock

    def get(self, kind: Kind, secret_id: str, team: str | None = None) -> Cached | None:
        """Return the entry (fresh or stale), or None when absent or past its stale window."""
        key = (kind, secret_id, team)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if (fresh := self.fresh(key)) is not None:
            return Cached(
                fresh.value, fresh.age, True, entry.source, entry.version, fresh.refresh_due
            )
        # Expired (``fresh`` would have answered otherwise): servable stale, or gone for good.
        now = self._clock()
        if entry.token is None or not self._servable_stale(entry, now):
            self._forget(key)  # a miss has no stale window
            return None
        value = self._cipher.unseal(entry.token)
        entry.used = True
        age = max(0.0, now - entry.stored_at)
        failing = entry.failures > 0
        retry_due = failing and now >= entry.retry_at
        return Cached(value, age, False, entry.source, entry.version, False, failing, retry_due)

    def fresh(self, key: Key) -> Result | None:
        """A fresh entry's answer (a hit or a negative), marked used; None if absent or expired
        (``get`` says more). The path of every cached read: a dict lookup, a clock read and a
        decryption."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.expires_at:
            return None
        token = entry.token
        value = None if token is None else self._cipher.unseal(token)
        entry.used = entry.read = True
        age = now - entry.stored_at
        age = age if age > 0.0 else 0.0  # max(), without its call
        if value is None:
            return Result(None, CacheState.NEGATIVE, age, entry.source)
        return Result(value, CacheState.HIT, age, entry.source, now >= entry.refresh_at)

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
        age: float = 0.0,
    ) -> None:
        """Store a value (None: a miss); ``ttl`` overrides the kind's (the shared entry's rest),
        ``age``: how long ago the upstream gave it (a shared entry's)."""
        if ttl is None:
            ttl = self._negative_ttl if value is None else self._ttl(kind)
        key = (kind, secret_id, team)
        if ttl <= 0:
            self._forget(key)
            return
        now = self._clock()
        token = None if value is None else self._cipher.seal(value)
        refresh_at = math.inf if value is None else now + self._refresh.offset(ttl)
        self._store(key, _Entry(token, now - age, now + ttl, source, version, refresh_at))

    def restamp(self, kind: Kind, secret_id: str, team: str | None = None) -> None:
        """The upstream confirmed the value is current: fresh again, without re-encrypting."""
        key = (kind, secret_id, team)
        entry = self._entries.get(key)
        if entry is not None and entry.token is not None:
            now, ttl = self._clock(), self._ttl(kind)
            self._store(
                key,
                _Entry(
                    entry.token,
                    now,
                    now + ttl,
                    entry.source,
                    entry.version,
                    now + self._refresh.offset(ttl),
                ),
            )

    def failed(self, key: Key) -> None:
        """Refreshing an expired value failed transiently: it is ``failing`` (served stale at
        once) until a refresh succeeds, and due for another try after a growing backoff."""
        entry = self._entries.get(key)
        now = self._clock()
        if entry is None or entry.token is None or now < entry.expires_at:
            return  # a fresh value (a refresh-ahead, a refresh-now) stays as it is
        entry.failures += 1
        entry.retry_at = now + min(RETRY_MAX, RETRY_FIRST * 2.0 ** min(entry.failures - 1, 32))

    def retry_now(self, key: Key) -> None:
        """Forget ``failed``: the next lookup asks the upstream itself (and hears its error)."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.failures, entry.retry_at = 0, 0.0

    def postpone_refresh(self, kind: Kind, secret_id: str, team: str | None = None) -> None:
        """A refresh-ahead failed: try again halfway to expiry, not at every scan."""
        entry = self._entries.get((kind, secret_id, team))
        if entry is not None:
            now = self._clock()
            entry.refresh_at = now + max(1.0, (entry.expires_at - now) / 2)

    def due_for_refresh(self) -> list[tuple[Key, str | None]]:
        """Keys (and their backends) read during their TTL and now past their refresh point."""
        now = self._clock()
        return [
            (key, entry.source)
            for key, entry in self._scan()
            if entry.read and entry.token is not None and entry.refresh_at <= now < entry.expires_at
        ]

    def invalidate(self, kind: Kind | None = None, secret_id: str | None = None) -> int:
        """Drop everything, one kind, or one id of a kind; return how many entries went."""
        doomed = [
            key
            for key in self._entries
            if (kind is None or key[0] is kind) and (secret_id is None or key[1] == secret_id)
        ]
        for key in doomed:
            self._forget(key)
        return len(doomed)

    def holding(self) -> list[tuple[Key, str | None, str | None]]:
        """Every entry's key, backend and version (for change feeds), without marking it used."""
        return [(key, entry.source, entry.version) for key, entry in self._scan()]

    def expire(self, key: Key) -> bool:
        """The upstream changed: a value is no longer fresh (servable stale); a miss goes."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry.token is None:
            self._forget(key)
            return True
        entry.expires_at = min(entry.expires_at, self._clock())
        entry.refresh_at = math.inf
        entry.failures, entry.retry_at = 0, 0.0  # the next lookup asks for the new value itself
        return True

    def drop(self, key: Key) -> bool:
        """Forget one entry (a deleted or disabled secret must not be served even stale)."""
        return self._forget(key) is not None

    def carried_over(self, sources: set[str]) -> SecretCache:
        """A new cache with the same settings and the entries ``sources`` produced.

        For a reload that changed the chain: misses may now be found elsewhere, and values of a
        replaced backend may be wrong, so only the unchanged backends' values come along.
        """
        copy = SecretCache(
            max_entries=self._max_entries,
            ttl=self._ttl,
            negative_ttl=self._negative_ttl,
            max_stale=self._max_stale,
            cipher=self._cipher,
            clock=self._clock,
            refresh=self._refresh,
        )
        for key, entry in self._scan():
            if entry.source in sources:
                copy._store(key, replace(entry, gone=False))  # its own: this cache may drop it
        return copy

    def resealed(self, cipher: Cipher) -> SecretCache:
        """A new cache with the same settings and entries, every value sealed under ``cipher``
        (the keys changed: nothing stays under a key that was removed)."""
        copy = SecretCache(
            max_entries=self._max_entries,
            ttl=self._ttl,
            negative_ttl=self._negative_ttl,
            max_stale=self._max_stale,
            cipher=cipher,
            clock=self._clock,
            refresh=self._refresh,
        )
        for key, entry in self._scan():
            token = None if entry.token is None else cipher.seal(self._cipher.unseal(entry.token))
            copy._store(key, replace(entry, token=token))
        return copy

    def sweep(self) -> int:
        """Forget entries that can no longer be served, so old secrets leave memory."""
        now = self._clock()
        doomed = [
            key
            for key, entry in self._scan()
            if now >= entry.expires_at and not self._servable_stale(entry, now)
        ]
        for key in doomed:
            self._forget(key)
        return len(doomed)

    def persisted(self) -> list[Persisted]:
        """The servable values, still encrypted, for a snapshot; misses are never persisted."""
        now = self._clock()
        return [
            Persisted(
                key,
                Cipher.token(entry.token),
                max(0.0, now - entry.stored_at),
                entry.source,
                entry.version,
            )
            for key, entry in self._scan()
            if entry.token is not None
            and (now < entry.expires_at or self._servable_stale(entry, now))
        ]

    def restore(self, items: Iterable[Persisted]) -> int:
        """Load snapshot values as already expired: served only stale until refreshed.

        Their stale window counts from when they were stored, not from when they were loaded.
        A token no current key opens is left out.
        """
        now, count = self._clock(), 0
        for item in items:
            stored_at = now - item.age
            if item.key in self._entries or now >= stored_at + self._max_stale:
                continue
            sealed = self._cipher.admit(item.token)
            if sealed is None:
                continue
            self._store(item.key, _Entry(sealed, stored_at, stored_at, item.source, item.version))
            count += 1
        return count

    def _store(self, key: Key, entry: _Entry) -> None:
        """Insert or replace as the most recently used; evict the least recently used."""
        replaced = self._entries.pop(key, None)
        if replaced is not None and replaced is not entry:
            _let_go(replaced)
        self._entries[key] = entry
        chances = SECOND_CHANCES
        while len(self._entries) > self._max_entries:
            oldest, candidate = self._entries.popitem(last=False)
            # Read since last passed over (a bounded number of such per store), or just stored
            # while others are left to evict: to the young end, unmarked.
            if (candidate.used and chances > 0) or (oldest == key and self._entries):
                chances -= candidate.used
                candidate.used = False
                self._entries[oldest] = candidate
            else:
                _let_go(candidate)

    def _forget(self, key: Key) -> _Entry | None:
        """Remove an entry (marked ``gone``); None if there was none."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            _let_go(entry)
        return entry

    def _scan(self) -> list[tuple[Key, _Entry]]:
        """Every entry, without marking it used: a scan must not reorder the LRU."""
        return list(self._entries.items())

    def _servable_stale(self, entry: _Entry, now: float) -> bool:
        # Misses are never served stale: "not found" from an unreachable upstream proves nothing.
        return entry.token is not None and now < entry.expires_at + self._max_stale
