"""The HTTP/1.1 both transports speak, without any I/O: request bytes out, responses parsed from
a buffer, the busy backoff, the peer check and the error wording.

The blocking transport (``transport``) and the asyncio one (``aio``) only move bytes; whatever
the agent's answer means is decided here and in ``backend``, once.
"""

from __future__ import annotations

import errno
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_HEAD = 65536  # the agent's answers have a few short headers; anything bigger is broken
MAX_BODY = 16 * 1024 * 1024
# A full listen backlog makes connect() fail with EAGAIN on a Unix socket: the agent is busy,
# not gone. Retried with a short jittered backoff, never past the request's own timeout.
BUSY_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
_FIRST_BACKOFF, _MAX_BACKOFF = 0.002, 0.1
LAST_TRY = 0.05  # time kept for the last attempt after "busy" answers; no point in less
MAX_TIMEOUT = 86_400.0  # a day: anything longer is a typo (and sockets refuse ~10**10 s)
# RFC 3986 unreserved characters: everything else in an id is percent-encoded.
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class AgentUnreachable(Exception):
    """The agent's socket could not be reached or the connection broke mid-request."""


class ProtocolError(Exception):
    """The peer's answer is not the HTTP/1.1 the agent speaks."""


class TooLarge(ProtocolError):
    """An answer bigger than the client takes (a value of many megabytes, not broken HTTP)."""


class AgentIdentityError(Exception):
    """The process behind the socket is not run by the uid the client was told to expect."""


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self) -> str:
        return f"Response({self.status}, {len(self.body)} bytes)"

    @property
    def busy(self) -> bool:
        """The agent is at its connection cap (not an upstream 503): worth asking again."""
        return self.status == 503 and "x-agent-busy" in self.headers


def seconds(timeout: float | str) -> float:
    """``timeout`` as seconds to wait, checked once where it is given, not on first use: a
    number (or numeric text, as Airflow passes kwargs) > 0 and at most ``MAX_TIMEOUT``."""
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value <= MAX_TIMEOUT:  # NaN fails every comparison
        raise ValueError(
            f"timeout must be a number of seconds > 0 and at most {MAX_TIMEOUT:g}, not {timeout!r}"
        )
    return value


def error_detail(response: Response) -> str:
    """The agent's ``{"error", "detail"}`` as ``error: detail`` (it never holds a value)."""
    import json

    try:
        body = json.loads(response.body)
        return f"{body['error']}: {body['detail']}"
    except (ValueError, KeyError, TypeError):
        return "no detail"


def lookup_path(segment: str, secret_id: str, team: str | None, refresh: bool) -> str | None:
    """``/v1/<segment>/<id>`` with the id percent-encoded whole (a ``/`` in it included); None
    for an id or team that is not text UTF-8 can carry (a lone surrogate): invalid anywhere."""
    try:
        path = f"/v1/{segment}/{quote(secret_id)}"
        query = ([f"team={quote(team)}"] if team else []) + (["refresh=true"] if refresh else [])
    except UnicodeEncodeError:
        return None
    return path + "?" + "&".join(query) if query else path


def quote(text: str) -> str:
    """``urllib.parse.quote(text, safe="")`` without importing urllib (and re) for it."""
    data = text.encode("utf-8")
    if all(b in _SAFE for b in data):
        return text
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in data)


