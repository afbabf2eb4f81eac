"""Accepting connections on the agent's socket, with the same behaviour on every event loop.

asyncio's own server leaves connections in the listen backlog while the process is out of
descriptors and tries again a second later; uvloop's (libuv's) accepts and closes them at
once. A burst of workers must lose nothing, so the agent accepts by itself, asyncio's way,
whichever loop runs it, and says so in one log line per interval.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from secrets_agent.ops.logs import RateLimited

log = logging.getLogger(__name__)

_BATCH = 128  # accepts per wake-up, as asyncio's server (its backlog argument) does


class Acceptor:
    """Accepts on a listening socket and runs a protocol on each connection (``close`` stops)."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        loop: asyncio.AbstractEventLoop,
        backlog: int,
        retry: float = 1.0,
    ) -> None:
        self._sock, self._factory, self._loop, self._retry = sock, factory, loop, retry
        self._backlog = backlog
        self._limited = RateLimited(log)
        self._connecting: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._reading = self._closed = False

    def start(self) -> None:
        self._sock.setblocking(False)
        self._sock.listen(self._backlog)  # as asyncio's server does (an inherited one too)
        self._resume()

    def close(self) -> None:
        """Stop accepting and close the listening socket (what ``asyncio.Server.close`` does)."""
        if self._closed:
            return
        self._closed = True
        self._pause()
        if self._timer is not None:
            self._timer.cancel()
        self._sock.close()

    def _resume(self) -> None:
        self._timer = None
        if not self._closed and not self._reading:
            self._loop.add_reader(self._sock.fileno(), self._ready)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def _ready(self) -> None:
        for _ in range(_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up before we got to it
            except OSError as exc:
                self._limited.log(
                    "accept",
                    logging.ERROR,
                    "accept() failed: %s; the agent retries every second",
                    exc.strerror or type(exc).__name__,
                )
                # Leave the rest in the backlog: out of descriptors they are accepted once some
                # free up, and any other failure must not spin the loop (the socket stays
                # readable) while it lasts.
                self._pause()
                self._timer = self._loop.call_later(self._retry, self._resume)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, sock=conn)
        except OSError:  # the peer is gone already: nothing to answer
            conn.close()
