"""A fleet's change feeds: one consumer per feed at a time, what it applied relayed to all.

With ``[shared_cache]`` every node may be configured with the same queue or subscription; the
node holding the feed's lease in the store consumes it (renewing the lease every round), drops
the fleet's copies as it applies each event, and relays the hints as sealed messages so the
other nodes drop their own copies and note the change. Another node takes the feed over within
the lease's time when the holder dies, and revalidates what it holds (``FeedRunner``). Without
a tier every node holds every lease: each consumes its own queue.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from secrets_agent.backends.feeds import Hint
from secrets_agent.errors import TransientError
from secrets_agent.kinds import Kind
from secrets_agent.lookup.feeds import Relayed
from secrets_agent.lookup.shared.tier import Lease, LeaseUnknown, SharedTier
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)

TOPIC = "feed:"  # + the feed's (backend's) name
UNREACHABLE = "the shared cache is unreachable, so no node can take this feed's lease"
# A version is the event's own text (AWS's and Azure's are ids of at most 64 characters): a
# longer one, from whoever could send to the queue, would seal past MESSAGE_MAX_BYTES and be
# refused by every other node. Without it a node refetches, whatever the version.
MAX_VERSION = 256


class FleetConsumers:
    """``Consumers`` on the shared tier's leases and hints."""

    def __init__(self, tier: SharedTier, metrics: Metrics) -> None:
        self._tier, self._metrics = tier, metrics
        self._leases: dict[str, Lease] = {}
        self._holding: dict[str, bool] = {}

    async def turn(self, feed: str, ttl: float) -> bool:
        lease = self._leases.get(feed)
        if lease is None:
            lease = self._leases[feed] = self._tier.lease(TOPIC + feed, ttl)
        try:
            held = await (lease.renew() if self._holding.get(feed) else lease.acquire())
        except LeaseUnknown:
            # Nobody can tell who holds it, so nobody consumes (the events wait in the queue,
            # and the hints could not be relayed anyway): a failing feed, not a standby.
            self._holding[feed] = False
            self._metrics.feed_lease.labels(feed).set(0)
            raise TransientError(feed, UNREACHABLE) from None
        if held != self._holding.get(feed, False):
            log.info("feed %r: %s", feed, "this node consumes it" if held else "another node does")
        self._holding[feed] = held
        self._metrics.feed_lease.labels(feed).set(float(held))
        return held

    def relay(self, feed: str, hints: Sequence[Hint]) -> None:
        for hint in hints:
            self._tier.broadcast(TOPIC + feed, to_data(hint))

    def listen(self, feed: str, relayed: Relayed) -> None:
        def received(data: Mapping[str, str | None]) -> None:
            hint = from_data(data)
            if hint is not None:
                relayed([hint])

        self._tier.on_hint(TOPIC + feed, received)

    async def release(self, feed: str) -> None:
        lease = self._leases.pop(feed, None)
        if lease is not None and self._holding.pop(feed, False):
            await lease.release()
        self._metrics.feed_lease.labels(feed).set(0)


def to_data(hint: Hint) -> dict[str, str | None]:
    """A hint as a sealed message's fields (names only, never a value)."""
    return {
        "kind": hint.kind.value,
        "id": hint.secret_id,
        "version": hint.version if len(hint.version or "") <= MAX_VERSION else None,
        "at": None if hint.at is None else repr(hint.at),
        "gone": "1" if hint.gone else None,
    }


def from_data(data: Mapping[str, str | None]) -> Hint | None:
    """The hint another node relayed; None for a message this version cannot read."""
    try:
        kind, secret_id, at = Kind(str(data.get("kind"))), data.get("id"), data.get("at")
        if not isinstance(secret_id, str):
            return None
        return Hint(
            kind,
            secret_id,
            data.get("version"),
            None if at is None else float(at),
            bool(data.get("gone")),
        )
    except (ValueError, TypeError):
        return None
