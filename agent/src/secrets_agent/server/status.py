"""``GET /v1/status``: what an operator asks first, as one JSON document.

Built from the runtime serving now and the same counters ``/metrics`` exports, so the two never
disagree. Counts, health and prices only: never an id, a value or a credential.
"""

from __future__ import annotations

import time
from typing import Any

from secrets_agent.backends.base import Backend, Health
from secrets_agent.config.schema import AgentConfig, BackendConfig
from secrets_agent.lookup.feeds import READINESS_PREFIX
from secrets_agent.ops.metrics import Metrics
from secrets_agent.server.context import Serving

# Lookups answered from the node cache without the upstream.
_ANSWERED_HERE = ("hit", "negative")
# What the feed metrics' labels take (docs/change-feeds.md).
_EVENTS = ("applied", "ignored", "duplicate", "malformed", "foreign")
_TRIGGERS = ("event", "gap")
_REFETCHES = ("fetched", "unchanged", "gone", "error", "limited")


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
        "started_at": _iso(started),
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
        "feeds": [
            _feed(name[len(READINESS_PREFIX) : -1], health, metrics)
            for name, health in readiness.items()
            if name.startswith(READINESS_PREFIX)
        ],
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


def _feed(name: str, health: Health, metrics: Metrics) -> dict[str, Any]:
    """One change feed: its state as ``/readyz`` says it, and its counters."""
    up = metrics.sample("secrets_agent_feed_up", feed=name)
    lease = metrics.sample("secrets_agent_feed_lease_held", feed=name)
    last = metrics.sample("secrets_agent_feed_last_receive_timestamp_seconds", feed=name)

    def events(result: str) -> int:
        return int(metrics.sample("secrets_agent_feed_events_total", feed=name, result=result) or 0)

    def refetches(result: str) -> int:
        total = "secrets_agent_feed_refetches_total"
        return int(
            sum(metrics.sample(total, feed=name, trigger=t, result=result) or 0 for t in _TRIGGERS)
        )

    return {
        "name": name,
        "detail": health.detail,
        "up": up is not None and up >= 1,
        # Whether this node consumes the feed (always, without [shared_cache]), or stands by.
        "consumer": None if lease is None else lease >= 1,
        "last_received_at": None if not last else _iso(last),
        "received": int(metrics.sample("secrets_agent_feed_events_received_total", feed=name) or 0),
        "events": {result: events(result) for result in _EVENTS},
        "refetches": {result: refetches(result) for result in _REFETCHES},
    }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


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
        "read_path": metrics.read_path,
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
