"""The agent process: explicit startup → serve → reload → graceful shutdown (uvicorn-style)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web

from secrets_agent.backends.base import Backend, BackendContext, Health
from secrets_agent.backends.registry import create_backend
from secrets_agent.cache import SecretCache
from secrets_agent.chain import BackendChain, Link
from secrets_agent.config import AgentConfig, BackendConfig
from secrets_agent.crypto import Cipher, load_keys
from secrets_agent.errors import AgentError, BackendError, ConfigError, StartupError
from secrets_agent.kinds import Kind
from secrets_agent.loader import load_config
from secrets_agent.metrics import Metrics
from secrets_agent.server.app import ApiContext, create_app
from secrets_agent.server.listener import bind_unix_socket, remove_socket_file
from secrets_agent.server.peers import AccessPolicy
from secrets_agent.service import SecretService
from secrets_agent.systemd import Notifier

log = logging.getLogger(__name__)


class Agent:
    """One running agent. ``clock`` drives cache expiry, so tests move time instead of sleeping.

    ``config_path`` enables reloads; ``inherited`` is a listening socket systemd passed us.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        config_path: str | None = None,
        inherited: socket.socket | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        self.notifier = notifier or Notifier(environ={})
        self._clock = clock
        self._inherited = inherited
        self._backends: list[tuple[BackendConfig, Backend]] = []
        self._started: set[Backend] = set()  # by identity: a reload may reuse a name
        self._runners: list[web.AppRunner] = []
        self._socket: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._context: ApiContext | None = None
        self._service: SecretService | None = None
        self._reload_lock = asyncio.Lock()

    @property
    def socket_path(self) -> str:
        return self.config.listener.socket_path

    @property
    def service(self) -> SecretService:
        if self._service is None:
            raise RuntimeError("the agent is not started")
        return self._service

    # -- startup ---------------------------------------------------------------------------

    async def startup(self) -> None:
        """Build every layer, start backends, then open the socket; undo all of it on failure."""
        try:
            await self._startup()
        except BaseException:
            await self.shutdown()
            raise

    async def _startup(self) -> None:
        cfg = self.config
        cache = self._new_cache(cfg)
        self._backends = await self._start_backends(cfg.backends, running=[])
        self._service = SecretService(self._chain(), cache, self.metrics)
        self.metrics.track_cache_size(lambda: len(self.service.cache))
        for _, backend in self._backends:
            await self._prefetch(backend)

        self._context = ApiContext(
            self.service, AccessPolicy.from_config(cfg.listener), self.metrics, self.readiness
        )
        app = create_app(self._context, cfg.listener.max_body_size)
        if self._inherited is not None:
            await self._serve_app(app, sock=self._inherited)
        else:
            self._socket = bind_unix_socket(cfg.listener)
            await self._serve_app(app, sock=self._socket)
        if cfg.metrics.port:
            await self._serve_app(
                _metrics_app(self.metrics), tcp=(cfg.metrics.address, cfg.metrics.port)
            )
        self._tasks.append(asyncio.create_task(self._sweep_forever()))
        if self.notifier.watchdog_interval:
            self._tasks.append(asyncio.create_task(self._watchdog_forever()))
        names = ", ".join(backend.name for _, backend in self._backends)
        log.info("agent listening on %s with backends %s", self.socket_path, names)
        self.notifier.ready(f"serving on {self.socket_path}; backends: {names}")

    def _new_cache(self, cfg: AgentConfig) -> SecretCache:
        return SecretCache(
            max_entries=cfg.cache.max_entries,
            ttl=cfg.cache.ttl,
            negative_ttl=cfg.cache.negative_ttl,
            max_stale=cfg.cache.max_stale,
            cipher=Cipher(load_keys(cfg.encryption)),
            clock=self._clock,
        )

    async def _start_backends(
        self, configs: tuple[BackendConfig, ...], running: list[tuple[BackendConfig, Backend]]
    ) -> list[tuple[BackendConfig, Backend]]:
        """Backends for ``configs``: a running one when its config is unchanged, else a new one."""
        lent = BackendContext(metrics=self.metrics, clock=self._clock)
        result: list[tuple[BackendConfig, Backend]] = []
        created: list[Backend] = []
        try:
            for config in configs:
                # Compared by value, not hashed: options may hold tables (dicts).
                backend = next((b for c, b in running if c == config), None)
                if backend is None:
                    backend = create_backend(config, lent)
                    created.append(backend)
                    await self._start_backend(backend)
                result.append((config, backend))
        except BaseException:
            await self._close_backends(created)
            raise
        return result

    async def _start_backend(self, backend: Backend) -> None:
        try:
            await backend.start()
        except BackendError as exc:
            raise StartupError(str(exc)) from None
        self._started.add(backend)
        if not backend.manages_auth:
            # A function, not a value: the newest backend of a name owns its gauges.
            self.metrics.authenticated.labels(backend.name).set_function(
                lambda: float(backend in self._started)
            )
        self.metrics.backend_ready.labels(backend.name).set_function(
            lambda: float(backend in self._started and backend.health().ready)
        )

    def _chain(self) -> BackendChain:
        links = [
            Link(
                backend,
                {kind: _compile(config.common.lookup_pattern(kind)) for kind in Kind},
                frozenset(config.common.teams),
            )
            for config, backend in self._backends
        ]
        return BackendChain(links, self.metrics)

    async def _prefetch(self, backend: Backend) -> None:
        """Warm the cache with the ids the backend is configured to load at start."""
        try:
            items = await backend.prefetch()
        except AgentError as exc:  # a warm-up failure only costs the first lookups a round trip
            log.warning("backend %r: prefetch failed: %s", backend.name, exc)
            return
        for item in items:
            self.service.cache.put(
                item.kind, item.secret_id, item.found.value, backend.name, item.found.version
            )
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
            b.name: b.health() if b in self._started else Health(False, "not started")
            for _, b in self._backends
        }

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.cache.sweep_interval)
            self.service.cache.sweep()

    async def _watchdog_forever(self) -> None:
        # Sent from the event loop itself: if the loop is stuck, systemd stops hearing from us.
        interval = self.notifier.watchdog_interval or 1.0
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- reload ----------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config file: apply it, or keep serving the old one if it is invalid."""
        if self.config_path is None:
            log.warning("reload requested, but the agent was not started from a config file")
            return False
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                new = load_config(self.config_path)
                await self._apply(new)
            except (ConfigError, AgentError) as exc:
                self.metrics.reloads.labels("failure").inc()
                log.error("reload failed; still serving the previous configuration: %s", exc)
                self.notifier.ready("reload failed; serving the previous configuration")
                return False
            self.metrics.reloads.labels("success").inc()
            log.info("configuration reloaded from %s", self.config_path)
            self.notifier.ready(f"serving on {self.socket_path}; configuration reloaded")
            return True

    async def _apply(self, new: AgentConfig) -> None:
        old = self.config
        new = self._keep_restart_only_settings(old, new)
        # Build everything that can fail before touching what is serving.
        cache_changed = (new.cache, new.encryption) != (old.cache, old.encryption)
        cache = self._new_cache(new) if cache_changed else self.service.cache
        previous = self._backends
        backends = await self._start_backends(new.backends, running=previous)

        self.config, self._backends = new, backends
        kept = [b for _, b in backends if any(b is p for _, p in previous)]
        self.service.chain = self._chain()
        if cache_changed:
            self.service.cache = cache
        elif [c for c, _ in previous] != [c for c, _ in backends]:
            self.service.cache.keep_sources({b.name for b in kept})
        if self._context is not None:
            self._context.policy = AccessPolicy.from_config(new.listener)
        logging.getLogger().setLevel(new.log.level.upper())
        await self._close_backends([b for _, b in previous if not any(b is k for k in kept)])
        for _, backend in backends:
            if not any(backend is k for k in kept):
                await self._prefetch(backend)

    @staticmethod
    def _keep_restart_only_settings(old: AgentConfig, new: AgentConfig) -> AgentConfig:
        """Socket, metrics listener and log format need a restart; keep the running ones."""
        fixed = (
            "socket_path",
            "socket_mode",
            "socket_group",
            "max_request_line",
            "max_header_size",
            "max_body_size",
        )
        changed = [
            f"listener.{k}" for k in fixed if getattr(old.listener, k) != getattr(new.listener, k)
        ]
        changed += ["metrics"] if old.metrics != new.metrics else []
        changed += ["log.format"] if old.log.format != new.log.format else []
        if changed:
            log.warning(
                "reload: %s change only on restart; keeping the running values", ", ".join(changed)
            )
        listener = replace(new.listener, **{k: getattr(old.listener, k) for k in fixed})
        return replace(
            new, listener=listener, metrics=old.metrics, log=replace(new.log, format=old.log.format)
        )

    # -- shutdown --------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), remove the socket, close."""
        self.notifier.stopping()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._socket is not None:
            self._socket.close()  # already closed by the runner unless startup failed midway
            remove_socket_file(self.socket_path)
            self._socket = None
        # An inherited socket belongs to systemd, which keeps it for the next activation.
        await self._close_backends([b for _, b in self._backends])

    async def _close_backends(self, backends: list[Backend]) -> None:
        for backend in backends:
            if backend not in self._started:
                continue
            try:
                await backend.close()
            except Exception as exc:  # one backend failing to close must not stop the rest
                log.warning("backend %r failed to close: %s", backend.name, type(exc).__name__)
            self._started.discard(backend)

    async def run(self) -> None:
        """Run until SIGTERM or SIGINT; SIGHUP reloads the configuration."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            task = asyncio.create_task(self.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
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
