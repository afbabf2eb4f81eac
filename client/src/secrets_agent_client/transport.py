"""HTTP/1.1 over a Unix socket, blocking: one kept-alive connection per process.

``http.client`` costs more CPU per request than the agent spends answering (header parsing
goes through ``email.parser``) and ~20 ms to import, so the client speaks the little HTTP it
needs itself (``wire``): a request line and two headers out; a status line, ``Content-Length``,
``Connection`` and a few headers back, read with ``recv_into`` into one buffer, polled for a
while before the read sleeps (``spin``).
"""

from __future__ import annotations

# The C modules under ``socket`` and ``threading``: the Python wrappers pull in enum,
# selectors and collections, which triple the client's import time for nothing it uses.
import _socket
import _thread
import os
import time

from secrets_agent_client.spin import SPIN_US, Spin
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
    seconds,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["AgentIdentityError", "AgentUnreachable", "ProtocolError", "Response", "UnixTransport"]

# Held only while a forked child renews a transport's lock: renewed itself in every child (one
# hook for the module, not one per transport: hooks can never be removed).
_FORKS = _thread.allocate_lock()


def _renew_forks_lock() -> None:
    global _FORKS
    _FORKS = _thread.allocate_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_forks_lock)


class _Connection:
    """One connected socket and the bytes read from it but not yet consumed."""

    def __init__(self, sock: _socket.socket, spin: float) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.view = memoryview(bytearray(65536))
        self.spin = Spin(spin)

    def read_response(
        self, *, head_only: bool, deadline: float, clock: Callable[[], float]
    ) -> tuple[Response, bool]:
        eof, fresh = False, True  # fresh: the socket has the timeout ``_send`` gave it
        spin = self.spin
        spin.start(deadline - clock())
        polling = spin.quick
        while True:
            parsed = parse_response(self.buffer, head_only=head_only, eof=eof)
            if parsed is not None:
                spin.answered()
                return parsed
            n = -1
            if polling:  # the first read polls for a while before it sleeps (see ``spin``)
                polling, fresh = False, False
                self.sock.settimeout(0.0)
                n = spin.read(self.sock, self.view, 0)
            if n < 0:
                if not fresh:
                    # The socket's timeout bounds one read: an answer arriving in pieces gets
                    # what is left of the request's time, not a whole timeout per piece.
                    left = deadline - clock()
                    if left <= 0:
                        raise _socket.timeout("timed out")
                    self.sock.settimeout(left)
                fresh = False
                n = self.sock.recv_into(self.view)
            eof = n == 0
            self.buffer += self.view[:n]

    def close(self) -> None:
        self.view.release()
        self.sock.close()


class UnixTransport:
    """Thread-safe and fork-aware: a child process never reuses its parent's connection."""

    def __init__(
        self,
        socket_path: str,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        expected_uid: int | None = None,
        spin: float = SPIN_US / 1e6,
    ) -> None:
        self.socket_path = socket_path
        self.timeout = seconds(timeout)
        self.expected_uid = expected_uid
        self.spin = spin  # seconds a read polls for its answer before it sleeps (see ``spin``)
        self._clock, self._sleep = clock, sleep
        self._lock = _thread.allocate_lock()
        self._conn: _Connection | None = None
        self._closing = False  # close() was asked while a lookup held the connection
        self._pid = os.getpid()

    def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        """One request; an agent at its connection cap (503 ``X-Agent-Busy``) is asked again
        with a short jittered backoff until the timeout, like a full backlog."""
        deadline = self._clock() + self.timeout
        backoff = Backoff(self._clock, deadline)
        while True:
            response = self._request_once(method, path, body, deadline)
            pause = backoff.pause(keep=LAST_TRY) if response.busy else None
            if pause is None:
                return response
            self._sleep(pause)

    def _request_once(
        self, method: str, path: str, body: bytes | None, deadline: float
    ) -> Response:
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            reused = self._conn is not None
            try:
                return self._send(method, path, body, deadline)
            except (ConnectionError, ProtocolError) as exc:
                self._drop()
                if not reused or isinstance(exc, ProtocolError):
                    raise AgentUnreachable(describe(exc, self.socket_path)) from None
            except OSError as exc:
                self._drop()
                raise AgentUnreachable(describe(exc, self.socket_path)) from None
            except BaseException:
                # Interrupted mid-exchange (a signal handler's exception: Airflow's
                # execution_timeout raises from SIGALRM): the answer may still arrive, and the
                # next lookup, whatever it asks for, must never read it as its own.
                self._drop()
                raise
            # The kept-alive connection died (the agent restarted): one retry on a new one.
            try:
                return self._send(method, path, body, deadline)
            except (OSError, ProtocolError) as exc:
                self._drop()
                raise AgentUnreachable(describe(exc, self.socket_path)) from None
            except BaseException:
                self._drop()
                raise

    def close(self) -> None:
        """Close the kept-alive connection. One a lookup is using (on another thread, or the
        one a signal handler interrupted) is closed when that lookup ends: never pulled from
        under it mid-answer, and close never waits for it."""
        if self._pid != os.getpid():
            self._forked()
        self._closing = True
        if self._lock.acquire(False):
            try:
                self._drop()
            finally:
                self._lock.release()

    def _drop(self) -> None:
        self._closing = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __del__(self) -> None:
        # Backends live as long as the Airflow process; close quietly when one is dropped.
        if getattr(self, "_pid", None) == os.getpid():
            self._drop()

    def _send(self, method: str, path: str, body: bytes | None, deadline: float) -> Response:
        if self._conn is None:
            self._conn = _Connection(self._connect(deadline), self.spin)
        conn = self._conn
        # Whatever went before (busy retries, a full backlog), the request ends by the deadline.
        conn.sock.settimeout(max(deadline - self._clock(), 0.001))
        try:
            conn.sock.sendall(request_bytes(method, path, body))
        except (BrokenPipeError, ConnectionResetError):
            # An agent at its cap answers "busy" at once and closes: read that answer.
            response, _ = conn.read_response(head_only=False, deadline=deadline, clock=self._clock)
            self._drop()
            return response
        response, keep_alive = conn.read_response(
            head_only=method == "HEAD", deadline=deadline, clock=self._clock
        )
        if not keep_alive or self._closing:
            self._drop()
        return response

    def _forked(self) -> None:
        """First use in a forked child. A fork copies the lock as it is: held, if another thread
        was mid-request, and then for good (the child has no copy of that thread). So the child
        gets a lock of its own, and never touches its parent's connection."""
        with _FORKS:  # the child's first lookups may race here from several threads
            if self._pid != os.getpid():
                self._lock = _thread.allocate_lock()
                self._conn, self._closing, self._pid = None, False, os.getpid()

    def _connect(self, deadline: float) -> _socket.socket:
        backoff = Backoff(self._clock, deadline)
        while True:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            sock.settimeout(max(deadline - self._clock(), 0.001))
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                sock.close()
                pause = backoff.pause() if exc.errno in BUSY_ERRNOS else None
                if pause is None:
                    raise
                self._sleep(pause)
                continue
            sock.settimeout(self.timeout)
            if self.expected_uid is not None:
                try:
                    check_peer(sock, self.expected_uid, self.socket_path)
                except AgentIdentityError:
                    sock.close()
                    raise
            return sock
