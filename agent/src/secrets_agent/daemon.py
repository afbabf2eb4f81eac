"""The agent process: startup → serve → reload → graceful shutdown (uvicorn-style).

The daemon owns what lives as long as the process: listeners, signals, sd_notify, the
background loops and the metrics registry. What a configuration builds lives in a
``Runtime``; a reload builds a new one and swaps ``self.runtime``, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from secrets_agent.config.loader import load_config
from secrets_agent.config.schema import AgentConfig, AuditConfig
from secrets_agent.errors import AgentError, ConfigError, StartupError
from secrets_agent.lookup.fence import scrub
from secrets_agent.lookup.service import SecretService
from secrets_agent.lookup.snapshot import Snapshot, backend_identities
from secrets_agent.ops.audit import AuditLog, AuditSettings
from secrets_agent.ops.logs import set_level
from secrets_agent.ops.metrics import Metrics
from secrets_agent.ops.systemd import Notifier
from secrets_agent.runtime import BackendPool, Runtime
from secrets_agent.server.app import ApiContext, create_app, metrics_app
from secrets_agent.server.connections import GuardedSockSite, accept_error_handler
from secrets_agent.server.context import Current
from secrets_agent.server.gate import Gate
from secrets_agent.server.listener import bind_unix_socket, listen_backlog, remove_socket_file
from secrets_agent.server.memo import sized_for
from secrets_agent.server.reads import Reads

log = logging.getLogger(__name__)

# File descriptors kept back from the connection cap: upstream clients, files, the log.
FD_RESERVE = 128

# Fixed at bind time: a reload cannot move or reshape the listener, or the log format.
_RESTART_ONLY = (
    "socket_path",
    "socket_mode",
    "socket_group",
    "max_request_line",
    "max_header_size",
    "max_body_size",
    "max_connections",
    "header_timeout",
    "idle_timeout",
    "write_timeout",
)
_REFRESH_SCAN_INTERVAL = 1.0  # seconds between looks for keys due for refresh-ahead


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
        self._initial = config
        self.config_path = config_path
        self.metrics = Metrics()
        self.notifier = notifier or Notifier(environ={})
        self._clock = clock
        self._inherited = inherited
        self._pool = BackendPool(self.metrics, clock)
        # The runtime serving now (None before the start); what requests read it from.
        self.current: Current[Runtime] = Current()
        self._runners: list[web.AppRunner] = []
        self._socket: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reloads: set[asyncio.Task[bool]] = set()  # SIGHUPs being applied
        self._reload_lock = asyncio.Lock()
        self._serving = False  # startup completed: the cache is ours to snapshot
        self.audit = AuditLog(_audit_settings(config.audit), self.metrics)

    @property
    def runtime(self) -> Runtime:
        return self.current()

    @property
    def config(self) -> AgentConfig:
        runtime = self.current.runtime
        return self._initial if runtime is None else runtime.config

    @property
    def service(self) -> SecretService:
        return self.runtime.service

    @property
    def socket_path(self) -> str:
        return self.config.listener.socket_path

    # -- startup ---------------------------------------------------------------------------

    async def startup(self) -> None:
        """Build the runtime, then open the socket; undo all of it on failure."""
        try:
            await self._startup()
        except BaseException:
            await self.shutdown()
            raise

    async def _startup(self) -> None:
        cfg = self._initial
        self._swap(await Runtime.build(cfg, self._pool, self.metrics, self._clock))
        if cfg.cache.snapshot_file:
            backends = backend_identities(cfg.backends)
            Snapshot(cfg.cache.snapshot_file, self.metrics, backends=backends).load(
                self.service.cache
            )
            scrub(self.service.cache, self.service.chain.links)  # saved before rules came in
        self.metrics.track_cache_size(lambda: len(self.service.cache))
        context = ApiContext(current=self.current, metrics=self.metrics, audit=self.audit)
        reads = Reads(context)
        app = create_app(reads, cfg.listener.max_body_size)
        if self._inherited is not None:
            await self._serve_app(app, sock=self._inherited, reads=reads)
        else:
            self._socket = bind_unix_socket(cfg.listener)
            await self._serve_app(app, sock=self._socket, reads=reads)
        if cfg.metrics.port:
            await self._serve_app(
                metrics_app(self.metrics), tcp=(cfg.metrics.address, cfg.metrics.port)
            )
        self._tasks.append(asyncio.create_task(self._sweep_forever()))
        self._tasks.append(asyncio.create_task(self._refresh_forever()))
        self._tasks.append(asyncio.create_task(self._snapshot_forever()))
        if self.notifier.watchdog_interval:
            self._tasks.append(asyncio.create_task(self._watchdog_forever()))
        self._serving = True
        log.debug("debug logging is on; SDK loggers stay at WARNING, values are never logged")
        names = ", ".join(backend.name for _, backend in self.runtime.backends)
        log.info("agent listening on %s with backends %s", self.socket_path, names)
        self.notifier.ready(f"serving on {self.socket_path}; backends: {names}")

    def runtime_now(self) -> Runtime:
        """The runtime serving at this moment (``self.current()``, what requests read)."""
        return self.current()

    def _swap(self, runtime: Runtime) -> None:
        self.current.runtime = runtime
        self._pool.publish(runtime.backends, runtime.config.pricing)

    async def _serve_app(
        self,
        app: web.Application,
        *,
        sock: socket.socket | None = None,
        reads: Reads | None = None,
        tcp: tuple[str, int] | None = None,
    ) -> None:
        listener = self._initial.listener
        handler_args: dict[str, Any] = {
            "access_log": None,
            "max_line_size": listener.max_request_line,
            "max_field_size": listener.max_header_size,
            "keepalive_timeout": listener.idle_timeout,
            # No API body is ever compressed: a Content-Encoding body is read as the bytes it is
            # (so not JSON: a 400), never inflated, and never an inflating error per request.
            "auto_decompress": False,
        }
        runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=listener.shutdown_timeout, **handler_args
        )
        await runner.setup()
        self._runners.append(runner)
        site: web.BaseSite
        if sock is not None and reads is not None:
            limit = max(1, min(listener.max_connections, raise_fd_limit() - FD_RESERVE))
            site = GuardedSockSite(
                runner,
                sock,
                backlog=listen_backlog(),
                gate=Gate(limit),
                reads=reads,
                head_timeout=listener.header_timeout,
                write_timeout=listener.write_timeout,
                shutdown_timeout=listener.shutdown_timeout,
                handler_args=handler_args,
                memo=sized_for(self._initial.cache.max_entries),
            )
        elif tcp is not None:
            site = web.TCPSite(runner, tcp[0], tcp[1])
        else:
            raise ValueError("either sock and reads, or tcp, are required")
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen: {exc.strerror}") from None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.cache.sweep_interval)
            self.service.cache.sweep()

    async def _refresh_forever(self) -> None:
        # Lookups also start refreshes; this catches hot keys not read past their refresh point.
        while True:
            await asyncio.sleep(_REFRESH_SCAN_INTERVAL)
            self.service.refresh_due()

    async def _snapshot_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.cache.snapshot_interval)
            await self.save_snapshot()

    async def save_snapshot(self) -> bool:
        """Write the cache to ``cache.snapshot_file`` (if set); encryption and I/O off the loop."""
        if not self.config.cache.snapshot_file:
            return False
        backends = backend_identities(self.config.backends)
        snapshot = Snapshot(self.config.cache.snapshot_file, self.metrics, backends=backends)
        cipher, document = snapshot.collect(self.service.cache)
        return await asyncio.to_thread(snapshot.write, cipher, document)

    async def _watchdog_forever(self) -> None:
        # Sent from the event loop itself: if the loop is stuck, systemd stops hearing from us.
        interval = self.notifier.watchdog_interval or 1.0
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- reload ----------------------------------------------------------------------------

    def request_reload(self) -> None:
        """Reload in the background (SIGHUP); a shutdown cancels a reload still building."""
        task = asyncio.create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> bool:
        """Re-read the config file: apply it whole, or keep serving exactly as before."""
        if self.config_path is None:
            log.warning("reload requested, but the agent was not started from a config file")
            return False
        async with self._reload_lock:
            self.notifier.reloading()
            old = self.runtime
            try:
                # On a thread: reading the file and resolving [[access]] user and group names
                # (NSS may ask LDAP or sssd) can block, and lookups go on meanwhile.
                loaded = await asyncio.to_thread(load_config, self.config_path)
                new_config = _keep_restart_only_settings(old.config, loaded)
                new = await Runtime.build(
                    new_config,
                    self._pool,
                    self.metrics,
                    self._clock,
                    previous=old,
                    require_ready=True,
                )
            except ConfigError as exc:
                return self._reload_failed(exc.one_line())
            except AgentError as exc:
                return self._reload_failed(str(exc))
            except Exception:  # our own bug: worth a traceback, but never worth the service
                log.exception("reload failed unexpectedly")
                return self._reload_failed("unexpected error")
            self._swap(new)
            # From here the new runtime serves: the old one is retired even if a shutdown
            # cancels this reload, or its backends would stay open, owned by no runtime.
            await _finish(self._commit(old, new))
            return True

    async def _commit(self, old: Runtime, new: Runtime) -> None:
        for warning in new.config.warnings:  # as at the start (a reload may bring rules)
            log.warning("config: %s", warning)
        self.audit.reconfigure(_audit_settings(new.config.audit))
        set_level(new.config.log.level)
        await self._retire_bounded(old, new)
        if new.service.cache.cipher.keys_id != old.service.cache.cipher.keys_id:
            await self._keys_changed()
        self.metrics.reloads.labels("success").inc()
        log.info("configuration reloaded from %s", self.config_path)
        self.notifier.ready(f"serving on {self.socket_path}; configuration reloaded")

    async def _keys_changed(self) -> None:
        """Nothing stays under a removed key: the node cache was re-sealed, the shared tier
        reconnected under the new keys; the snapshot follows now."""
        rewritten = await self.save_snapshot()
        log.warning(
            "reload: the encryption keys changed: node cache re-sealed under the new first key, "
            "shared cache entries written and read under the new keys%s",
            ", snapshot rewritten" if rewritten else "",
        )

    def _reload_failed(self, reason: str) -> bool:
        self.audit.reconfigure(_audit_settings(self.runtime.config.audit))  # logrotate's HUP
        self.metrics.reloads.labels("failure").inc()
        log.error("reload failed; still serving the previous configuration: %s", reason)
        self.notifier.ready("reload failed; serving the previous configuration")
        return False

    # -- shutdown --------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), remove the socket, close."""
        self.notifier.stopping()
        for task in [*self._reloads, *self._tasks]:
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
        if (runtime := self.current.runtime) is not None:
            if self._serving:
                self._serving = False
                await self.save_snapshot()
            await self._retire_bounded(runtime, None)
        self.audit.close()

    async def _retire_bounded(self, runtime: Runtime, successor: Runtime | None) -> None:
        """Close what ``successor`` does not keep (backends, feeds, the shared tier), bounded
        by ``listener.shutdown_timeout``: a client library that never returns from its close
        must not keep a stopping agent from exiting, nor a reload from finishing."""
        bound = runtime.config.listener.shutdown_timeout
        try:
            async with asyncio.timeout(bound):
                await runtime.retire(successor)
                if successor is None:  # and what a reload's bounded close had to leave open
                    await self._pool.close_all()
        except TimeoutError:
            if successor is None:
                message = "shutdown: closing the backends took over %.0f s; exiting anyway"
            else:
                message = (
                    "reload: closing the previous configuration's backends took over %.0f s; "
                    "serving the new one, the rest left unclosed"
                )
            log.warning(message, bound)

    async def run(self) -> None:
        """Run until SIGTERM or SIGINT; SIGHUP reloads the configuration."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        loop.set_exception_handler(accept_error_handler(loop.default_exception_handler))
        await self.startup()
        try:
            await stop.wait()
            log.info("shutting down")
        finally:
            await self.shutdown()


async def _finish(work: Awaitable[None]) -> None:
    """Await ``work`` to its end even if the caller is cancelled meanwhile (then re-raise)."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _audit_settings(config: AuditConfig) -> AuditSettings:
    return AuditSettings(
        output=config.output,
        path=config.file,
        max_bytes=config.max_bytes,
        backups=config.backups,
        rate=config.rate_limit,
    )


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (each connection is a descriptor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            log.warning("cannot raise the open-files limit from %d to %d", soft, hard)
    return soft


def _keep_restart_only_settings(old: AgentConfig, new: AgentConfig) -> AgentConfig:
    """Socket, metrics listener and log format need a restart; keep the running ones."""
    changed = [
        f"listener.{k}"
        for k in _RESTART_ONLY
        if getattr(old.listener, k) != getattr(new.listener, k)
    ]
    changed += ["metrics"] if old.metrics != new.metrics else []
    changed += ["log.format"] if old.log.format != new.log.format else []
    if changed:
        log.warning(
            "reload: %s change only on restart; keeping the running values", ", ".join(changed)
        )
    listener = replace(new.listener, **{k: getattr(old.listener, k) for k in _RESTART_ONLY})
    return replace(
        new, listener=listener, metrics=old.metrics, log=replace(new.log, format=old.log.format)
    )
