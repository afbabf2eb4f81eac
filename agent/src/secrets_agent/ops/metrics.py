"""Prometheus metrics. Labels are low-cardinality only: never an id, never a value."""

from __future__ import annotations

import functools
import platform
import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from secrets_agent import __version__
from secrets_agent.ops.tally import Incrementable, LatencyHistogram, Tally

# Operations counted in ``upstream_api_calls_total`` that are not calls to the secrets manager
# the backend's price is for, so neither "calls made" nor their cost include them: logins (no
# manager bills them per call), STS's AssumeRole (free), and the change feeds' queue and
# subscription calls (SQS, Pub/Sub, Storage queues: billed by those services at their own rates).
UNPRICED = frozenset(
    {
        "login",
        "AssumeRole",
        "ReceiveMessage",
        "DeleteMessageBatch",
        "Pull",
        "Acknowledge",
        "ReceiveMessages",
        "DeleteMessage",
    }
)
_LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Every metric the agent exports, on a registry of its own (one per agent instance)."""

    def __init__(self) -> None:
        # *_created series double the output and nobody alerts on them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "secrets_agent_"
        self._tally = Tally(r)  # first: it folds its counts in before the others are read
        self.requests = Counter(
            p + "requests", "API requests by kind and HTTP status.", ["kind", "status"], registry=r
        )
        self.request_latency = LatencyHistogram(
            p + "request_duration_seconds",
            "API request handling time.",
            "kind",
            _LATENCY_BUCKETS,
            r,
        )
        self.cache_results = Counter(
            p + "cache_results",
            "Lookups by kind and cache result (hit, miss, stale, negative).",
            ["kind", "result"],
            registry=r,
        )
        # labels() costs more than the increment: every request counts through these memoized
        # children (few label sets: kinds x statuses, kinds x results) and a Tally.
        self._request_count = functools.cache(self.requests.labels)
        self._cache_result = functools.cache(self.cache_results.labels)
        self.coalesced = Counter(
            p + "coalesced_requests",
            "Lookups that waited on another lookup's upstream call.",
            ["kind"],
            registry=r,
        )
        self.refreshes = Counter(
            p + "refreshes",
            "Refreshes by kind, trigger (ahead: background; now: a peer asked; stale: a retry "
            "of a value served stale) and result "
            "(fetched, unchanged, gone, error, limited).",
            ["kind", "trigger", "result"],
            registry=r,
        )
        self.snapshot_writes = Counter(
            p + "snapshot_writes",
            "Cache snapshot writes by result (success, failure).",
            ["result"],
            registry=r,
        )
        self.snapshot_loads = Counter(
            p + "snapshot_loads",
            "Cache snapshot loads at start by result (loaded, absent, ignored).",
            ["result"],
            registry=r,
        )
        self.audit_events = Counter(
            p + "audit_events",
            "Reads written to the audit stream, by result.",
            ["result"],
            registry=r,
        )
        self.audit_dropped = Counter(
            p + "audit_dropped",
            "Reads not audited, by reason (rate: over audit.rate_limit; error: write failed).",
            ["reason"],
            registry=r,
        )
        self.cache_entries = Gauge(p + "cache_entries", "Entries in the cache.", registry=r)
        self.upstream_calls = Counter(
            p + "upstream_requests",
            "Backend fetches by backend, kind and result.",
            ["backend", "kind", "result"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            p + "upstream_duration_seconds",
            "Backend fetch time.",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.api_calls = Counter(
            p + "upstream_api_calls",
            "Upstream API calls by backend, operation and result (retried: an attempt the SDK "
            "sent again, throttled or failing, before the call's own result).",
            ["backend", "operation", "result"],
            registry=r,
        )
        self.api_latency = Histogram(
            p + "upstream_api_duration_seconds",
            "Upstream API call time by operation.",
            ["backend", "operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Every upstream call counts through these (bounded: backends x kinds or operations).
        self._upstream_call = functools.cache(self.upstream_calls.labels)
        self._upstream_seconds = functools.cache(self.upstream_latency.labels)
        self._api_call = functools.cache(self.api_calls.labels)
        self._api_seconds = functools.cache(self.api_latency.labels)
        self.denied_peers = Counter(
            p + "denied_peers", "Connections refused because the peer is not allowed.", registry=r
        )
        self.access_denied = Counter(
            p + "access_denied",
            "Reads refused by the [[access]] rules (before the cache and the upstream), by kind.",
            ["kind"],
            registry=r,
        )
        self.team_denied = Counter(
            p + "team_denied",
            "Reads refused because the peer is not bound to the team it names, by kind.",
            ["kind"],
            registry=r,
        )
        self.auth_attempts = Counter(
            p + "auth_attempts",
            "Backend logins and renewals by result.",
            ["backend", "result"],
            registry=r,
        )
        self.authenticated = Gauge(
            p + "authenticated",
            "1 while the backend holds valid credentials.",
            ["backend"],
            registry=r,
        )
        self.token_ttl = Gauge(
            p + "auth_token_ttl_seconds",
            "Seconds until the backend's current token expires.",
            ["backend"],
            registry=r,
        )
        self.backend_ready = Gauge(
            p + "backend_ready",
            "1 while the backend is started and healthy.",
            ["backend"],
            registry=r,
        )
        self.reloads = Counter(
            p + "config_reloads",
            "Configuration reloads (SIGHUP) by result.",
            ["result"],
            registry=r,
        )
        self.shared_results = Counter(
            p + "shared_cache_results",
            "Shared-cache reads by result (hit, miss, unreadable: other keys or another name's; "
            "refused: older than a copy seen or an invalidation, e.g. put back, or sealed ahead of "
            "this node's clock).",
            ["result"],
            registry=r,
        )
        self.shared_errors = Counter(
            p + "shared_cache_errors",
            "Shared-cache store calls that failed or timed out, by operation (lease_planted, "
            "lock_planted: a lease or lock found planted without a sane expiry, taken back).",
            ["operation"],
            registry=r,
        )
        self.shared_lock_waits = Counter(
            p + "shared_cache_lock_waits",
            "Waits on another node's refresh lock, by outcome (value, released, timeout).",
            ["outcome"],
            registry=r,
        )
        self.shared_avoided = Counter(
            p + "shared_cache_upstream_avoided",
            "Upstream fetches the shared cache answered instead: lookups' misses and the "
            "agent's own refreshes, one each (upstream_api_calls_avoided counts lookups only).",
            registry=r,
        )
        self.shared_invalidations = Counter(
            p + "shared_cache_invalidations_received",
            "Invalidations other nodes published that dropped entries here.",
            registry=r,
        )
        self.shared_messages_refused = Counter(
            p + "shared_cache_messages_refused",
            "Messages on the invalidation channel this node could not open: sealed without the "
            "fleet's keys, replayed, or sent by a node whose clock is far from this one's.",
            registry=r,
        )
        self.shared_available = Gauge(
            p + "shared_cache_available",
            "1 while the shared cache is in use (0: its breaker is open, lookups skip it).",
            registry=r,
        )
        self.api_calls_avoided = Counter(
            p + "upstream_api_calls_avoided",
            "Upstream API calls lookups did not need (answered by the cache, the shared cache or "
            "another lookup's call), by the backend that would have been asked.",
            ["backend"],
            registry=r,
        )
        self._avoided = functools.cache(self.api_calls_avoided.labels)
        self.api_cost = Gauge(
            p + "upstream_api_cost_dollars",
            "USD the upstream API calls since start cost (calls=made) or would have cost "
            "(calls=avoided), at the [pricing] table's per-call prices.",
            ["backend", "calls"],
            registry=r,
        )
        self.start_time = Gauge(
            p + "start_time_seconds", "When the agent started, in Unix time.", registry=r
        )
        self.start_time.set(time.time())
        self.feed_received = Counter(
            p + "feed_events_received",
            "Change-feed messages received, by feed (the backend's name).",
            ["feed"],
            registry=r,
        )
        self.feed_events = Counter(
            p + "feed_events",
            "Change-feed events by feed and result (applied; ignored: a name the backend does "
            "not serve; foreign: about another account's, region's, project's or vault's secret; "
            "duplicate: the version held already; malformed: unparseable, removed).",
            ["feed", "result"],
            registry=r,
        )
        self.feed_refetches = Counter(
            p + "feed_refetches",
            "Background refetches a feed started, by trigger (event; gap: revalidation after "
            "the feed was down) and result (fetched, unchanged, gone, error, limited).",
            ["feed", "trigger", "result"],
            registry=r,
        )
        self.feed_lag = Histogram(
            p + "feed_lag_seconds",
            "From a change event's own time to the node serving the new value.",
            ["feed"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.feed_up = Gauge(
            p + "feed_up",
            "1 while the feed's last receive succeeded (0: failing; lookups go on with TTLs).",
            ["feed"],
            registry=r,
        )
        self.feed_lease = Gauge(
            p + "feed_lease_held",
            "1 while this node consumes the feed for the fleet (holds its lease in the store).",
            ["feed"],
            registry=r,
        )
        self.feed_last_receive = Gauge(
            p + "feed_last_receive_timestamp_seconds",
            "Unix time of the feed's last successful receive (a silent feed stops moving it).",
            ["feed"],
            registry=r,
        )
        self.build_info = Gauge(
            p + "build_info", "Agent version.", ["version", "python"], registry=r
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.version = __version__
        # Which code answers cached reads (``server.hit``): "compiled", or "reference" where
        # the extension was not built or is turned off. For ``status``.
        self.read_path = "reference"

    def track_cache_size(self, size: Callable[[], int]) -> None:
        self.cache_entries.set_function(lambda: float(size()))

    def answered(self, kind: str, status: int, seconds: float) -> None:
        """One API request answered: ``requests`` and ``request_duration_seconds``."""
        pending, child = self._tally.pending, self._request_count(kind, str(status))
        pending[child] = pending.get(child, 0) + 1  # Tally.add, inlined: every request
        self.request_latency.observe(kind, seconds)

    @property
    def tally(self) -> Tally:
        """Where every request's counts wait for the next scrape (the compiled read adds there)."""
        return self._tally

    def read_counters(self, kind: str) -> tuple[Incrementable, ...]:
        """A kind's children a cached read counts with: its requests answered 200 and 404,
        and its cache results ``hit`` and ``negative`` (for ``server.hit``'s compiled read)."""
        return (
            self._request_count(kind, "200"),
            self._request_count(kind, "404"),
            self._cache_result(kind, "hit"),
            self._cache_result(kind, "negative"),
        )

    def avoided_counter(self, backend: str) -> Incrementable:
        """The child ``avoided`` counts ``backend``'s spared calls with."""
        return self._avoided(backend)

    def looked_up(self, kind: str, result: str) -> None:
        """One lookup's cache result: ``cache_results``."""
        pending, child = self._tally.pending, self._cache_result(kind, result)
        pending[child] = pending.get(child, 0) + 1  # Tally.add, inlined: every lookup

    def fetched(self, backend: str, kind: str, result: str, seconds: float) -> None:
        """One backend fetch: ``upstream_requests`` and ``upstream_duration_seconds``."""
        pending, child = self._tally.pending, self._upstream_call(backend, kind, result)
        pending[child] = pending.get(child, 0) + 1
        self._upstream_seconds(backend).observe(seconds)

    def called(self, backend: str, operation: str, result: str, seconds: float) -> None:
        """One upstream API call: ``upstream_api_calls`` and ``upstream_api_duration_seconds``."""
        pending, child = self._tally.pending, self._api_call(backend, operation, result)
        pending[child] = pending.get(child, 0) + 1
        self._api_seconds(backend, operation).observe(seconds)

    def called_again(self, backend: str, operation: str, attempts: int) -> None:
        """Attempts the SDK retried within one call: ``upstream_api_calls{result="retried"}``."""
        self._api_call(backend, operation, "retried").inc(attempts)

    def served(self, kind: str, result: str, backend: str) -> None:
        """``looked_up`` and ``avoided`` together: a cached value from ``backend`` (every hit)."""
        pending, child = self._tally.pending, self._cache_result(kind, result)
        pending[child] = pending.get(child, 0) + 1
        spared = self._avoided(backend)
        pending[spared] = pending.get(spared, 0) + 1

    def avoided(self, backend: str) -> None:
        """One upstream call a lookup did not need to make to ``backend`` (on every hit)."""
        pending, child = self._tally.pending, self._avoided(backend)
        pending[child] = pending.get(child, 0) + 1  # Tally.add, inlined

    def calls_made(self, backend: str) -> float:
        """Upstream API calls made to ``backend``'s manager since start, whatever their result,
        ``UNPRICED`` operations aside."""
        return self.totals(self.api_calls, "backend", skip=("operation", UNPRICED)).get(
            backend, 0.0
        )

    def calls_avoided(self, backend: str) -> float:
        return self.totals(self.api_calls_avoided, "backend").get(backend, 0.0)

    def totals(
        self, counter: Counter, label: str, skip: tuple[str, frozenset[str]] | None = None
    ) -> dict[str, float]:
        """A counter's counts since start, summed by one of its labels (``skip``: leaving out
        the samples with one of that label's values)."""
        self._tally.fold()
        sums: dict[str, float] = {}
        for metric in counter.collect():
            for sample in metric.samples:
                if skip is not None and sample.labels.get(skip[0]) in skip[1]:
                    continue
                if sample.name.endswith("_total"):
                    key = sample.labels.get(label, "")
                    sums[key] = sums.get(key, 0.0) + sample.value
        return sums

    def price(self, backend: str, per_call: float) -> None:
        """Export what ``backend``'s calls made and avoided cost at ``per_call`` USD."""
        for calls, count in (("made", self.calls_made), ("avoided", self.calls_avoided)):
            self.api_cost.labels(backend, calls).set_function(
                functools.partial(_times, count, backend, per_call)
            )

    def sample(self, name: str, **labels: str) -> float | None:
        """One exported sample's value (None: not exported), as ``/metrics`` shows it."""
        value: float | None = self.registry.get_sample_value(name, labels)
        return value

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _times(count: Callable[[str], float], backend: str, per_call: float) -> float:
    return count(backend) * per_call
