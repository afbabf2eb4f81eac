"""The agent process: explicit startup → serve → graceful shutdown, as in uvicorn's Server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import time
from collections.abc import Callable

from aiohttp import web

from secrets_agent.backends.base import Backend, BackendContext, Health
from secrets_agent.backends.registry import create_backend
from secrets_agent.cache import SecretCache
from secrets_agent.chain import BackendChain, Link
from secrets_agent.config import AgentConfig
from secrets_agent.crypto import Cipher, load_keys
from secrets_agent.errors import AgentError, BackendError, StartupError
from secrets_agent.kinds import Kind
from secrets_agent.metrics import Metrics
from secrets_agent.server.app import ApiContext, create_app
from secrets_agent.server.listener import bind_unix_socket, remove_socket_file
from secrets_agent.server.peers import AccessPolicy
from secrets_agent.service import SecretService

log = logging.getLogger(__name__)


class Agent:
    """One running agent. ``clock`` drives cache expiry, so tests move time instead of sleeping."""

    def __init__(self, config: AgentConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.metrics = Metrics()
        self._clock = clock
        self._backends: list[Backend] = []
        self._started: set[str] = set()
        self._runners: list[web.AppRunner] = []
        self._socket: socket.socket | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.service: SecretService | None = None

    @property
    def socket_path(self) -> str:
        return self.config.listener.socket_path

    async def startup(self) -> None:
        """Build every layer, start backends, then open the socket; undo all of it on failure."""
        try:
            await self._startup()
        except BaseException:
            await self.shutdown()
            raise

    async def _startup(self) -> None:
        cfg = self.config
        cipher = Cipher(load_keys(cfg.encryption))
        lent = BackendContext(metrics=self.metrics, clock=self._clock)
        self._backends = [create_backend(b, lent) for b in cfg.backends]
        links = [
            Link(backend, {kind: _compile(b.common.lookup_pattern(kind)) for kind in Kind})
            for backend, b in zip(self._backends, cfg.backends, strict=True)
        ]
        cache = SecretCache(
            max_entries=cfg.cache.max_entries,
            ttl=cfg.cache.ttl,
            negative_ttl=cfg.cache.negative_ttl,
            max_stale=cfg.cache.max_stale,
            cipher=cipher,
            clock=self._clock,
        )
        self.metrics.track_cache_size(lambda: len(cache))
        self.service = SecretService(BackendChain(links, self.metrics), cache, self.metrics)
        for backend in self._backends:
            await self._start_backend(backend)
            await self._prefetch(backend, cache)

        context = ApiContext(
            self.service, AccessPolicy.from_config(cfg.listener), self.metrics, self.readiness
        )
        self._socket = bind_unix_socket(cfg.listener)
        await self._serve_app(create_app(context, cfg.listener.max_body_size), sock=self._socket)
        if cfg.metrics.port:
            await self._serve_app(
                _metrics_app(self.metrics), tcp=(cfg.metrics.address, cfg.metrics.port)
            )
        self._sweeper = asyncio.create_task(self._sweep_forever(cache))
        log.info(
            "agent listening on %s with backends %s",
            self.socket_path,
            ", ".join(b.name for b in self._backends),
        )

    async def _start_backend(self, backend: Backend) -> None:
        try:
            await backend.start()
        except BackendError as exc:
            raise StartupError(str(exc)) from None
        self._started.add(backend.name)
        if not backend.manages_auth:
            self.metrics.authenticated.labels(backend.name).set(1)
        self.metrics.backend_ready.labels(backend.name).set_function(
            lambda: float(backend.name in self._started and backend.health().ready)
        )

    async def _prefetch(self, backend: Backend, cache: SecretCache) -> None:
        """Warm the cache with the ids the backend is configured to load at start."""
        try:
            items = await backend.prefetch()
        except AgentError as exc:  # a warm-up failure only costs the first lookups a round trip
            log.warning("backend %r: prefetch failed: %s", backend.name, exc)
            return
        for item in items:
            cache.put(item.kind, item.secret_id, item.found.value, backend.name, item.found.version)
        if items:
            log.info("backend %r: prefetched %d values", backend.name, len(items))

    async def _serve_app(
        self,
        app: web.Application,
        *,
        sock: socket.socket | None = None,
        tcp: tuple[str, int] | None = None,
    ) -> None:
        listener = self.config.listener
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=listener.shutdown_timeout,
            max_line_size=listener.max_request_line,
            max_field_size=listener.max_header_size,
        )
        await runner.setup()
        self._runners.append(runner)
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(runner, sock)
        elif tcp is not None:
            site = web.TCPSite(runner, tcp[0], tcp[1])
        else:
            raise ValueError("either sock or tcp is required")
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen: {exc.strerror}") from None

    def readiness(self) -> dict[str, Health]:
        return {
            b.name: b.health() if b.name in self._started else Health(False, "not started")
            for b in self._backends
        }

    async def _sweep_forever(self, cache: SecretCache) -> None:
        while True:
            await asyncio.sleep(self.config.cache.sweep_interval)
            cache.sweep()

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), remove the socket, close."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._socket is not None:
            self._socket.close()  # already closed by the runner unless startup failed midway
            remove_socket_file(self.socket_path)
            self._socket = None
        for backend in self._backends:
            if backend.name in self._started:
                try:
                    await backend.close()
                except Exception as exc:  # one backend failing to close must not stop the rest
                    log.warning("backend %r failed to close: %s", backend.name, type(exc).__name__)
            self.metrics.authenticated.labels(backend.name).set(0)
        self._started.clear()

    async def run(self) -> None:
        """Run until SIGTERM or SIGINT."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.startup()
        try:
            await stop.wait()
            log.info("shutting down")
        finally:
            await self.shutdown()


def _compile(pattern: str) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern else None


def _metrics_app(metrics: Metrics) -> web.Application:
    from prometheus_client import CONTENT_TYPE_LATEST

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app
