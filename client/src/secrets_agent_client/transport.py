"""HTTP/1.1 over a Unix socket: one kept-alive connection per process, and a small reader.

``http.client`` costs more CPU per request than the agent spends answering (header parsing
goes through ``email.parser``) and ~20 ms to import, so the client speaks the little HTTP it
needs itself: a request line and two headers out; a status line, ``Content-Length``,
``Connection`` and a few headers back, read with ``recv_into`` into one buffer.
"""

from __future__ import annotations

# The C modules under ``socket`` and ``threading``: the Python wrappers pull in enum,
# selectors and collections, which triple the client's import time for nothing it uses.
import _socket
import _thread
import errno
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_MAX_HEAD = 65536  # the agent's answers have a few short headers; anything bigger is broken
_MAX_BODY = 16 * 1024 * 1024
# A full listen backlog makes connect() fail with EAGAIN on a Unix socket: the agent is busy,
# not gone. Retried with a short jittered backoff, never past the request's own timeout.
_BUSY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
_FIRST_BACKOFF, _MAX_BACKOFF = 0.002, 0.1
_LAST_TRY = 0.05  # time kept for the last attempt after "busy" answers; no point in less


class AgentUnreachable(Exception):
    """The agent's socket could not be reached or the connection broke mid-request."""


class ProtocolError(Exception):
    """The peer's answer is not the HTTP/1.1 the agent speaks."""


class AgentIdentityError(Exception):
    """The process behind the socket is not run by the uid the client was told to expect."""


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self) -> str:
        return f"Response({self.status}, {len(self.body)} bytes)"


