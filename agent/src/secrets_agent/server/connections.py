"""Each connection on the socket: a cap on how many, a deadline for the request head, and
protocol errors answered as JSON with one rate-limited log line (no traceback: they are the
peer's mistakes, not ours)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from secrets_agent.ops.logs import RateLimited

log = logging.getLogger(__name__)

_MAX_HEAD_SCAN = 256 * 1024  # aiohttp refuses far smaller heads; past this we stop tracking


def _canned(status: int, reason: str, error: str, detail: str) -> bytes:
    body = json.dumps({"error": error, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nX-Agent-Busy: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


# Sent before anything is read: the client treats it as "busy" and retries within its timeout.
BUSY = _canned(503, "Service Unavailable", "agent_busy", "too many open connections; retry")


@dataclass
class Gate:
    """How many connections are open, how many may be, and the site's rate-limited log."""

    limit: int
    open: int = 0
    log: RateLimited = field(default_factory=lambda: RateLimited(log))

    def enter(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1


class JsonErrorHandler(RequestHandler):
    """aiohttp's protocol handler, but a request it cannot parse gets a JSON 4xx."""

    __slots__ = ("_errors",)

    def __init__(self, manager: Any, *, errors: RateLimited, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._errors = errors

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:  # not a parse error: a bug of ours, worth its traceback
            log.error("error handling a request", exc_info=exc)
        else:
            # Only the type: aiohttp's message can quote the request, which may hold anything.
            self._errors.log(
                f"bad-request-{status}",
                logging.WARNING,
                "malformed request refused with %d (%s)",
                status,
                type(exc).__name__ if exc is not None else "unknown",
            )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        error = "bad_request" if status < 500 else "internal_error"
        detail = "the request is not valid HTTP/1.1" if status < 500 else "unexpected error"
        response = web.json_response({"error": error, "detail": detail}, status=status)
        response.force_close()
        return response


class _Guard(asyncio.Protocol):
    """Wraps one connection's handler: refuse past the cap, cut a head that does not arrive."""

    def __init__(
        self,
        inner: RequestHandler,
        gate: Gate,
        head_timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._inner, self._gate, self._loop = inner, gate, loop
        self._head_timeout = head_timeout
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head = bytearray()
        self._body_left = 0
        self._tracking = True
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._gate.enter():
            self._gate.log.log(
                "cap", logging.WARNING, "connection limit (%d) reached; refusing", self._gate.limit
            )
            transport.write(BUSY)
            transport.close()
            return
        self._admitted = True
        self._arm()  # a client that connects and sends nothing is cut too
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._tracking:
            self._scan(data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._admitted:
            self._inner.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted:
            self._admitted = False
            self._gate.leave()
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def _scan(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._body_left:  # a body whose length the head announced: not a head
                taken = min(self._body_left, len(view))
                self._body_left -= taken
                view = view[taken:]
                continue
            if self._timer is None:
                self._arm()
            start = max(len(self._head) - 3, 0)
            self._head += view
            end = self._head.find(b"\r\n\r\n", start)
            if end < 0:
                if len(self._head) > _MAX_HEAD_SCAN:
                    self._stop_tracking()
                return
            rest = bytes(self._head[end + 4 :])
            length = _content_length(bytes(self._head[:end]))
            self._head.clear()
            self._disarm()
            if length is None:  # chunked or broken: aiohttp decides; we stop guessing
                self._stop_tracking()
                return
            self._body_left = length
            view = memoryview(rest)

    def _stop_tracking(self) -> None:
        self._tracking = False
        self._head.clear()
        self._disarm()

    def _arm(self) -> None:
        self._timer = self._loop.call_later(self._head_timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        self._gate.log.log(
            "slow",
            logging.WARNING,
            "closed a connection that sent no complete request head within %.1f s",
            self._head_timeout,
        )
        if self._transport is not None:
            self._transport.close()


def _content_length(head: bytes) -> int | None:
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            if not value.strip().isdigit():
                return None
            length = int(value.strip())
    return length


class GuardedSockSite(web.SockSite):
    """``SockSite`` whose connections go through a ``Gate`` and a head deadline."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: Any,
        *,
        backlog: int,
        gate: Gate,
        head_timeout: float,
        handler_args: dict[str, Any],
    ) -> None:
        super().__init__(runner, sock, backlog=backlog)
        self._gate, self._head_timeout, self._handler_args = gate, head_timeout, handler_args

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        manager = self._runner.server
        assert manager is not None

        def protocol() -> asyncio.Protocol:
            handler = JsonErrorHandler(
                manager, loop=loop, errors=self._gate.log, **self._handler_args
            )
            return _Guard(handler, self._gate, self._head_timeout, loop)

        self._server = await loop.create_server(protocol, sock=self._sock, backlog=self._backlog)


def accept_error_handler(
    default: Callable[[dict[str, Any]], None],
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """A loop exception handler: accept() failures (out of fds) as one line per interval."""

    limited = RateLimited(log)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept()"):
            exc = context.get("exception")
            limited.log(
                "accept",
                logging.ERROR,
                "accept() failed: %s; the agent retries every second",
                getattr(exc, "strerror", None) or type(exc).__name__,
            )
            return
        if _retry_after_close(context):
            # asyncio retries accept() a second after EMFILE (one timer per failed accept in
            # its loop); a retry that fires once the listener is closed (shutdown) finds no
            # socket. Nothing is lost: there is nothing left to accept on.
            return
        default(context)

    return handler


def _retry_after_close(context: dict[str, Any]) -> bool:
    callback = getattr(context.get("handle"), "_callback", None)
    return isinstance(context.get("exception"), ValueError) and (
        getattr(callback, "__name__", "") == "_start_serving"
    )
