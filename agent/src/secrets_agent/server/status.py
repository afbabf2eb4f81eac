"""``GET /v1/status``: what an operator asks first, as one JSON document.

Built from the runtime serving now and the same counters ``/metrics`` exports, so the two never
disagree. Counts, health and prices only: never an id, a value or a credential.
"""

from __future__ import annotations

import time
from typing import Any

from secrets_agent.backends.base import Backend, Health
from secrets_agent.config.schema import AgentConfig, BackendConfig
from secrets_agent.ops.metrics import Metrics
from secrets_agent.server.context import Serving

# Lookups answered from the node cache without the upstream.
_ANSWERED_HERE = ("hit", "negative")


def status_report(serving: Serving, metrics: Metrics) -> dict[str, Any]:
    started = metrics.sample("secrets_agent_start_time_seconds") or time.time()
    readiness = serving.readiness()
    backends = [
        _backend(c, b, readiness.get(b.name), serving, metrics) for c, b in serving.backends
    ]
    made = sum(b["upstream_calls"] for b in backends)
    avoided = sum(b["calls_avoided"] for b in backends)
    return {
        "version": metrics.version,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "uptime_seconds": round(max(0.0, time.time() - started), 1),
        "ready": bool(backends) and all(h.ready for h in readiness.values()),
        "backends": backends,
        "cache": _cache(serving, metrics),
        "shared_cache": _shared(serving, metrics),
        "upstream": {
            "calls": made,
            "calls_avoided": avoided,
            "cost_usd": _usd(sum(b["cost_usd"] for b in backends)),
            "saved_usd": _usd(sum(b["saved_usd"] for b in backends)),
            "prices_taken": serving.config.pricing.taken,
        },
        "access": _access(serving, metrics),
        # Change feeds (one per backend that has one) report here: name, state, last event.
        "feeds": [],
    }


def _access(serving: Serving, metrics: Metrics) -> dict[str, Any]:
    """Who is kept out: the [[access]] rules in force (0: every admitted peer reads every id),
    the reads they refused, and the requests of peers the allow-lists refused."""
    refused = metrics.totals(metrics.access_denied, "kind")
    return {
        "rules": 0 if serving.access is None else len(serving.access),
        "reads_refused": int(sum(refused.values())),
        "peers_refused": int(metrics.sample("secrets_agent_denied_peers_total") or 0),
    }


def _backend(
    config: BackendConfig,
    backend: Backend,
    health: Health | None,
    serving: Serving,
    metrics: Metrics,
) -> dict[str, Any]:
    name = backend.name
    authenticated = metrics.sample("secrets_agent_authenticated", backend=name)
    token_ttl = metrics.sample("secrets_agent_auth_token_ttl_seconds", backend=name)
    per_call = serving.config.pricing.per_call(name, config.common.type)
    made, avoided = int(metrics.calls_made(name)), int(metrics.calls_avoided(name))
    failure = backend.upstream_failure()
    return {
        "name": name,
        "type": config.common.type,
        "ready": health is not None and health.ready,
        "detail": health.detail if health is not None else "not started",
        "authenticated": None if authenticated is None else authenticated >= 1,
        # Known where the backend holds an expiring token (Vault) and has one; None elsewhere.
        "token_expires_in_seconds": (
            None if token_ttl is None or not authenticated else round(token_ttl)
        ),
        "last_error": failure or _unready(health),
        "upstream_calls": made,
        "calls_avoided": avoided,
        "price_per_10k_usd": round(per_call * 10_000, 6),
        "cost_usd": _usd(made * per_call),
        "saved_usd": _usd(avoided * per_call),
    }


def _unready(health: Health | None) -> str | None:
    if health is None:
        return "not started"
    return None if health.ready else health.detail


def _cache(serving: Serving, metrics: Metrics) -> dict[str, Any]:
    results = metrics.totals(metrics.cache_results, "result")
    lookups = sum(results.values())
    here = sum(results.get(r, 0.0) for r in _ANSWERED_HERE)
    cache = serving.service.cache
    config: AgentConfig = serving.config
    return {
        "entries": len(cache),
        "max_entries": config.cache.max_entries,
        "negative_entries": cache.negatives(),
        "lookups": int(lookups),
        "hits": int(results.get("hit", 0.0)),
        "negative_hits": int(results.get("negative", 0.0)),
        "misses": int(results.get("miss", 0.0)),
        "revalidated": int(results.get("revalidated", 0.0)),
        "stale_served": int(results.get("stale", 0.0)),
        "coalesced": int(sum(metrics.totals(metrics.coalesced, "kind").values())),
        "hit_ratio": round(here / lookups, 4) if lookups else None,
    }


def _shared(serving: Serving, metrics: Metrics) -> dict[str, Any] | None:
    health = serving.service.shared.health()
    if health is None:
        return None  # no [shared_cache] configured
    results = metrics.totals(metrics.shared_results, "result")
    return {
        "available": health.available,
        "detail": health.detail,
        "hits": int(results.get("hit", 0.0)),
        "misses": int(results.get("miss", 0.0)),
        "errors": int(sum(metrics.totals(metrics.shared_errors, "operation").values())),
        "upstream_avoided": int(
            metrics.sample("secrets_agent_shared_cache_upstream_avoided_total") or 0
        ),
    }


def _usd(amount: float) -> float:
    return round(amount, 6)
