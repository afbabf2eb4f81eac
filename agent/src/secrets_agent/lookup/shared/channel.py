"""Invalidations across the fleet: refuse older copies here at once, delete the shared entries
by their exact names, publish a sealed message, and apply the other nodes' messages; hints
(``broadcast``) travel the same way to the handlers registered for their topic."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping

from cachetools import TTLCache

from secrets_agent.kinds import Kind
from secrets_agent.lookup.shared.bus import Bus
from secrets_agent.lookup.shared.floors import Floors
from secrets_agent.lookup.shared.guard import STORE_ERRORS, StoreDown, StoreGuard
from secrets_agent.lookup.shared.sealing import (
    MESSAGE_MAX_AGE,
    MESSAGE_MAX_AHEAD,
    MESSAGE_MAX_BYTES,
    Hint,
    Invalidation,
    Message,
    Sealer,
)
from secrets_agent.lookup.shared.tier import HintHandler, Invalidated
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)

# Invalidations sent at a time; past this, the waiting ones become one namespace-wide message:
# a flood of them costs the store a bounded number of calls, and still drops every copy named.
MAX_PENDING = 32
# How long a message may take to arrive: an invalidation counts from no earlier than this before
# it arrived, whatever the sender's clock said (one behind would let older copies pass it).
IN_TRANSIT = 1.0  # seconds
# Messages remembered, to refuse one heard before: a replay opens as well as the original for
# as long as a message is accepted at all. Bounded: past this many within that time, the oldest
# are forgotten (a replay of one of those is applied again, as any replay was before).
HEARD = 16384

Delete = Callable[[Kind, str], Awaitable[None]]


class Invalidations:
    def __init__(
        self,
        bus: Bus,
        sealer: Sealer,
        guard: StoreGuard,
        floors: Floors,
        metrics: Metrics,
        delete: Delete,
    ) -> None:
        self._bus, self._sealer, self._guard, self._metrics = bus, sealer, guard, metrics
        self._floors, self._delete = floors, delete
        self.node = secrets.token_hex(8)  # our own messages come back: we skip them
        self._local: Invalidated = lambda kind, secret_id: None
        self._pending: set[asyncio.Task[None]] = set()
        self._collapsed: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self._handlers: dict[str, HintHandler] = {}
        # Its own throttle: a flood of forged messages must not hide the store's own warnings.
        self._refused_log = guard.throttled(log)
        # Every token is unique (Fernet's random IV): a token heard twice was replayed.
        self._heard: TTLCache[bytes, bool] = TTLCache(HEARD, MESSAGE_MAX_AGE + MESSAGE_MAX_AHEAD)

    def on_hint(self, topic: str, handler: HintHandler) -> None:
        self._handlers[topic] = handler

    def broadcast(self, topic: str, data: Mapping[str, str | None]) -> None:
        """Send a hint to every other node (at most once, in the background; lost if the
        store is down: a hint is advice, the TTL stays the bound)."""
        if len(self._pending) >= MAX_PENDING:
            log.debug("shared cache: a hint dropped, %d messages pending", len(self._pending))
            return
        self._start(Hint(topic, dict(data), self.node))

    def attach(self, local: Invalidated) -> None:
        self._local = local

    def publish(self, kind: Kind | None, secret_id: str | None) -> None:
        """Refuse the older copies here now; delete and tell the others in the background."""
        at = self._sealer.wall()
        self._floors.invalidated(kind, secret_id, at)
        if len(self._pending) >= MAX_PENDING:
            # Everything this node invalidated while the store was slow goes out as one
            # namespace-wide invalidation: more than asked, never less, and bounded.
            self._floors.invalidated(None, None, at)
            if self._collapsed is None or self._collapsed.done():
                self._collapsed = self._start(Invalidation(None, None, at, self.node))
            return
        self._start(Invalidation(kind, secret_id, at, self.node))

    def _start(self, message: Message) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._send(message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def settled(self) -> None:
        """Let this node's invalidations land before it reads the store again (bounded)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=self._guard.timeout)

    async def _send(self, message: Message) -> None:
        if isinstance(message, Invalidation) and message.kind is not None and message.secret_id:
            # Sent whether or not the delete went through: the entry's shard may be down while
            # the channel's is up, and the nodes told refuse the older copy wherever it is.
            with contextlib.suppress(StoreDown):
                await self._guard.call("invalidate", self._delete(message.kind, message.secret_id))
        # A kind, or everything: names hide the kind, so nothing to delete by name; every
        # node refuses the older copies (its floors) and they expire within their TTL.
        with contextlib.suppress(StoreDown):
            for channel, data in self._sealer.seal_messages(message):
                await self._guard.call("publish", self._bus.publish(channel, data))

    def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen_forever())

    async def _listen_forever(self) -> None:
        while not self._closed:  # not only cancelled: redis-py may swallow a cancellation
            try:
                await self._bus.listen(self._sealer.channels, self._received)
            except STORE_ERRORS as exc:
                if self._closing():  # redis-py may end a cancelled wait as a lost connection
                    break
                self._guard.failed("subscribe", exc)
            except Exception as exc:  # a bug here must not end invalidations for good
                if self._closing():
                    break
                self._metrics.shared_errors.labels("subscribe").inc()
                log.error("shared cache: invalidation listener failed: %s", type(exc).__name__)
            await asyncio.sleep(max(0.1, min(1.0, self._guard.timeout * 4)))

    def _closing(self) -> bool:
        """Whether ``close`` has begun. A method, not the attribute inline: mypy narrows
        ``self._closed`` to False from the loop's condition and would call the check dead."""
        return self._closed

    def _received(self, data: bytes) -> None:
        if len(data) > MESSAGE_MAX_BYTES:
            # Before any decoding: a store writer must not make every node decode and MAC
            # megabytes of its choosing, once per message.
            self._refused(data, f"{len(data)} bytes, more than any message an agent seals")
            return
        message = self._sealer.open_message(data)
        if message is None:
            self._refused(data)
            return
        if message.sender == self.node:
            return  # our own
        # Of the token's bytes, not its text: base64 decoding skips characters outside its
        # alphabet and a last character's spare bits, so one token has many spellings.
        digest = hashlib.sha256(base64.urlsafe_b64decode(data)).digest()
        if digest in self._heard:
            # A store writer publishing what it saw: a fleet-wide invalidation replayed would
            # empty every node's cache, and send every key upstream, once per replay.
            self._refused(data, "received before (a replay)")
            return
        self._heard[digest] = True
        if isinstance(message, Hint):
            handler = self._handlers.get(message.topic)
            if handler is not None:
                try:
                    handler(message.data)
                except Exception as exc:  # one handler's bug must not end the listener
                    log.error("shared cache: hint %r failed: %s", message.topic, type(exc).__name__)
            return
        at = max(message.at, self._sealer.wall() - IN_TRANSIT)
        self._floors.invalidated(message.kind, message.secret_id, at)
        self._metrics.shared_invalidations.inc()
        self._local(message.kind, message.secret_id)

    def _refused(self, data: bytes, why: str | None = None) -> None:
        """Our channel carries only what our fleet seals (a namespace and key have channels of
        their own): a message refused is someone's doing, or a clock gone wrong."""
        self._metrics.shared_messages_refused.inc()
        why = why or self._unopened(data)
        self._refused_log.warning(f"shared cache: a message on the invalidation channel: {why}")

    def _unopened(self, data: bytes) -> str:
        """Why our keys do not open ``data``."""
        age = self._sealer.message_age(data)
        if age is None:
            return "not sealed under this node's keys (written by someone without them)"
        if age > MESSAGE_MAX_AGE:
            return f"sealed {age:.0f} s ago (a replay, or the sender's clock is behind this one's)"
        if -age > MESSAGE_MAX_AHEAD:
            return f"sealed {-age:.0f} s ahead of this node's clock (the clocks differ)"
        return "not a message this agent reads (another version's?)"

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait({self._listener}, timeout=2.0)  # bounded, whatever the store does
            self._listener = None
        await self.settled()
