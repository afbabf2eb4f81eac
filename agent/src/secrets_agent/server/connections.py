"""The socket's site: every connection, accepted by ``accept.Acceptor``, starts in
``front.Front`` (cap, peer, lean reads) and goes on to aiohttp when it asks for anything else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from secrets_agent.ops.logs import RateLimited
from secrets_agent.server.accept import Acceptor
from secrets_agent.server.forward import Forward, JsonErrorHandler
from secrets_agent.server.front import Front, Fronts, FrontSettings
from secrets_agent.server.gate import Gate
from secrets_agent.server.hit import make_hit
from secrets_agent.server.lean import HeadParser, Renderer
from secrets_agent.server.reads import Reads

log = logging.getLogger(__name__)


class GuardedSockSite(web.SockSite):
    """``SockSite`` whose connections go through a ``Gate``, the lean read path and deadlines."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: Any,
        *,
        backlog: int,
        gate: Gate,
        reads: Reads,
        head_timeout: float,
        write_timeout: float,
        shutdown_timeout: float,
        handler_args: dict[str, Any],
        memo: int,
    ) -> None:
        super().__init__(runner, sock, backlog=backlog)
        self._gate, self._reads = gate, reads
        self._head_timeout, self._handler_args = head_timeout, handler_args
        self._write_timeout = write_timeout
        self._shutdown_timeout = shutdown_timeout
        self._fronts = Fronts()
        self._memo = memo  # request heads remembered: room for every key the cache holds
        self._acceptor: Acceptor | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        manager = self._runner.server
        assert manager is not None
        args, gate, head_timeout = self._handler_args, self._gate, self._head_timeout
        write_timeout = self._write_timeout

        def forward() -> Forward:
            handler = JsonErrorHandler(manager, loop=loop, errors=gate.log, **args)
            return Forward(handler, gate.log, head_timeout, write_timeout, loop)

        heads = HeadParser(
            args["max_line_size"], args["max_field_size"], self._reads.prepare, self._memo
        )
        renderer = Renderer()
        settings = FrontSettings(
            gate=gate,
            reads=self._reads,
            forward=forward,
            header_timeout=head_timeout,
            idle_timeout=args["keepalive_timeout"],
            write_timeout=write_timeout,
            max_line=args["max_line_size"],
            max_field=args["max_field_size"],
            heads=heads,
            renderer=renderer,
            hit=make_hit(
                heads.memo, self._reads, renderer, self._reads.context.metrics, self._memo
            ),
            fronts=self._fronts,
            metrics=self._reads.context.metrics,
        )
        # Our own accept rather than loop.create_server: the same backlog behaviour when out
        # of descriptors on asyncio's loop and on uvloop's (see server.accept).
        self._acceptor = Acceptor(self._sock, lambda: Front(settings, loop), loop, self._backlog)
        self._acceptor.start()

    async def stop(self) -> None:
        """Stop accepting; then the lean connections finish their answers and close."""
        if self._acceptor is not None:
            self._acceptor.close()
        await super().stop()
        await self._fronts.drain(self._shutdown_timeout)


def accept_error_handler(
    default: Callable[[dict[str, Any]], None],
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """A loop exception handler: accept() failures (out of fds) as one line per interval.

    For the servers asyncio's loop runs itself (the metrics port); the agent's socket has its
    own accept loop, which logs the same line.
    """

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
