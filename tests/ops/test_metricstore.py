"""The dict-backed metric families, read back through prometheus-client's exposition."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatekeep.metricstore import CounterStore, GaugeStore, HistogramStore, StoreCollector


def scrape(*stores: CounterStore | GaugeStore | HistogramStore) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    registry.register(StoreCollector(list(stores)))
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))] \
                = sample.value
    return samples


def test_histogram_buckets_are_inclusive_and_cumulative() -> None:
    histogram = HistogramStore("t_seconds", "test", ["l"], [0.1, 1.0])
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(("a",), value)
    got = scrape(histogram)
    assert got["t_seconds_bucket", "l=a,le=0.1"] == 2   # 0.05 and exactly 0.1
    assert got["t_seconds_bucket", "l=a,le=1.0"] == 4
    assert got["t_seconds_bucket", "l=a,le=+Inf"] == 5
    assert got["t_seconds_count", "l=a"] == 5
    assert abs(got["t_seconds_sum", "l=a"] - 8.65) < 1e-9


def test_counters_and_gauges() -> None:
    counter = CounterStore("t_things", "test", ["kind"])
    counter.inc(("x",))
    counter.inc(("x",), 2.5)
    counter.inc(("y",))
    gauge = GaugeStore("t_open", "test", [])
    gauge.inc(())
    gauge.inc((), -1)
    gauge.inc((), 5)
    got = scrape(counter, gauge)
    assert got["t_things_total", "kind=x"] == 3.5
    assert got["t_things_total", "kind=y"] == 1
    assert got["t_open", ""] == 5


def test_collector_runs_its_hook_before_each_scrape() -> None:
    counter = CounterStore("t_hooked", "test", [])
    registry = CollectorRegistry()
    registry.register(StoreCollector([counter], before=lambda: counter.inc(())))
    assert registry.get_sample_value("t_hooked_total") == 1
    assert registry.get_sample_value("t_hooked_total") == 2
