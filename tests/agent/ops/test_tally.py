"""Counts kept aside on the read path reach Prometheus as if counted there."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from secrets_agent.ops.metrics import Metrics
from secrets_agent.ops.tally import LatencyHistogram, Tally

BUCKETS = (0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0, 2.5)


def test_the_latency_histogram_exposes_what_prometheus_own_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LatencyHistogram("x_seconds", "Doc.", "kind", BUCKETS, ours)
    reference = Histogram("x_seconds", "Doc.", ["kind"], buckets=BUCKETS, registry=theirs)
    rng = random.Random(7)
    values = [*BUCKETS, 0.0, 3.0, *(rng.expovariate(300) for _ in range(500))]
    for i, value in enumerate(values):
        kind = ("variable", "connection")[i % 2]
        mine.observe(kind, value)
        reference.labels(kind).observe(value)

    def lines(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return sorted(line for line in text.splitlines() if "_created" not in line)

    assert lines(ours) == lines(theirs)


def test_tallied_counts_are_folded_in_whenever_the_registry_is_read() -> None:
    registry = CollectorRegistry()
    tally = Tally(registry)
    counter = Counter("hits", "Doc.", ["kind"], registry=registry)
    for _ in range(3):
        tally.add(counter.labels("variable"))
    tally.add(counter.labels("config"))
    assert registry.get_sample_value("hits_total", {"kind": "variable"}) == 3
    tally.add(counter.labels("variable"))
    assert b'hits_total{kind="variable"} 4.0' in generate_latest(registry)
    assert registry.get_sample_value("hits_total", {"kind": "config"}) == 1


def test_metrics_answered_and_looked_up_keep_names_and_labels() -> None:
    metrics = Metrics()
    metrics.answered("variable", 200, 0.0003)
    metrics.answered("variable", 404, 0.002)
    metrics.looked_up("variable", "hit")
    text = metrics.render().decode()
    assert 'secrets_agent_requests_total{kind="variable",status="200"} 1.0' in text
    assert 'secrets_agent_requests_total{kind="variable",status="404"} 1.0' in text
    assert 'secrets_agent_request_duration_seconds_bucket{kind="variable",le="0.0005"} 1.0' in text
    assert 'secrets_agent_request_duration_seconds_count{kind="variable"} 2.0' in text
    assert 'secrets_agent_cache_results_total{kind="variable",result="hit"} 1.0' in text
    assert "# TYPE secrets_agent_request_duration_seconds histogram" in text