class _Connection:
    """One connected socket and the bytes read from it but not yet consumed."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.view = memoryview(bytearray(65536))

    def fill(self) -> None:
        n = self.sock.recv_into(self.view)
        if n == 0:
            raise ConnectionResetError(errno.ECONNRESET, "the agent closed the connection")
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
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.expected_uid = expected_uid
        self._clock, self._sleep = clock, sleep
        self._lock = _thread.allocate_lock()
        self._conn: _Connection | None = None
        self._pid = os.getpid()

    def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        """One request; an agent at its connection cap (503 ``X-Agent-Busy``) is asked again
        with a short jittered backoff until the timeout, like a full backlog."""
        deadline = self._clock() + self.timeout
        backoff = _FIRST_BACKOFF
        while True:
            response = self._request_once(method, path, body, deadline)
            left = deadline - self._clock()
            busy = response.status == 503 and "x-agent-busy" in response.headers
            if not busy or left <= _LAST_TRY:
                return response
            self._sleep(min(backoff * self._jitter(), left - _LAST_TRY))
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _jitter(self) -> float:
        # From the pid and clock: no import of random for this rare path.
        return 0.5 + ((os.getpid() * 7919 + int(self._clock() * 1e6)) % 1000) / 1000

    def _request_once(
        self, method: str, path: str, body: bytes | None, deadline: float
    ) -> Response:
        with self._lock:
            if self._pid != os.getpid():
                self._conn, self._pid = None, os.getpid()  # the parent's: never touch it
            reused = self._conn is not None
            try:
                return self._send(method, path, body, deadline)
            except (ConnectionError, ProtocolError) as exc:
                self.close()
                if not reused or isinstance(exc, ProtocolError):
                    raise AgentUnreachable(_describe(exc, self.socket_path)) from None
            except OSError as exc:
                self.close()
                raise AgentUnreachable(_describe(exc, self.socket_path)) from None
            # The kept-alive connection died (the agent restarted): one retry on a new one.
            try:
                return self._send(method, path, body, deadline)
            except (OSError, ProtocolError) as exc:
                self.close()
                raise AgentUnreachable(_describe(exc, self.socket_path)) from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __del__(self) -> None:
        # Backends live as long as the Airflow process; close quietly when one is dropped.
        if getattr(self, "_pid", None) == os.getpid():
            self.close()

    def _send(self, method: str, path: str, body: bytes | None, deadline: float) -> Response:
        if self._conn is None:
            self._conn = _Connection(self._connect(deadline))
        conn = self._conn
        # Whatever went before (busy retries, a full backlog), the request ends by the deadline.
        conn.sock.settimeout(max(deadline - self._clock(), 0.001))
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            conn.sock.sendall(head.encode("ascii") + b"\r\n" + (body or b""))
        except (BrokenPipeError, ConnectionResetError):
            # An agent at its cap answers "busy" at once and closes: read that answer.
            response, _ = _read_response(conn, head_only=False)
            self.close()
            return response
        response, keep_alive = _read_response(conn, head_only=method == "HEAD")
        if not keep_alive:
            self.close()
        return response

    def _connect(self, deadline: float) -> _socket.socket:
        backoff = _FIRST_BACKOFF
        while True:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            sock.settimeout(max(deadline - self._clock(), 0.001))
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                sock.close()
                left = deadline - self._clock()
                if exc.errno not in _BUSY or left <= 0:
                    raise
                self._sleep(min(backoff * self._jitter(), left))
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            sock.settimeout(self.timeout)
            if self.expected_uid is not None:
                self._check_peer(sock)
            return sock

    def _check_peer(self, sock: _socket.socket) -> None:
        """Ask the kernel who listens on the socket (SO_PEERCRED): a replaced socket shows."""
        raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # pid, uid, gid
        uid = int.from_bytes(raw[4:8], sys.byteorder)
        if uid != self.expected_uid:
            sock.close()
            raise AgentIdentityError(
                f"the socket {self.socket_path} is served by uid {uid}, not the agent's "
                f"uid {self.expected_uid}: refusing to use it (was it replaced?)"
            )


def _read_response(conn: _Connection, *, head_only: bool) -> tuple[Response, bool]:
    """Read one response; return it and whether the connection may be used again."""
    while True:
        end = conn.buffer.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(conn.buffer) > _MAX_HEAD:
            raise ProtocolError("response head too large")
        conn.fill()
    head = bytes(conn.buffer[:end]).decode("latin-1")
    del conn.buffer[: end + 4]
    status_line, _, rest = head.partition("\r\n")
    version, _, tail = status_line.partition(" ")
    code = tail[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProtocolError("not an HTTP/1.x status line")
    headers: dict[str, str] = {}
    for line in rest.split("\r\n") if rest else ():
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError("malformed header line")
        headers[name.strip().lower()] = value.strip()
    status = int(code)
    keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
    if head_only or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b""), keep_alive
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Response(status, headers, _read_chunked(conn)), keep_alive
    length = headers.get("content-length")
    if length is None:  # delimited by the close: read it all, then the connection is done
        return Response(status, headers, _read_to_close(conn)), False
    if not length.isdigit() or int(length) > _MAX_BODY:
        raise ProtocolError("bad Content-Length")
    return Response(status, headers, _take(conn, int(length))), keep_alive


def _take(conn: _Connection, n: int) -> bytes:
    while len(conn.buffer) < n:
        conn.fill()
    data = bytes(conn.buffer[:n])
    del conn.buffer[:n]
    return data


def _read_line(conn: _Connection) -> bytes:
    while True:
        end = conn.buffer.find(b"\r\n")
        if end >= 0:
            line = bytes(conn.buffer[:end])
            del conn.buffer[: end + 2]
            return line
        if len(conn.buffer) > _MAX_HEAD:
            raise ProtocolError("chunk line too long")
        conn.fill()


def _read_chunked(conn: _Connection) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_text = _read_line(conn).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError("bad chunk size") from None
        if size == 0:
            while _read_line(conn):  # trailers, up to the empty line
                pass
            return b"".join(parts)
        total += size
        if total > _MAX_BODY:
            raise ProtocolError("response body too large")
        parts.append(_take(conn, size))
        if _take(conn, 2) != b"\r\n":
            raise ProtocolError("bad chunk terminator")


def _read_to_close(conn: _Connection) -> bytes:
    while len(conn.buffer) <= _MAX_BODY:
        try:
            conn.fill()
        except ConnectionResetError:
            break
    data = bytes(conn.buffer)
    conn.buffer.clear()
    return data


def _describe(exc: BaseException, socket_path: str) -> str:
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "timeout":  # 3.9: socket.timeout
        return f"the agent at {socket_path} did not answer in time"
    if isinstance(exc, FileNotFoundError):
        return f"no agent socket at {socket_path}"
    if isinstance(exc, PermissionError):
        return f"no permission to open the agent socket {socket_path}"
    if isinstance(exc, ConnectionRefusedError):
        return f"no agent is listening on {socket_path}"
    if isinstance(exc, BlockingIOError):
        return f"the agent at {socket_path} is too busy to accept connections"
    if isinstance(exc, ProtocolError):
        return f"the agent at {socket_path} answered with broken HTTP ({exc})"
    return f"cannot talk to the agent at {socket_path} ({type(exc).__name__})"
