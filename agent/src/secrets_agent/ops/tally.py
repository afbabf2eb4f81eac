"""What every request counts, kept as plain numbers and folded into Prometheus on each scrape.

A Prometheus child's ``inc()`` takes a lock and runs four Python frames; a histogram's
``observe()`` walks its buckets in Python. On the path every cached lookup takes, that was a
tenth of the agent's CPU, so the counts go to dicts here and reach the same metrics, with the
same names and meaning, whenever they are read. The compiled read path keeps its counts in C
(``server/_hit.c``) and is attached here: its counts are gathered first at every read.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Source(Protocol):
    """Counts kept elsewhere: ``drain`` adds them to the Tally's ``pending`` (and histograms)."""

    def drain(self) -> None: ...


class Tally:
    """Pending increments per counter child, handed to the children whenever the registry is
    read: registered first, its ``collect`` runs before any metric's is."""

    __slots__ = ("_sources", "pending")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pending: dict[Incrementable, int] = {}
        self._sources: weakref.WeakSet[Source] = weakref.WeakSet()
        registry.register(self)

    def attach(self, source: Source) -> None:
        """Drain ``source`` at every read, for as long as it lives (it drains itself as it goes)."""
        self._sources.add(source)

    def gather(self) -> None:
        """The attached sources' counts into ``pending`` and their histograms."""
        for source in list(self._sources):
            source.drain()

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        self.fold()
        return []

    def add(self, child: Incrementable) -> None:
        self.pending[child] = self.pending.get(child, 0) + 1

    def fold(self) -> None:
        self.gather()
        pending, self.pending = self.pending, {}
        for child, count in pending.items():
            child.inc(count)


class LatencyHistogram:
    """A Prometheus histogram with one label, observed with a C bisect and two list updates."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name, self._doc, self._label = name, documentation, label
        self._bounds = tuple(sorted(buckets))
        self._les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        registry.register(self)  # a Collector by its collect() and describe()

    def observe(self, value: str, seconds: float) -> None:
        counts = self._counts.get(value)
        if counts is None:
            counts = self._counts[value] = [0] * (len(self._bounds) + 1)
            self._sums[value] = 0.0
        counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self._sums[value] += seconds

    def merge(self, value: str, buckets: Sequence[int], seconds: float) -> None:
        """Observations counted elsewhere: how many fell in each bucket, and their sum."""
        counts = self._counts.get(value)
        if counts is None:
            counts = self._counts[value] = [0] * (len(self._bounds) + 1)
            self._sums[value] = 0.0
        if len(buckets) != len(counts):
            raise ValueError(f"{len(buckets)} bucket counts for {len(counts)} buckets")
        for index, count in enumerate(buckets):
            counts[index] += count
        self._sums[value] += seconds

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._doc, labels=[self._label])]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=[self._label])
        for value, counts in sorted(self._counts.items()):
            cumulative, total = [], 0
            for le, count in zip(self._les, counts, strict=True):
                total += count
                cumulative.append((le, float(total)))
            family.add_metric([value], cumulative, self._sums[value])
        yield family
