"""Invalidations across the fleet: delete the shared entries, publish a sealed message, and
drop the node copies other nodes' messages name."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from secrets_agent.kinds import Kind
from secrets_agent.lookup.shared.guard import StoreDown, StoreGuard
from secrets_agent.lookup.shared.sealing import Sealer
from secrets_agent.lookup.shared.tier import Invalidated
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)


class Invalidations:
    def __init__(self, client: Redis, sealer: Sealer, guard: StoreGuard, metrics: Metrics) -> None:
        self._client, self._sealer, self._guard, self._metrics = client, sealer, guard, metrics
        self._node = secrets.token_hex(8)  # our own messages come back: we skip them
        self._local: Invalidated = lambda kind, secret_id: None
        self._pending: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None

    def attach(self, local: Invalidated) -> None:
        self._local = local

    def publish(self, kind: Kind | None, secret_id: str | None) -> None:
        """Start deleting and telling the others; ``settled`` waits for it."""
        task = asyncio.get_running_loop().create_task(self._publish(kind, secret_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settled(self) -> None:
        """Let this node's invalidations land before it reads the store again (bounded)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=self._guard.timeout)

    async def _publish(self, kind: Kind | None, secret_id: str | None) -> None:
        # Names do not reveal the kind, so a kind-wide invalidation drops the whole namespace.
        patterns = self._sealer.groups(kind, secret_id)
        with contextlib.suppress(StoreDown):
            # A scan of the whole store: invalidations are rare, and names carry no index.
            await self._guard.call("invalidate", self._drop(patterns), self._guard.timeout * 20)
            for channel, message in self._sealer.seal_messages(kind, secret_id, self._node):
                await self._guard.call("publish", self._client.publish(channel, message))

    async def _drop(self, patterns: list[str]) -> None:
        for pattern in patterns:
            names = [name async for name in self._client.scan_iter(match=pattern, count=1000)]
            if names:
                await self._client.unlink(*names)

    def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen_forever())

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                self._guard.failed("subscribe", exc)
            except Exception as exc:  # a bug here must not end invalidations for good
                self._metrics.shared_errors.labels("subscribe").inc()
                log.error("shared cache: invalidation listener failed: %s", type(exc).__name__)
            await asyncio.sleep(max(0.1, min(1.0, self._guard.timeout * 4)))

    async def _listen(self) -> None:
        async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(*self._sealer.channels)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._received(message.get("data"))

    def _received(self, data: Any) -> None:
        opened = self._sealer.open_message(data) if isinstance(data, bytes) else None
        if opened is None:
            return  # another key set's message, or not a message at all
        kind, secret_id, sender = opened
        if sender != self._node:
            self._metrics.shared_invalidations.inc()
            self._local(kind, secret_id)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self.settled()
