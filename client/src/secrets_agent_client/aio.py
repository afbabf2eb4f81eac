"""HTTP/1.1 over a Unix socket on asyncio: idle kept-alive connections per event loop.

Loaded on the first awaited lookup only (asyncio costs more to import than the whole client).
A lookup takes an idle connection of its own loop or opens one, so concurrent lookups on one
loop (a triggerer's triggers) never wait for each other; connections never cross loops, and a
forked child never touches its parent's.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import weakref

from secrets_agent_client.wire import (
    BUSY_ERRNOS,
    LAST_TRY,
    AgentIdentityError,
    AgentUnreachable,
    Backoff,
    ProtocolError,
    Response,
    check_peer,
    describe,
    parse_response,
    request_bytes,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_READ_SIZE = 65536
# Idle connections kept per loop: enough for a burst of concurrent triggers to reuse theirs,
# few enough that an idle triggerer holds only a handful of the agent's connection slots.
MAX_IDLE = 8


class _Connection:
    """A connected non-blocking socket (the loop's ``sock_*`` calls, no transport: it closes at
    once from anywhere, even after its loop is gone) and the bytes read but not yet consumed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    async def read_response(
        self, loop: asyncio.AbstractEventLoop, *, head_only: bool
    ) -> tuple[Response, bool]:
        eof = False
        while True:
            parsed = parse_response(self.buffer, head_only=head_only, eof=eof)
            if parsed is not None:
                return parsed
            data = await loop.sock_recv(self.sock, _READ_SIZE)
            eof = not data
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


class AsyncUnixTransport:
    """The asyncio twin of ``transport.UnixTransport``: same answers, same errors, same retries."""

    def __init__(
        self,
        socket_path: str,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        expected_uid: int | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.expected_uid = expected_uid
        self._clock, self._sleep = clock, sleep
        self._idle: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_Connection]]
        self._idle = weakref.WeakKeyDictionary()
        self._pid = os.getpid()

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        """One request, retried while the agent says it is busy, all within the timeout."""
        deadline = self._clock() + self.timeout
        backoff = Backoff(self._clock, deadline)
        while True:
            response = await self._request_once(method, path, body, deadline)
            pause = backoff.pause(keep=LAST_TRY) if response.busy else None
            if pause is None:
                return response
            await self._sleep(pause)

    async def _request_once(
        self, method: str, path: str, body: bytes | None, deadline: float
    ) -> Response:
        idle = self._idle_list()
        conn = idle.pop() if idle else None
        if conn is not None:
            try:
                return await self._send(conn, method, path, body, deadline)
            except (ConnectionError, ProtocolError) as exc:
                if isinstance(exc, ProtocolError):
                    raise AgentUnreachable(describe(exc, self.socket_path)) from None
            except (OSError, asyncio.TimeoutError) as exc:
                raise AgentUnreachable(describe(exc, self.socket_path)) from None
            # The kept-alive connection died (the agent restarted): one retry on a new one.
        try:
            conn = await self._connect(deadline)
            return await self._send(conn, method, path, body, deadline)
        except (OSError, ProtocolError, asyncio.TimeoutError) as exc:
            raise AgentUnreachable(describe(exc, self.socket_path)) from None

    async def _send(
        self, conn: _Connection, method: str, path: str, body: bytes | None, deadline: float
    ) -> Response:
        """Send on ``conn`` and read the answer by the deadline; ``conn`` goes back to the idle
        list only when whole (a cancelled or failed exchange leaves it mid-response)."""
        kept = False
        # The deadline cancels this task (asyncio.timeout's way): wait_for would start a task
        # per request, which costs more CPU than the rest of the lookup.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            if task is not None:
                task.cancel()

        timer = loop.call_later(max(deadline - self._clock(), 0.001), expire)
        try:
            response, kept = await self._exchange(conn, method, path, body)
            return response
        except asyncio.CancelledError:
            if not expired:
                raise
            uncancel = getattr(task, "uncancel", None)  # 3.11+: this cancel was ours
            if uncancel is not None:
                uncancel()
            raise TimeoutError from None
        finally:
            timer.cancel()
            idle = self._idle_list()
            if kept and len(idle) < MAX_IDLE:
                idle.append(conn)
            else:
                conn.close()

    async def _exchange(
        self, conn: _Connection, method: str, path: str, body: bytes | None
    ) -> tuple[Response, bool]:
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(conn.sock, request_bytes(method, path, body))
        except (BrokenPipeError, ConnectionResetError):
            # An agent at its cap answers "busy" at once and closes: read that answer.
            response, _ = await conn.read_response(loop, head_only=False)
            return response, False
        return await conn.read_response(loop, head_only=method == "HEAD")

    async def _connect(self, deadline: float) -> _Connection:
        # A Unix-socket connect() completes or fails at once: tried here without blocking, so a
        # full backlog (EAGAIN) is retried like the blocking transport does, not waited on.
        backoff = Backoff(self._clock, deadline)
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                sock.close()
                pause = backoff.pause() if exc.errno in BUSY_ERRNOS else None
                if pause is None:
                    raise
                await self._sleep(pause)
                continue
            if self.expected_uid is not None:
                try:
                    check_peer(sock, self.expected_uid, self.socket_path)
                except AgentIdentityError:
                    sock.close()
                    raise
            return _Connection(sock)

    def _idle_list(self) -> list[_Connection]:
        if self._pid != os.getpid():
            # The parent's connections are never used here; closing this process's copies of
            # their descriptors leaves the parent's open.
            for inherited in list(self._idle.values()):
                _close_all(inherited)
            self._idle, self._pid = weakref.WeakKeyDictionary(), os.getpid()
        loop = asyncio.get_running_loop()
        idle = self._idle.get(loop)
        if idle is None:
            idle = self._idle[loop] = []
            # A loop's connections are closed when it is collected (asyncio.run's, per task).
            weakref.finalize(loop, _close_all, idle)
        return idle

    async def aclose(self) -> None:
        """Close this loop's idle connections."""
        _close_all(self._idle_list())

    def close(self) -> None:
        """Close every loop's idle connections (from any thread, e.g. at exit)."""
        for idle in list(self._idle.values()):
            _close_all(idle)


def _close_all(idle: list[_Connection]) -> None:
    while True:
        try:
            conn = idle.pop()
        except IndexError:  # emptied (another thread may be closing them too)
            return
        conn.close()


__all__ = ["AgentIdentityError", "AgentUnreachable", "AsyncUnixTransport"]
