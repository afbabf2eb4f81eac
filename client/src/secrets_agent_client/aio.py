"""HTTP/1.1 over a Unix socket on asyncio: idle kept-alive connections per event loop.

Loaded on the first awaited lookup only (asyncio costs more to import than the whole client).
A lookup takes an idle connection of its own loop or opens one, so concurrent lookups on one
loop (a triggerer's triggers) never wait for each other; connections never cross loops, and a
forked child never touches its parent's.

A connection's reader stays registered with its loop for as long as the connection lives and
an exchange the loop waits for is one future that the loop's callbacks settle: an answer costs
one wake-up and one ``recv`` (``loop.sock_recv`` adds a failed ``recv``, an ``epoll_ctl`` pair
and a future per call), and an agent closing an idle connection is seen, and the connection
dropped, before a lookup picks it. That still costs two turns of the loop (the reader's callback,
then the task's wake-up), more than a blocking lookup; so where asyncio's loop has nothing else
to run, a cached answer (tens of µs) is waited for in place instead (polled for first, as the
blocking client does: see ``spin``), for ``WAIT_HERE`` at most, and the lookup returns without
suspending. See bench/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
import weakref

from secrets_agent_client.spin import DONTWAIT as _DONTWAIT
from secrets_agent_client.spin import SPIN_US, Spin
from secrets_agent_client.wire import (
    BUSY_ERRNOS,
    LAST_TRY,
    MAX_HEAD,
    AgentIdentityError,
    AgentUnreachable,
    Backoff,
    Parsed,
    ProtocolError,
    Response,
    check_peer,
    describe,
    parse_response,
    request_bytes,
    seconds,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_READ_SIZE = 65536
# Idle connections kept per loop: enough for a burst of concurrent triggers to reuse theirs,
# few enough that an idle triggerer holds only a handful of the agent's connection slots.
MAX_IDLE = 8
# How long a lookup waits for its answer in place when its loop has nothing else to do (see
# ``_Connection.exchange``): a cached answer takes tens of µs, a miss a millisecond or more.
WAIT_HERE = 0.0005


class _Connection:
    """A connected non-blocking socket that its loop reads whenever bytes arrive, the bytes not
    yet consumed, and the one exchange on it: a future settled by the loop's callbacks (the
    answer, the deadline or a broken connection), so a lookup awaits nothing else."""

    __slots__ = (
        "armed",
        "broken",
        "buffer",
        "closed",
        "deadline",
        "eof",
        "fd",
        "head_only",
        "here",
        "idle",
        "loop",
        "pending",
        "pid",
        "sock",
        "spin",
        "view",
        "waiter",
    )

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        idle: list[_Connection],
        wait_here: float,
        spin: float,
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        # Weak: the loop's idle list (held until the loop is collected) must not keep it alive.
        self.loop = weakref.ref(loop)
        self.idle = idle
        self.buffer = bytearray()
        self.view = memoryview(bytearray(_READ_SIZE))
        self.waiter: asyncio.Future[Parsed] | None = None
        self.head_only = False
        self.eof = False
        self.closed = False
        self.broken = False  # the agent closed before taking the whole request
        self.pending = b""  # the part of the request the socket has not taken yet
        self.deadline = 0.0  # loop time by which the exchange must have its answer
        self.armed: float | None = None  # when the deadline timer in charge fires
        self.pid = os.getpid()
        # How long an exchange may wait in place (0: never), as the socket's receive timeout.
        self.here = wait_here if wait_here > 0 and _receive_timeout(sock, wait_here) else 0.0
        self.spin = Spin(spin)  # how a wait in place polls before it sleeps (see ``spin``)
        loop.add_reader(self.fd, self._readable)

    def exchange(
        self, loop: asyncio.AbstractEventLoop, data: bytes, head_only: bool, due: float
    ) -> Parsed | asyncio.Future[Parsed]:
        """Send ``data``; its answer and whether the connection may be used again, or the
        future of them.

        Where the loop has no callback ready and no timer due within the wait (a poll, see
        ``spin``, then ``here``), nothing would run while the loop waited: the answer is waited
        for here instead, up to ``here`` after the poll. That costs a blocking ``recv`` (as the
        blocking client's), where the loop costs two turns of Python (the reader's callback,
        then the task's wake-up); only another socket's events can be late by it, and by that
        wait at most. A slower answer (a miss) is the loop's."""
        self.head_only = head_only
        spin = self.spin
        spin.start(due - loop.time())
        try:
            sent = self.sock.send(data, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except (BrokenPipeError, ConnectionResetError):
            # An agent at its cap answers "busy" at once and closes: that answer is read.
            sent, self.broken = len(data), True
        if sent < len(data):  # a big body: the loop sends the rest
            self.pending = data[sent:]
            loop.add_writer(self.fd, self._writable)
        if self.buffer or self.eof:  # an answer that came early, or the agent has gone
            parsed = parse_response(self.buffer, head_only=head_only, eof=self.eof)
            if parsed is not None:
                return self._keep(parsed)
        # The wait in place polls first (as long as ``start`` allows), then sleeps up to
        # ``here``: nothing due on the loop may fall within either.
        wait = self.here + (spin.until - spin.started if spin.quick else 0.0)
        if self.here and not self.pending and _loop_idle(loop, wait):
            parsed = self._answer_here(head_only)
            if parsed is not None:
                return self._keep(parsed)
        waiter: asyncio.Future[Parsed] = loop.create_future()
        self.waiter, self.deadline = waiter, due
        # One timer per connection, not per exchange: a timer that fires for an exchange long
        # answered finds the next one's deadline and waits for it instead.
        armed = self.armed
        if armed is None or armed > due:
            self.armed = due
            loop.call_at(due, self._expire, due)
        return waiter

    def _answer_here(self, head_only: bool) -> Parsed | None:
        """The answer, if it comes within ``here`` (polled for first, then each ``recv`` blocks
        that long at most); None: the loop waits for the rest."""
        until = 0.0
        spin = self.spin
        n = spin.read(self.sock, self.view, _DONTWAIT)
        while True:
            if n < 0:
                try:
                    n = self.sock.recv_into(self.view)
                except BlockingIOError:
                    return None
            if n:
                self.buffer += self.view[:n]
            else:
                self.eof = True
            parsed = parse_response(self.buffer, head_only=head_only, eof=self.eof)
            if parsed is not None:
                spin.answered()
                return parsed
            n = -1
            # A long answer in several reads: waited for here up to ``here`` in all.
            now = time.monotonic()
            if not until:
                until = now + self.here
            elif now >= until:
                return None

    def _keep(self, parsed: Parsed) -> Parsed:
        if self.broken or self.pending:
            return parsed[0], False
        return parsed

    def _expire(self, when: float) -> None:
        if when != self.armed:
            return  # an earlier deadline's timer took over
        self.armed = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        loop = waiter.get_loop()
        if loop.time() < self.deadline:
            self.armed = self.deadline
            loop.call_at(self.deadline, self._expire, self.deadline)
            return
        self.waiter = None
        waiter.set_exception(TimeoutError())

    def _readable(self) -> None:
        try:
            n = self.sock.recv_into(self.view, 0, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        if n:
            self.buffer += self.view[:n]
        else:
            self.eof = True
        waiter = self.waiter
        if waiter is None:
            if self.eof or len(self.buffer) > MAX_HEAD:
                self.close()  # the agent closed an idle connection (or talks out of turn)
            return
        try:
            parsed = parse_response(self.buffer, head_only=self.head_only, eof=self.eof)
        except (ProtocolError, ConnectionError) as exc:
            self._fail(exc)
            return
        if parsed is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result((parsed[0], False) if self.broken or self.pending else parsed)

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self.pending, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except (BrokenPipeError, ConnectionResetError):
            sent, self.broken = len(self.pending), True
        except OSError as exc:
            self._fail(exc)
            return
        self.pending = self.pending[sent:]
        loop = self.loop()
        if not self.pending and loop is not None:
            loop.remove_writer(self.fd)

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        """Unregister and close a connection no lookup holds (one taken off its idle list, or
        whose exchange has ended); a loop running in another thread is asked to do it."""
        if self.closed:
            return
        if self.pid != os.getpid():  # a forked child at exit, say: never the parent's epoll
            self.abandon()
            return
        with contextlib.suppress(ValueError):  # not on it: taken by the lookup closing it
            self.idle.remove(self)
        loop = self.loop()
        if loop is not None and loop.is_closed():
            loop = None  # its selector is gone, and our registration with it
        if loop is not None and loop.is_running() and asyncio._get_running_loop() is not loop:
            try:
                loop.call_soon_threadsafe(self.close)
                return
            except RuntimeError:  # closed meanwhile
                loop = None
        self.closed = True
        self.waiter = None
        if loop is not None:
            loop.remove_reader(self.fd)
            if self.pending:
                loop.remove_writer(self.fd)
        self.sock.close()

    def abandon(self) -> None:
        """Close this process's descriptor only: a forked child shares its parent's epoll, so
        unregistering there would unregister the parent's connection."""
        self.closed = True
        with contextlib.suppress(ValueError):
            self.idle.remove(self)
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
        wait_here: float = WAIT_HERE,
        spin: float = SPIN_US / 1e6,
    ) -> None:
        self.socket_path = socket_path
        self.timeout = seconds(timeout)
        self.expected_uid = expected_uid
        self.wait_here = wait_here
        self.spin = spin
        self._clock, self._sleep = clock, sleep
        self._idle: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_Connection]]
        self._idle = weakref.WeakKeyDictionary()
        # The last loop asked for and its idle list: a lookup finds its own without a
        # WeakKeyDictionary look-up (a new weak reference each time).
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], list[_Connection]] | None = None
        self._pid = os.getpid()

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        """One request, retried while the agent says it is busy, all within the timeout."""
        # One coroutine, awaiting one future per exchange: each level of coroutine a lookup
        # goes through costs CPU twice per await, on the way down and on the way back.
        loop = asyncio.get_running_loop()
        deadline = self._clock() + self.timeout
        due = loop.time() + self.timeout  # the same deadline on the loop's clock, for its timer
        data = request_bytes(method, path, body)
        head_only = method == "HEAD"
        backoff: Backoff | None = None
        while True:
            last = self._last
            if last is not None and last[0]() is loop and self._pid == os.getpid():
                idle = last[1]
            else:
                idle = self._idle_list(loop)
            conn = idle.pop() if idle else None
            retry = conn is not None  # a kept-alive connection may have died since
            while True:
                kept = False
                try:
                    if conn is None:
                        conn = await self._connect(loop, idle, deadline)
                        due = loop.time() + max(deadline - self._clock(), 0.001)
                    answer = conn.exchange(loop, data, head_only, due)
                    if not isinstance(answer, tuple):
                        answer = await answer
                    response, kept = answer
                except (ConnectionError, ProtocolError) as exc:
                    if not retry or isinstance(exc, ProtocolError):
                        raise AgentUnreachable(describe(exc, self.socket_path)) from None
                    # The kept-alive connection died (the agent restarted): one retry on a
                    # new one.
                    retry = False
                    continue
                except (OSError, asyncio.TimeoutError) as exc:
                    raise AgentUnreachable(describe(exc, self.socket_path)) from None
                finally:
                    # Back to the idle list only when whole (a cancelled or failed exchange
                    # leaves it mid-response).
                    if conn is not None:
                        if kept and not conn.closed and len(idle) < MAX_IDLE:
                            idle.append(conn)
                        else:
                            conn.close()
                        if not kept:
                            conn = None
                break
            if response.status != 503 or not response.busy:
                return response
            if backoff is None:
                backoff = Backoff(self._clock, deadline)
            pause = backoff.pause(keep=LAST_TRY)
            if pause is None:
                return response
            await self._sleep(pause)
            due = loop.time() + max(deadline - self._clock(), 0.001)

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, idle: list[_Connection], deadline: float
    ) -> _Connection:
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
            try:
                if self.expected_uid is not None:
                    check_peer(sock, self.expected_uid, self.socket_path)
                return _Connection(sock, loop, idle, self.wait_here, self.spin)
            except BaseException:
                sock.close()
                raise

    def _idle_list(self, loop: asyncio.AbstractEventLoop) -> list[_Connection]:
        if self._pid != os.getpid():
            self._forget_parents()
        last = self._last
        if last is not None and last[0]() is loop:
            return last[1]
        idle = self._idle.get(loop)
        if idle is None:
            idle = self._idle[loop] = []
            # A loop's connections are closed when it is collected (asyncio.run's, per task).
            weakref.finalize(loop, _close_all, idle)
        self._last = (weakref.ref(loop), idle)
        return idle

    def _forget_parents(self) -> None:
        """In a forked child: the parent's connections are never used here; closing this
        process's copies of their descriptors leaves the parent's open."""
        for inherited in list(self._idle.values()):
            for conn in inherited:
                conn.abandon()
        self._idle, self._last, self._pid = weakref.WeakKeyDictionary(), None, os.getpid()

    async def aclose(self) -> None:
        """Close this loop's idle connections."""
        _close_all(self._idle_list(asyncio.get_running_loop()))

    def close(self) -> None:
        """Close every loop's idle connections (from any thread, e.g. at exit); a loop running
        in another thread closes its own at its next turn."""
        if self._pid != os.getpid():
            self._forget_parents()
        for idle in list(self._idle.values()):
            _close_all(idle)


