"""Connections handed to aiohttp: its protocol handler, with JSON 4xx for unparsable requests
and a deadline for each request head (aiohttp has none of its own)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from secrets_agent.ops.logs import RateLimited

log = logging.getLogger(__name__)

_MAX_HEAD_SCAN = 256 * 1024  # aiohttp refuses far smaller heads; past this we stop tracking


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


class Forward:
    """Feeds one connection to aiohttp's handler and cuts a head that does not arrive in time."""

    def __init__(
        self,
        inner: RequestHandler,
        errors: RateLimited,
        head_timeout: float,
        write_timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._inner, self._errors, self._loop = inner, errors, loop
        self._head_timeout, self._write_timeout = head_timeout, write_timeout
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head = bytearray()
        self._body_left = 0
        self._tracking = True

    def start(
        self,
        transport: asyncio.Transport,
        buffered: bytes,
        write_paused: bool,
        head_due: float | None = None,
    ) -> None:
        """Take over a connection: ``buffered`` is what was read but not answered yet, and
        ``head_due`` the loop time by which the head begun before the hand-off must be whole
        (the lean path's deadline carries over: a hand-off must not restart the clock)."""
        self._transport = transport
        self._arm(head_due)  # a client that connects and sends nothing is cut too
        # aiohttp closes with ``transport.close()``, which waits for a flush a client that
        # stopped reading never allows: its closes abort what is left after write_timeout.
        reaping = Reaping(transport, self._loop, self._write_timeout)
        self._inner.connection_made(cast(asyncio.Transport, reaping))  # the calls aiohttp makes
        if write_paused:
            self._inner.pause_writing()
        if buffered:
            self.data_received(buffered)

    def data_received(self, data: bytes) -> None:
        if self._tracking:
            self._scan(data)
        self._inner.data_received(data)

    def eof_received(self) -> None:
        self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
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

    def _arm(self, due: float | None = None) -> None:
        if due is None:
            due = self._loop.time() + self._head_timeout
        self._timer = self._loop.call_at(due, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        slow_head(self._errors, self._head_timeout)
        if self._transport is not None:
            close_or_abort(self._transport, self._loop, self._write_timeout)


class Reaping:
    """A transport whose ``close`` becomes an abort when the peer does not read in time."""

    __slots__ = ("_inner", "_loop", "_timeout")

    def __init__(
        self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop, timeout: float
    ) -> None:
        self._inner, self._loop, self._timeout = inner, loop, timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def close(self) -> None:
        close_or_abort(self._inner, self._loop, self._timeout)


def close_or_abort(
    transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, write_timeout: float
) -> None:
    """Close after the flush, or abort if the peer has not read what is left in time.

    ``close`` alone waits for the flush forever: a client that stops reading would hold its
    connection (and its ``max_connections`` slot) as long as it liked.
    """
    transport.close()
    if transport.get_write_buffer_size():
        loop.call_later(write_timeout, transport.abort)  # a no-op once the flush closed it


def slow_head(errors: RateLimited, head_timeout: float) -> None:
    errors.log(
        "slow",
        logging.WARNING,
        "closed a connection that sent no complete request head within %.1f s",
        head_timeout,
    )


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