def request_bytes(method: str, path: str, body: bytes | None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode("ascii") + b"\r\n" + (body or b"")


Parsed = tuple[Response, bool]  # the response, and whether the connection may be used again


def parse_response(buffer: bytearray, *, head_only: bool, eof: bool) -> Parsed | None:
    """One response from the front of ``buffer`` and whether the connection may be used again;
    None while more bytes are needed (nothing of the final response is consumed until it is
    whole).

    ``eof``: the peer has closed, so a body delimited by the close is complete.
    """
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise ProtocolError("response head too large")
            return _incomplete(eof)
        status, headers, version = _parse_head(bytes(buffer[:end]).decode("latin-1"))
        start = end + 4
        if not 100 <= status < 200:
            break
        if status == 101:
            raise ProtocolError("the peer switched protocols")
        # An interim answer (RFC 9110 15.2: taken even unasked), the final one follows. Taken
        # as final, that one would stay on the connection for the next request to read.
        del buffer[:start]
    keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
    if head_only or status in (204, 304):
        del buffer[:start]
        return Response(status, headers, b""), keep_alive
    if "chunked" in headers.get("transfer-encoding", "").lower():
        found = _chunked_body(buffer, start)
        if found is None:
            return _incomplete(eof)
        body, stop = found
    else:
        length = headers.get("content-length")
        if length is None:  # delimited by the close: read it all, then the connection is done
            if len(buffer) - start > MAX_BODY:
                raise TooLarge()
            if not eof:
                return None
            body, stop, keep_alive = bytes(buffer[start:]), len(buffer), False
        else:
            if not length.isdigit():
                raise ProtocolError("bad Content-Length")
            if int(length) > MAX_BODY:
                raise TooLarge()
            stop = start + int(length)
            if len(buffer) < stop:
                return _incomplete(eof)
            body = bytes(buffer[start:stop])
    del buffer[:stop]
    return Response(status, headers, body), keep_alive


def _incomplete(eof: bool) -> Parsed | None:
    """More bytes are needed: fine unless the peer has closed."""
    if eof:
        raise ConnectionResetError(errno.ECONNRESET, "the agent closed the connection")
    return None


def _parse_head(head: str) -> tuple[int, dict[str, str], str]:
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
    return int(code), headers, version


def _chunked_body(buffer: bytearray, at: int) -> tuple[bytes, int] | None:
    """The chunked body starting at ``at`` and where it ends, or None if not all here yet."""
    parts: list[bytes] = []
    total = 0
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            if len(buffer) - at > MAX_HEAD:
                raise ProtocolError("chunk line too long")
            return None
        try:
            size = int(bytes(buffer[at:line_end]).split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError("bad chunk size") from None
        at = line_end + 2
        if size == 0:
            while True:  # trailers, up to the empty line
                line_end = buffer.find(b"\r\n", at)
                if line_end < 0:
                    return None
                empty, at = line_end == at, line_end + 2
                if empty:
                    return b"".join(parts), at
        total += size
        if total > MAX_BODY:
            raise TooLarge()
        if len(buffer) < at + size + 2:
            return None
        parts.append(bytes(buffer[at : at + size]))
        if buffer[at + size : at + size + 2] != b"\r\n":
            raise ProtocolError("bad chunk terminator")
        at += size + 2


class Backoff:
    """Short jittered pauses between tries, doubling, never past the deadline."""

    def __init__(self, clock: Callable[[], float], deadline: float) -> None:
        self.clock, self.deadline = clock, deadline
        self._next = _FIRST_BACKOFF

    def pause(self, keep: float = 0.0) -> float | None:
        """Seconds to wait before the next try, leaving ``keep`` for it; None: no time left."""
        left = self.deadline - self.clock() - keep
        if left <= 0:
            return None
        # From the pid and clock: no import of random for this rare path.
        jitter = 0.5 + ((os.getpid() * 7919 + int(self.clock() * 1e6)) % 1000) / 1000
        pause = min(self._next * jitter, left)
        self._next = min(self._next * 2, _MAX_BACKOFF)
        return pause


def check_peer(sock: Any, expected_uid: int, socket_path: str) -> None:
    """Ask the kernel who listens on the socket (SO_PEERCRED): a replaced socket shows."""
    import _socket

    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # pid, uid, gid
    uid = int.from_bytes(raw[4:8], sys.byteorder)
    if uid != expected_uid:
        raise AgentIdentityError(
            f"the socket {socket_path} is served by uid {uid}, not the agent's "
            f"uid {expected_uid}: refusing to use it (was it replaced?)"
        )


def describe(exc: BaseException, socket_path: str) -> str:
    """What went wrong talking to the agent, in words (never the request or its answer)."""
    # 3.9: socket.timeout; before 3.11 asyncio's TimeoutError is not the builtin one.
    if isinstance(exc, TimeoutError) or type(exc).__name__ in ("timeout", "TimeoutError"):
        return f"the agent at {socket_path} did not answer in time"
    if isinstance(exc, FileNotFoundError):
        return f"no agent socket at {socket_path}"
    if isinstance(exc, PermissionError):
        return f"no permission to open the agent socket {socket_path}"
    if isinstance(exc, ConnectionRefusedError):
        return f"no agent is listening on {socket_path}"
    if isinstance(exc, BlockingIOError):
        return f"the agent at {socket_path} is too busy to accept connections"
    if isinstance(exc, TooLarge):
        # The agent sends text as ASCII JSON (\uXXXX escapes): up to 6 bytes a character.
        return (
            f"the agent at {socket_path} answered with more than the client takes "
            f"({MAX_BODY >> 20} MiB): the value is too large to pass through the agent"
        )
    if isinstance(exc, ProtocolError):
        return f"the agent at {socket_path} answered with broken HTTP ({exc})"
    return f"cannot talk to the agent at {socket_path} ({type(exc).__name__})"
