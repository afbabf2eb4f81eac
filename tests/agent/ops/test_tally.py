"""Counts kept aside on the read path reach Prometheus as if counted there."""

from __future__ import annotations

import random
import weakref

import pytest
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


class Kept:
    """Counts kept elsewhere (as the compiled read path keeps them), handed over on ``drain``."""

    def __init__(self, tally: Tally, child: Counter, histogram: LatencyHistogram) -> None:
        self.tally, self.child, self.histogram = tally, child, histogram
        self.count, self.drains = 0, 0

    def drain(self) -> None:
        self.drains += 1
        if self.count:
            self.tally.pending[self.child] = self.tally.pending.get(self.child, 0) + self.count
            buckets = [0] * (len(BUCKETS) + 1)
            buckets[1] = self.count  # each observed at 0.001
            self.histogram.merge("variable", buckets, 0.001 * self.count)
            self.count = 0


def test_an_attached_source_is_gathered_at_every_read_while_it_lives() -> None:
    registry = CollectorRegistry()
    tally = Tally(registry)
    counter = Counter("hits", "Doc.", ["kind"], registry=registry)
    histogram = LatencyHistogram("x_seconds", "Doc.", "kind", BUCKETS, registry)
    kept = Kept(tally, counter.labels("variable"), histogram)
    tally.attach(kept)
    kept.count = 3
    text = generate_latest(registry).decode()
    assert 'hits_total{kind="variable"} 3.0' in text
    assert 'x_seconds_bucket{kind="variable",le="0.001"} 3.0' in text
    assert 'x_seconds_sum{kind="variable"} 0.003' in text
    kept.count = 2
    tally.gather()  # into pending, not yet the counter
    assert tally.pending == {counter.labels("variable"): 2}
    assert registry.get_sample_value("hits_total", {"kind": "variable"}) == 5
    gone = weakref.ref(kept)
    del kept  # attached weakly: the Tally does not keep a source alive
    assert gone() is None
    tally.fold()
    assert registry.get_sample_value("hits_total", {"kind": "variable"}) == 5


def test_merged_observations_must_fit_the_buckets() -> None:
    histogram = LatencyHistogram("x_seconds", "Doc.", "kind", BUCKETS, CollectorRegistry())
    with pytest.raises(ValueError, match="bucket counts"):
        histogram.merge("variable", [1, 2], 0.5)
