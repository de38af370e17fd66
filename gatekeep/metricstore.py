"""
Counters, gauges and histograms as plain dicts, exposed through prometheus-client.

prometheus-client's own metric objects take a lock on every update (they may be
updated from any thread), which costs several microseconds each; a connection
updates half a dozen. gatekeep updates and scrapes only from the reactor thread,
so the values live in dicts here and become metric families when a scrape
collects them: prometheus-client still writes the exposition format.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

__all__ = ["CounterStore", "GaugeStore", "HistogramStore", "StoreCollector"]

Labels = tuple[str, ...]


class CounterStore:
    """A counter family; ``name`` without ``_total`` (the exposition adds it)."""

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, value in self.values.items():
            family.add_metric(labels, value)
        return family


class GaugeStore:
    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.values: dict[Labels, float] = {}

    def set(self, labels: Labels, value: float) -> None:
        self.values[labels] = value

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def family(self) -> Metric:
        family = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, value in self.values.items():
            family.add_metric(labels, value)
        return family


class HistogramStore:
    """Bucket counts per label set; ``le`` buckets as Prometheus defines them (<=)."""

    def __init__(self, name: str, doc: str, labels: Sequence[str],
                 buckets: Sequence[float]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.buckets = tuple(sorted(buckets))
        # Per label set: a count per bucket (the last one is +Inf), then the sum.
        self.values: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        entry = self.values.get(labels)
        if entry is None:
            entry = self.values[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        entry[0][bisect_left(self.buckets, value)] += 1
        entry[1][0] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]
        for labels, (counts, total) in self.values.items():
            cumulative, running = [], 0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            family.add_metric(labels, cumulative, total[0])
        return family


class StoreCollector:
    """A prometheus-client collector over stores; ``before`` runs first (e.g. a flush)."""

    def __init__(self, stores: Sequence[CounterStore | GaugeStore | HistogramStore],
                 before: object = None) -> None:
        self.stores = list(stores)
        self.before = before

    def collect(self) -> Iterator[Metric]:
        if callable(self.before):
            self.before()
        for store in self.stores:
            yield store.family()

    def describe(self) -> Iterator[Metric]:
        for store in self.stores:
            yield store.family()