def _receive_timeout(sock: socket.socket, wait: float) -> bool:
    """Make ``sock`` blocking, a ``recv`` on it waiting ``wait`` seconds at most (the loop's
    reads and every send pass ``MSG_DONTWAIT``, so never wait); False, and ``sock`` left as it
    was, where that cannot be done."""
    if not _DONTWAIT:
        return False
    try:
        whole = int(wait)
        # At least 1 µs: a timeout of zero would be no timeout at all.
        micros = min(max(round((wait - whole) * 1e6), 0 if whole else 1), 999_999)
        timeval = struct.pack("ll", whole, micros)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    except (OSError, OverflowError, struct.error):
        return False
    sock.setblocking(True)
    return True


def _loop_idle(loop: asyncio.AbstractEventLoop, within: float) -> bool:
    """Whether ``loop`` is asyncio's own (whose queues can be seen) with no callback ready
    and no timer due ``within`` seconds; any other loop (uvloop's) is never taken as idle."""
    ready = getattr(loop, "_ready", None)
    if ready is None or ready:
        return False
    scheduled = getattr(loop, "_scheduled", None)
    return scheduled is not None and (not scheduled or scheduled[0].when() > loop.time() + within)


def _close_all(idle: list[_Connection]) -> None:
    for conn in list(idle):
        try:
            idle.remove(conn)  # atomic: from here on no lookup can take it
        except ValueError:
            continue  # a lookup on its loop took it meanwhile: in use, not idle
        conn.close()


__all__ = ["AgentIdentityError", "AgentUnreachable", "AsyncUnixTransport"]
