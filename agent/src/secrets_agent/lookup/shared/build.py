"""A shared tier from the config: the store client, the sealer, the breaker."""

from __future__ import annotations

import hashlib
import logging
import time

from secrets_agent.config.schema import AgentConfig
from secrets_agent.errors import StartupError
from secrets_agent.lookup.fence import fences
from secrets_agent.lookup.shared.breaker import Breaker
from secrets_agent.lookup.shared.sealing import Sealer
from secrets_agent.lookup.shared.tier import NoSharedTier, SharedTier
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)


def require_fleet_keys(config: AgentConfig, keys: list[bytes]) -> None:
    """A shared cache needs configured keys (``check-config`` asks this too, as ``run`` does)."""
    if config.shared_cache.enabled and not keys:
        raise StartupError(
            "shared_cache needs the fleet's Fernet keys in [encryption] (key_file, key_env or "
            "credential): entries under a random per-process key could never be read elsewhere"
        )


def build_tier(config: AgentConfig, keys: list[bytes], metrics: Metrics) -> SharedTier:
    """The tier ``config`` asks for; refuses to share entries under a per-process random key."""
    shared = config.shared_cache
    if not shared.enabled:
        return NoSharedTier()
    # Only now: the redis client costs ~140 ms to import, which an agent without the tier
    # (most of them) should not pay at every start.
    from secrets_agent.lookup.shared.clients import store_client
    from secrets_agent.lookup.shared.store import RedisTier

    require_fleet_keys(config, keys)
    sealer = Sealer(keys, shared.namespace or chain_identity(config), shared.key_prefix)
    log.info("shared cache: %s, prefix %r", shared.url, shared.key_prefix)  # no credentials
    client, others = store_client(shared)
    return RedisTier(
        client,
        sealer,
        ttl=config.cache.ttl,
        negative_ttl=config.cache.negative_ttl,
        timeout=shared.timeout,
        lock_ttl=shared.lock_ttl,
        lock_wait=shared.lock_wait,
        breaker=Breaker(shared.breaker_failures, shared.breaker_cooldown, time.monotonic),
        log_interval=shared.log_interval,
        metrics=metrics,
        also_close=others,
        teams=known_teams(config),
    )


def known_teams(config: AgentConfig) -> set[str]:
    """Every team this configuration names: an invalidation deletes their entries by name."""
    listener = config.listener
    bound = [*listener.team_uids.values(), *listener.team_gids.values()]
    return {t for teams in bound for t in teams} | {
        t for b in config.backends for t in b.common.teams
    }


def chain_identity(config: AgentConfig) -> str:
    """Agents with the same backends, in the same order, with the same options share entries.

    Credentials are part of the options on purpose: agents that may read different secrets
    must not read each other's entries. So are fenced kinds (``lookup/fence.py``): an agent
    without rules may hold, under a connection's id, the variable's secret it reads.
    """
    text = repr([(b.common, b.options) for b in config.backends])
    if fences(config):
        text += " kinds fenced"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
