"""Refresh-now's budget: token buckets per peer and for the whole agent, so neither one peer
varying ids nor many peers together can turn forced reads into a flood on the fleet."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from cachetools import TTLCache

_MINUTE = 60.0


class _Bucket:
    def __init__(self, size: int, now: float) -> None:
        self.tokens, self.at = float(size), now

    def level(self, size: int, now: float) -> float:
        self.tokens = min(float(size), self.tokens + (now - self.at) * size / _MINUTE)
        self.at = now
        return self.tokens


class Budget:
    """``per_peer`` and ``total`` forced reads a minute, each with a burst of as many."""

    def __init__(
        self, per_peer: int, total: int, clock: Callable[[], float], peers: int = 4096
    ) -> None:
        self._per_peer, self._total, self._clock = per_peer, total, clock
        self._all = _Bucket(total, clock())
        # A peer unseen for a minute has a full bucket again: forgetting it changes nothing.
        self._peers: TTLCache[Hashable, _Bucket] = TTLCache(peers, _MINUTE, timer=clock)

    def take(self, peer: Hashable | None) -> bool:
        """One forced read for ``peer``, if both its bucket and the agent's have one left."""
        now = self._clock()
        bucket = None
        if peer is not None:
            bucket = self._peers.get(peer) or _Bucket(self._per_peer, now)
            self._peers[peer] = bucket
            if bucket.level(self._per_peer, now) < 1.0:
                return False
        if self._all.level(self._total, now) < 1.0:
            return False
        self._all.tokens -= 1.0
        if bucket is not None:
            bucket.tokens -= 1.0
        return True
