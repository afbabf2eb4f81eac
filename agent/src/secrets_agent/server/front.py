"""Each connection on the socket, first: admitted under the cap, its peer read once, plain
reads answered by the lean path, and the connection handed to aiohttp at the first request
that is anything else (it then stays with aiohttp, which answers as it always has).

Requests are answered in order (pipelining included): one waiting on the upstream holds back
those behind it. A deadline per connection (head, then idle) is checked by one timer that is
rescheduled only when it fires early, so a request costs no timer of its own. Deadlines are
read from ``time.monotonic()``, the clock asyncio's ``loop.time()`` and ``call_at`` use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import cast

from secrets_agent.ops.metrics import Metrics
from secrets_agent.server.errors import Answer
from secrets_agent.server.forward import Forward, close_or_abort, slow_head
from secrets_agent.server.gate import BUSY, Gate
from secrets_agent.server.hit import KEEP, Answering
from secrets_agent.server.lean import HeadParser, LeanRead, Renderer, could_be_lean
from secrets_agent.server.peers import peer_credentials, peer_groups
from secrets_agent.server.reads import Caller, Reads

_MAX_BUFFERED = 256 * 1024  # unanswered bytes held while a request waits; then reading pauses


class Fronts:
    """The lean connections open now: shutdown closes them (aiohttp knows only its own)."""

    def __init__(self) -> None:
        self._open: set[Front] = set()
        self._empty = asyncio.Event()

    def add(self, front: Front) -> None:
        self._open.add(front)
        self._empty.clear()

    def discard(self, front: Front) -> None:
        self._open.discard(front)
        if not self._open:
            self._empty.set()

    async def drain(self, grace: float) -> None:
        """Close idle connections now, busy ones once answered; abort the rest after ``grace``."""
        for front in list(self._open):
            front.drain()
        if self._open:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), grace)
        for front in list(self._open):
            front.abort()


@dataclass(frozen=True)
class FrontSettings:
    """What every connection of one socket shares."""

    gate: Gate
    reads: Reads
    forward: Callable[[], Forward]  # aiohttp's handler for a connection, wrapped
    header_timeout: float
    idle_timeout: float
    write_timeout: float
    max_line: int
    max_field: int
    heads: HeadParser
    renderer: Renderer
    hit: Answering  # the usual read, answered in one call (``server.hit``)
    fronts: Fronts
    metrics: Metrics


class Front(asyncio.Protocol):
    def __init__(self, settings: FrontSettings, loop: asyncio.AbstractEventLoop) -> None:
        self._s, self._loop = settings, loop
        self._transport: asyncio.Transport | None = None
        self._caller: Caller | None = None
        self._forward: Forward | None = None
        self._buffer = bytearray()
        self._admitted = self._busy = self._closing = self._eof = self._draining = False
        self._write_paused = self._read_paused = self._waiting_head = False
        self._deadline = math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._stall: asyncio.TimerHandle | None = None  # writing paused: the write deadline

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio.Transport, hence no isinstance).
        self._transport = transport = cast(asyncio.Transport, transport)
        gate = self._s.gate
        if not gate.enter():
            message = "connection limit (%d) reached; refusing"
            gate.log.log("cap", logging.WARNING, message, gate.limit)
            transport.write(BUSY)
            transport.close()
            return
        self._admitted = True
        self._s.fronts.add(self)
        sock = transport.get_extra_info("socket")
        try:  # the kernel fixed these at connect: once per connection is enough
            self._caller = Caller(peer_credentials(sock), peer_groups(sock))
        except (OSError, AttributeError):
            self._hand_off()  # aiohttp's peer check refuses it with a JSON 403
            return
        self._waiting_head = True  # a client that connects and sends nothing is cut too
        self._set_deadline(time.monotonic() + self._s.header_timeout)

    def data_received(self, data: bytes) -> None:
        if (
            self._forward is None
            and self._admitted
            and not (self._buffer or self._busy or self._closing or self._write_paused)
        ):
            # The usual read: one whole request, seen before (the memo is keyed by requests
            # with their blank line, so a partial or pipelined read never matches here), for
            # a plain read of a fresh value: answered and written in one call.
            done = self._s.hit(self._caller, data, self._transport)  # type: ignore[arg-type]
            if done == KEEP:
                # ``_idle``, inlined (a frame less on every read): nothing buffered, no EOF
                self._waiting_head = False
                if (idle := time.monotonic() + self._s.idle_timeout) < self._timer_at:
                    self._set_deadline(idle)
                else:
                    self._deadline = idle
                return
            if done:
                self._close()
                return
            head = self._s.heads.memo.young.get(data)
            if head is not None:
                self._respond(head, hit_declined=True)
                if not (self._busy or self._closing):
                    self._idle()
                return
        if self._forward is not None:
            self._forward.data_received(data)
        elif self._admitted and not self._closing:
            self._buffer += data
            if self._busy or self._write_paused:
                if len(self._buffer) > _MAX_BUFFERED and not self._read_paused:
                    self._read_paused = True
                    self._transport.pause_reading()  # type: ignore[union-attr]
                return
            self._serve()

    def eof_received(self) -> bool | None:
        if self._forward is not None:
            self._forward.eof_received()
            return None
        if self._busy:  # half-closed with a request waiting: answer it, then close
            self._eof = True
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timer()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._admitted:
            self._admitted = False
            self._s.gate.leave()
            self._s.fronts.discard(self)
            if self._forward is not None:
                self._forward.connection_lost(exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        # Rare (answers beyond the transport's high-water mark): a timer here costs nothing on
        # the usual read, and one on either path (lean or aiohttp) cuts a client that stopped
        # reading, whatever it is waiting for.
        if self._stall is None:
            self._stall = self._loop.call_later(self._s.write_timeout, self._stalled)
        if self._forward is not None:
            self._forward.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._forward is not None:
            self._forward.resume_writing()
        elif not self._busy and not self._closing:
            self._serve()

    def drain(self) -> None:
        """Shutting down: close when the request in progress (if any) is answered."""
        if self._forward is not None:
            self._s.fronts.discard(self)  # aiohttp's now: its shutdown closes it
        elif self._busy:
            self._draining = True
        else:
            self._close()

    def abort(self) -> None:
        self._s.fronts.discard(self)
        if self._transport is not None and self._forward is None:
            self._transport.abort()

    def _stalled(self) -> None:
        """Answers unread for write_timeout: the client stopped reading; free its slot."""
        self._stall = None
        self._s.gate.log.log(
            "stalled",
            logging.WARNING,
            "aborted a connection that left its answers unread for %.1f s",
            self._s.write_timeout,
        )
        self._closing = True
        self._cancel_timer()
        if self._transport is not None:
            self._transport.abort()

    # -- the lean path -------------------------------------------------------------------------

    def _serve(self) -> None:
        """Answer every complete request buffered, in order, until one has to wait."""
        s, buffer = self._s, self._buffer
        while not (self._busy or self._closing or self._write_paused):
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if not buffer:
                    self._idle()
                elif (
                    not could_be_lean(buffer)
                    or len(buffer) > s.max_line + s.max_field
                    or buffer.count(b"\n") != buffer.count(b"\r\n")
                ):  # a bare LF is never lean: aiohttp's parser refuses it at once with a 400
                    self._hand_off()
                elif not self._waiting_head:
                    self._waiting_head = True
                    self._set_deadline(time.monotonic() + s.header_timeout)
                break
            raw = bytes(buffer[: end + 4])
            head = s.heads.parse(raw)
            if head is None:
                self._hand_off()
                break
            del buffer[: end + 4]
            self._respond(head)
        if self._read_paused and len(buffer) <= _MAX_BUFFERED and not self._busy:
            self._read_paused = False
            if self._transport is not None and not self._closing:
                self._transport.resume_reading()

    def _respond(self, head: LeanRead, *, hit_declined: bool = False) -> None:
        """Answer now if the answer is at hand, else once the lookup has waited for it
        (``hit_declined``: the one-call read was just asked, and said no)."""
        started = time.perf_counter()
        assert self._caller is not None
        s, read = self._s, head.read
        if not hit_declined:
            done = s.hit.answer(self._caller, head, self._transport)  # type: ignore[arg-type]
            if done:  # the usual read: answered and written
                if done != KEEP:
                    self._close()
                return
        answer = s.reads.settle(self._caller, read)
        if answer is None:
            self._busy, self._waiting_head, self._deadline = True, False, math.inf
            task = self._loop.create_task(self._s.reads.fetch(self._caller, head.read))
            task.add_done_callback(partial(self._fetched, head, started))
        else:
            self._send(answer, head, started)

    def _idle(self) -> None:
        """Nothing buffered: the connection waits for its next request (or closes at EOF)."""
        self._waiting_head = False
        if self._eof:
            self._close()
        elif (idle := time.monotonic() + self._s.idle_timeout) < self._timer_at:
            self._set_deadline(idle)
        else:  # later than the timer: it finds the new deadline when it fires
            self._deadline = idle

    def _fetched(self, head: LeanRead, started: float, task: asyncio.Task[Answer]) -> None:
        self._busy = False
        if self._closing or task.cancelled():
            return
        self._send(task.result(), head, started)
        if self._draining:
            self._close()
        else:
            self._serve()

    def _send(self, answer: Answer, head: LeanRead, started: float) -> None:
        assert self._transport is not None
        # Counted before it is written (as aiohttp's middleware does): a client that has its
        # answer finds the request in the metrics.
        self._s.metrics.answered(head.kind_label, answer.status, time.perf_counter() - started)
        self._transport.write(self._s.renderer.render(answer, head.keep_alive))
        if not head.keep_alive:
            self._close()

    def _close(self) -> None:
        self._closing = True
        self._cancel_timer()
        if self._transport is not None:
            close_or_abort(self._transport, self._loop, self._s.write_timeout)

    def _hand_off(self) -> None:
        """From here on, this connection is aiohttp's (with whatever was read but unanswered)."""
        assert self._transport is not None
        self._cancel_timer()
        if self._read_paused:
            self._read_paused = False
            self._transport.resume_reading()
        self._forward = self._s.forward()
        self._s.fronts.discard(self)  # aiohttp tracks it from here (and closes it on shutdown)
        buffered = bytes(self._buffer)
        self._buffer.clear()
        due = self._deadline if self._waiting_head else None  # time.monotonic, the loop's clock
        self._forward.start(self._transport, buffered, self._write_paused, due)
        if self._eof:
            self._forward.eof_received()

    # -- the deadline --------------------------------------------------------------------------

    def _set_deadline(self, when: float) -> None:
        self._deadline = when
        if when < self._timer_at:  # only ever earlier than planned: later is found on firing
            self._cancel_timer()
            self._timer = self._loop.call_at(when, self._tick)
            self._timer_at = when

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf

    def _tick(self) -> None:
        self._timer, self._timer_at = None, math.inf
        if self._closing or self._forward is not None:
            return
        if self._deadline > time.monotonic():
            if self._deadline < math.inf:
                self._set_deadline(self._deadline)
            return
        if self._waiting_head:
            slow_head(self._s.gate.log, self._s.header_timeout)
        self._close()
