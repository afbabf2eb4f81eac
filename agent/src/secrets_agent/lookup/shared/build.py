"""A shared tier from the config: the store client, the sealer, the breaker."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from secrets_agent.config.schema import AgentConfig, SharedCacheConfig
from secrets_agent.errors import StartupError
from secrets_agent.lookup.shared.breaker import Breaker
from secrets_agent.lookup.shared.sealing import Sealer
from secrets_agent.lookup.shared.store import RedisTier
from secrets_agent.lookup.shared.tier import NoSharedTier, SharedTier
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)

_MAX_CONNECTIONS = 64  # bounded: a slow store must not collect one socket per waiting lookup


def build_tier(config: AgentConfig, keys: list[bytes], metrics: Metrics) -> SharedTier:
    """The tier ``config`` asks for; refuses to share entries under a per-process random key."""
    shared = config.shared_cache
    if not shared.enabled:
        return NoSharedTier()
    if not keys:
        raise StartupError(
            "shared_cache needs the fleet's Fernet keys in [encryption] (key_file, key_env or "
            "credential): entries under a random per-process key could never be read elsewhere"
        )
    sealer = Sealer(keys, shared.namespace or chain_identity(config), shared.key_prefix)
    log.info("shared cache: %s, prefix %r", shared.url, shared.key_prefix)  # no credentials
    return RedisTier(
        _client(shared),
        sealer,
        ttl=config.cache.ttl,
        negative_ttl=config.cache.negative_ttl,
        timeout=shared.timeout,
        lock_ttl=shared.lock_ttl,
        lock_wait=shared.lock_wait,
        breaker=Breaker(shared.breaker_failures, shared.breaker_cooldown, time.monotonic),
        log_interval=shared.log_interval,
        metrics=metrics,
    )


def chain_identity(config: AgentConfig) -> str:
    """Agents with the same backends, in the same order, with the same options share entries.

    Credentials are part of the options on purpose: agents that may read different secrets
    must not read each other's entries.
    """
    text = repr([(b.common, b.options) for b in config.backends])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _client(shared: SharedCacheConfig) -> Redis:
    options: dict[str, Any] = {
        "socket_timeout": shared.timeout,
        "socket_connect_timeout": shared.connect_timeout,
        # One immediate retry, on a new connection: a pooled socket the store closed (it was
        # restarted) fails once. Every store call stays bounded by ``timeout`` as a whole, and
        # the breaker decides when a failing store is tried again. (The asyncio Retry: the
        # synchronous one silently never retries an awaited call.)
        "retry": Retry(NoBackoff(), 1),
        "max_connections": _MAX_CONNECTIONS,
        "username": shared.username or None,
        "password": _password(shared),
    }
    if shared.ca_file:
        options["ssl_ca_certs"] = shared.ca_file
    client: Redis = Redis.from_url(shared.url, **options)
    return client


def _password(shared: SharedCacheConfig) -> str | None:
    if shared.password_file:
        try:
            text = Path(shared.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise StartupError(
                f"shared_cache.password_file ({shared.password_file}): cannot read ({exc.strerror})"
            ) from None
        return text or None
    return shared.password or None
