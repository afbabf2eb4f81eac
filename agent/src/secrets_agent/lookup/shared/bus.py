"""Messages to every node: classic pub/sub on one server (or a Sentinel's master), sharded
pub/sub (SPUBLISH / SSUBSCRIBE) on a cluster, behind one small interface."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.utils import str_if_bytes

from secrets_agent.lookup.shared.guard import STORE_ERRORS

Deliver = Callable[[bytes], object]
_CLOSE_WAIT = 1.0  # seconds


class Bus(Protocol):
    async def publish(self, channel: str, message: bytes) -> None: ...

    async def listen(self, channels: Sequence[str], deliver: Deliver) -> None:
        """Subscribe and hand every message to ``deliver``; returns only by raising."""
        ...


class ClassicBus:
    """PUBLISH / SUBSCRIBE: any Redis or Valkey, Sentinel-managed or not (Redis 6 included)."""

    def __init__(self, client: Redis) -> None:
        self._client = client

    async def publish(self, channel: str, message: bytes) -> None:
        await self._client.publish(channel, message)

    async def listen(self, channels: Sequence[str], deliver: Deliver) -> None:
        async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(*channels)
            while True:
                _deliver(await pubsub.get_message(timeout=1.0), deliver)


class ShardedBus:
    """SPUBLISH / SSUBSCRIBE: a channel lives on its slot's shard, as a cluster requires."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._again = False  # listened before: this is a start over, after a failure

    async def publish(self, channel: str, message: bytes) -> None:
        await self._client.spublish(channel, message)

    async def listen(self, channels: Sequence[str], deliver: Deliver) -> None:
        # The slot map first (a no-op once known): a shard channel is routed by its slot.
        await self._client.initialize()
        if self._again:
            # Starting over, the map may be stale: the channel's slot moved (a resharding) or
            # its primary changed, and the client corrects its map only from its own commands'
            # MOVED, never from a subscription's. Without this, SSUBSCRIBE met MOVED for good.
            await self._client.nodes_manager.initialize()
        self._again = True
        pubsub = self._client.pubsub()
        try:
            await pubsub.ssubscribe(*channels)
            while True:
                message = await pubsub.get_sharded_message(timeout=1.0)
                if message is None and not pubsub.node_pubsub_mapping:
                    # Subscribed nowhere (it returns at once then): start over, not spin.
                    raise ConnectionError("no shard holds the invalidation channels")
                if message is not None and str_if_bytes(message["type"]) == "sunsubscribe":
                    # We never unsubscribe: the store dropped us, as the channel's slot moved
                    # to another shard (a resharding, a failover). redis-py keeps waiting on
                    # the old shard, where nothing arrives again: start over on the new owner.
                    raise ConnectionError("the invalidation channel's slot moved")
                _deliver(message, deliver)
        finally:
            # Bounded: leaving must not wait on a shard that is gone.
            with contextlib.suppress(*STORE_ERRORS):
                await asyncio.wait_for(pubsub.aclose(), _CLOSE_WAIT)


def _deliver(message: dict[str, Any] | None, deliver: Deliver) -> None:
    if message is not None and message.get("type") in ("message", "smessage"):
        data = message.get("data")
        if isinstance(data, bytes):
            deliver(data)
