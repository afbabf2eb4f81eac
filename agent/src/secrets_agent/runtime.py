"""What a configuration builds: started backends, their chain, the cache, the service, the policy.

A ``Runtime`` is complete once built and never changed afterwards: a reload builds a new one
(reusing the running backends whose config did not change, and their cached values) and the
daemon swaps a single reference. Building is all-or-nothing: on any failure what was started
for the new runtime is closed again and the one serving stays exactly as it was.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from secrets_agent.backends.base import Backend, BackendContext, Health
from secrets_agent.backends.registry import create_backend
from secrets_agent.config.schema import AgentConfig, BackendConfig, CacheConfig, PricingConfig
from secrets_agent.errors import AgentError, BackendError, StartupError
from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import RefreshAhead, SecretCache
from secrets_agent.lookup.chain import BackendChain, Link
from secrets_agent.lookup.cipher import Cipher, keys_id, load_keys
from secrets_agent.lookup.feed_lease import FleetConsumers
from secrets_agent.lookup.feeds import ChangeFeeds, FeedRunner
from secrets_agent.lookup.fence import fence, fenced_off, fences, scrub
from secrets_agent.lookup.service import RefreshPolicy, SecretService
from secrets_agent.lookup.shared.build import build_tier
from secrets_agent.lookup.shared.tier import SharedTier
from secrets_agent.lookup.snapshot import require_snapshot_keys
from secrets_agent.ops.metrics import Metrics
from secrets_agent.server.access import AccessRules
from secrets_agent.server.peers import AccessPolicy

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Running = tuple[tuple[BackendConfig, Backend], ...]
# Not a valid backend name, so it can never hide a backend's readiness.
SHARED_CACHE_READINESS = "[shared_cache]"


class BackendPool:
    """Starts and closes backends for every runtime of one agent, and owns their gauges."""

    def __init__(self, metrics: Metrics, clock: Clock) -> None:
        self._context = BackendContext(metrics=metrics, clock=clock)
        self._metrics = metrics
        self._live: set[Backend] = set()  # by identity: a reload may reuse a name

    def is_live(self, backend: Backend) -> bool:
        return backend in self._live

    def __len__(self) -> int:
        """How many backends are started and not yet closed, across runtimes."""
        return len(self._live)

    async def start(self, configs: Sequence[BackendConfig], running: Running) -> Running:
        """Backends for ``configs``: a running one when its config is unchanged, else a new one."""
        result: list[tuple[BackendConfig, Backend]] = []
        created: list[Backend] = []
        try:
            for config in configs:
                # Compared by value, not hashed: options may hold tables (dicts).
                backend = next((b for c, b in running if c == config), None)
                if backend is None:
                    backend = create_backend(config, self._context)
                    created.append(backend)
                    await self._start(backend)
                result.append((config, backend))
        except BaseException:
            await self.close(created)
            raise
        return tuple(result)

    async def _start(self, backend: Backend) -> None:
        try:
            await backend.start()
        except BaseException as exc:  # a cancelled start too (a bounded reload, a shutdown)
            # Never live, so nothing else closes it: what its start opened (SDK clients,
            # sessions, threads) goes now.
            await _close(backend)
            if isinstance(exc, BackendError):
                raise StartupError(str(exc)) from None
            raise
        self._live.add(backend)

    def publish(self, backends: Running, pricing: PricingConfig) -> None:
        """Point the per-backend gauges at ``backends`` (the newest of a name owns them)."""
        for config, backend in backends:
            self._metrics.price(backend.name, pricing.per_call(backend.name, config.common.type))
            if not backend.manages_auth:
                self._metrics.authenticated.labels(backend.name).set_function(
                    self._gauge(backend, health=False)
                )
            self._metrics.backend_ready.labels(backend.name).set_function(
                self._gauge(backend, health=True)
            )

    def _gauge(self, backend: Backend, *, health: bool) -> Callable[[], float]:
        return lambda: float(
            self.is_live(backend) and (not health or _readiness(backend, live=True).ready)
        )

    async def close_all(self) -> None:
        """Close every backend still open, whichever runtime started it."""
        await self.close(list(self._live))

    async def close(self, backends: Sequence[Backend]) -> None:
        for backend in backends:
            if backend not in self._live:
                continue
            self._live.discard(backend)
            await _close(backend)


async def _close(backend: Backend) -> None:
    try:
        await backend.close()
    except Exception as exc:  # one backend failing to close must not stop the rest
        log.warning("backend %r failed to close: %s", backend.name, type(exc).__name__)


@dataclass(frozen=True)
class Runtime:
    config: AgentConfig
    backends: Running
    service: SecretService
    policy: AccessPolicy
    pool: BackendPool
    access: AccessRules | None = None  # None: no [[access]] rules, nothing to check
    feeds: ChangeFeeds = field(default_factory=lambda: ChangeFeeds(()))

    @classmethod
    async def build(
        cls,
        config: AgentConfig,
        pool: BackendPool,
        metrics: Metrics,
        clock: Clock,
        previous: Runtime | None = None,
        *,
        require_ready: bool = False,
    ) -> Runtime:
        """Start what ``config`` needs (reusing ``previous``'s unchanged parts), or raise.

        ``require_ready`` (a reload) also fails when a newly started backend is not ready, e.g.
        cannot authenticate: the running configuration is better than one that cannot serve.
        """
        running = previous.backends if previous is not None else ()
        keys = load_keys(config.encryption)  # may fail: before any start
        cache = _cache_for(config, keys, clock, previous)
        shared = _shared_for(config, keys, metrics, previous)  # no I/O: it connects on first use
        try:
            backends = await pool.start(config.backends, running)
        except BaseException:
            await _close_if_new(shared, previous)
            raise
        new = [b for _, b in backends if not any(b is r for _, r in running)]
        try:
            if require_ready:
                _check_ready(new)
            chain_changed = [c for c, _ in backends] != [c for c, _ in running]
            if previous is not None and cache is previous.service.cache and chain_changed:
                kept = {b.name for _, b in backends if any(b is r for _, r in running)}
                cache = cache.carried_over(kept)
            chain = _chain(backends, metrics, rules=bool(config.access))
            # Values read before a fence (a reload brought rules), misses a lifted one answered.
            scrub(cache, chain.links, previous.service.chain.links if previous else ())
            service = SecretService(chain, cache, metrics, _refresh_policy(config), shared)
            if previous is not None:
                service.carry_limits(previous.service)
            policy = AccessPolicy.from_config(config.listener)
            access = AccessRules.from_config(config.access, config.cache.max_entries)
            feeds = _feeds(service, metrics)
            runtime = cls(config, backends, service, policy, pool, access, feeds)
            shared.attach(service.cache.invalidate)  # other nodes' invalidations land here
            await shared.start()
            for backend in new:
                await runtime._prefetch(backend)
        except BaseException:
            # Failed, or cancelled (a shutdown during a reload, up to the warm-up reads): what
            # was started for it belongs to no runtime, so nothing else would close it.
            await pool.close(new)
            await _close_if_new(shared, previous)
            raise
        feeds.start()  # each connects in its own task: a feed that cannot is only a detail
        return runtime

    def readiness(self) -> dict[str, Health]:
        """Ready means "can serve fresh values": started, healthy, and its upstream answering."""
        health = {b.name: _readiness(b, live=self.pool.is_live(b)) for _, b in self.backends}
        tier = self.service.shared.health()
        if tier is not None:  # a detail, never "not ready": lookups go upstream without it
            health[SHARED_CACHE_READINESS] = Health(True, tier.detail)
        health.update(self.feeds.readiness())  # details too: lookups go on with TTLs
        return health

    async def retire(self, successor: Runtime | None) -> None:
        """Close the backends ``successor`` does not use (all of them when there is none)."""
        await self.feeds.close()  # the successor runs feeds of its own
        # Its background refreshes would call closing backends; without a successor, so would
        # the lookups still out (a reload lets them finish on the backends they began with).
        await self.service.close(final=successor is None)
        keep = [b for _, b in successor.backends] if successor is not None else []
        await self.pool.close([b for _, b in self.backends if not any(b is k for k in keep)])
        if successor is None or successor.service.shared is not self.service.shared:
            await self.service.shared.close()

    async def _prefetch(self, backend: Backend) -> None:
        """Warm the cache with the ids the backend is configured to load at start."""
        try:
            items = await backend.prefetch()
        except AgentError as exc:  # a warm-up failure only costs the first lookups a round trip
            log.warning("backend %r: prefetch failed: %s", backend.name, exc)
            return
        links = self.service.chain.links
        for item in items:
            if fenced_off(links, backend.name, (item.kind, item.secret_id, None)):
                continue
            self.service.cache.put(
                item.kind, item.secret_id, item.found.value, backend.name, item.found.version
            )
        if items:
            log.info("backend %r: prefetched %d values", backend.name, len(items))


def _readiness(backend: Backend, *, live: bool) -> Health:
    if not live:
        return Health(False, "not started")
    health = backend.health()
    failure = backend.upstream_failure()
    if health.ready and failure is not None:
        return Health(False, f"last upstream call failed: {failure}")
    return health


def _check_ready(started: Sequence[Backend]) -> None:
    for backend in started:
        health = backend.health()
        if not health.ready:
            raise StartupError(f"backend {backend.name!r} is not ready: {health.detail}")


def _cache_for(
    config: AgentConfig, keys: list[bytes], clock: Clock, previous: Runtime | None
) -> SecretCache:
    """The running cache if the settings its entries are made with and its keys are unchanged;
    re-sealed if only the keys changed (compared by content: a key file rewritten in place
    counts); else a new one."""
    require_snapshot_keys(config.cache, keys)
    if previous is not None and _entry_settings(config.cache) == _entry_settings(
        previous.config.cache
    ):
        running = previous.service.cache
        if running.cipher.keys_id == keys_id(keys):
            return running
        return running.resealed(Cipher(keys))
    return SecretCache(
        max_entries=config.cache.max_entries,
        ttl=config.cache.ttl,
        negative_ttl=config.cache.negative_ttl,
        max_stale=config.cache.max_stale,
        cipher=Cipher(keys),
        clock=clock,
        refresh=RefreshAhead(config.cache.refresh_ahead, config.cache.refresh_jitter),
    )


def _entry_settings(cache: CacheConfig) -> tuple[float, ...]:
    """What the cache makes its entries with: the rest (refresh-now limits, refresh
    concurrency, sweep and snapshot) changes nothing in what it holds, so changing only that
    keeps every value (and what stale-on-error would serve)."""
    return (
        cache.max_entries,
        cache.connection_ttl,
        cache.variable_ttl,
        cache.config_ttl,
        cache.negative_ttl,
        cache.max_stale,
        cache.refresh_ahead,
        cache.refresh_jitter,
    )


def _refresh_policy(config: AgentConfig) -> RefreshPolicy:
    return RefreshPolicy(
        concurrency=config.cache.refresh_concurrency,
        now_interval=config.cache.refresh_now_interval,
        now_keys=config.cache.max_entries,
        now_per_peer=config.cache.refresh_now_per_peer,
        now_total=config.cache.refresh_now_total,
    )


def _shared_for(
    config: AgentConfig, keys: list[bytes], metrics: Metrics, previous: Runtime | None
) -> SharedTier:
    """The running tier when nothing it depends on changed (its connections and subscriber):
    the same settings and the same keys (by content)."""
    if (
        previous is not None
        and _tier_inputs(config) == _tier_inputs(previous.config)
        and keys_id(keys) == previous.service.cache.cipher.keys_id
    ):
        return previous.service.shared
    return build_tier(config, keys, metrics)


async def _close_if_new(shared: SharedTier, previous: Runtime | None) -> None:
    if previous is None or shared is not previous.service.shared:
        await shared.close()


def _tier_inputs(config: AgentConfig) -> tuple[object, ...]:
    return (config.shared_cache, config.encryption, config.cache, config.backends, fences(config))


def _feeds(service: SecretService, metrics: Metrics) -> ChangeFeeds:
    """A runner for every backend with a ``feed`` table (each its own new feed); with a fleet
    tier one node at a time consumes each feed (without one, each node holds every lease)."""
    consumers = FleetConsumers(service.shared, metrics)
    runners = []
    for link in service.chain.links:
        feed = link.backend.change_feed()
        if feed is not None:
            runners.append(FeedRunner(feed, link, service, metrics, consumers=consumers))
    return ChangeFeeds(runners)


def _chain(backends: Running, metrics: Metrics, *, rules: bool) -> BackendChain:
    links = [
        fence(
            Link(
                backend,
                {kind: _compile(config.common.lookup_pattern(kind)) for kind in Kind},
                frozenset(config.common.teams),
                config.common.deadline,
            ),
            rules,
        )
        for config, backend in backends
    ]
    return BackendChain(links, metrics)


def _compile(pattern: str) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern else None
