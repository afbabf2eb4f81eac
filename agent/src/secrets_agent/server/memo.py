"""A bounded memo with no clear-all cliff: two generations of plain dicts.

New entries go to ``young``; when it is full, the old generation is dropped and ``young``
becomes ``old``. A hit in ``old`` is copied back to ``young``, so whatever is still asked for
outlives every turn, while what nobody asks for leaves within two. Unlike clearing the whole
memo when it fills, a stream of new keys never empties it of the hot ones; unlike an LRU, a hit
moves nothing: a hit in ``young`` is one dict lookup, which a hot path may make itself.
"""

from __future__ import annotations

from typing import Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

_MISSING: object = object()
SMALLEST = 8192
# ~700 bytes a request head: a peer streaming distinct ids fills a memo to its size, so even a
# cache of millions gets one of ~90 MiB at most (its hottest 65,536 heads at hand).
LARGEST = 1 << 17


def sized_for(keys: int) -> int:
    """A memo's size for reads of up to ``keys`` distinct keys (the cache's ``max_entries``):
    all of them fit in the young generation, so a fleet's mix never drops one it still asks for
    (a memo smaller than the mix re-parses every request its rotation dropped)."""
    return max(SMALLEST, min(2 * keys, LARGEST))


class Generations(Generic[K, V]):
    """At most ``size`` entries, in two generations of ``size // 2``."""

    __slots__ = ("_generation", "old", "young")

    def __init__(self, size: int) -> None:
        self._generation = max(1, size // 2)
        self.young: dict[K, V] = {}  # the hot path may look here first, then call ``get``
        self.old: dict[K, V] = {}

    @overload
    def get(self, key: K) -> V | None: ...

    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: object = None) -> object:
        found = self.young.get(key, _MISSING)
        if found is not _MISSING:
            return found
        found = self.old.get(key, _MISSING)
        if found is _MISSING:
            return default
        self.put(key, found)  # type: ignore[arg-type]  # found is a V here
        return found

    def put(self, key: K, value: V) -> None:
        if len(self.young) >= self._generation:
            self.old, self.young = self.young, {}
        self.young[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self.young or key in self.old

    def __len__(self) -> int:
        """Entries held (a key promoted from ``old`` is counted in both until ``old`` goes)."""
        return len(self.young) + len(self.old)
