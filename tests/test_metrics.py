"""The hot-path metrics (sscontrold/metrics.py) expose exactly what prometheus_client's
own Counter, Histogram and Gauge would for the same updates: names, types, labels,
help, cumulative buckets with an inclusive `le`, count and sum."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sscontrold.domain.limits import ConnectionCounter
from sscontrold.metrics import LatencyHistogram, LiveGauge, MessageCounter, total_of


def exposition(registry) -> str:
    # the _created samples are the one intended difference: they say when a series began
    return "\n".join(line for line in generate_latest(registry).decode().splitlines() if "_created" not in line)


def test_message_counter_exposes_what_a_labelled_counter_would():
    ours, reference = CollectorRegistry(), CollectorRegistry()
    counter = MessageCounter("t_messages_total", "Messages.", "type", registry=ours)
    real = Counter("t_messages_total", "Messages.", ["type"], registry=reference)
    for kind in ("ice", "ice", "offer", "unknown"):
        counter.counts[kind] += 1
        real.labels(kind).inc()
    assert exposition(ours) == exposition(reference)
    assert 't_messages_total{type="ice"} 2.0' in exposition(ours)


def test_latency_histogram_exposes_what_a_histogram_would():
    buckets = (0.00005, 0.001, 0.01, 0.1)
    ours, reference = CollectorRegistry(), CollectorRegistry()
    histogram = LatencyHistogram("t_latency_seconds", "Latency.", buckets=buckets, registry=ours)
    real = Histogram("t_latency_seconds", "Latency.", buckets=buckets, registry=reference)
    for value, n in ((0.001, 1), (0.005, 3), (5.0, 1), (0.00005, 2)):  # on bounds, between, above all
        histogram.observe(value, n)
        for _ in range(n):
            real.observe(value)
    assert exposition(ours) == exposition(reference)
    assert 't_latency_seconds_bucket{le="0.001"} 3.0' in exposition(ours)


def test_live_gauge_exposes_what_a_gauge_would_and_follows_its_counters():
    ours, reference = CollectorRegistry(), CollectorRegistry()
    gauge = LiveGauge("t_open", "Open connections.", total_of, registry=ours)
    real = Gauge("t_open", "Open connections.", registry=reference)
    first, second = ConnectionCounter(10, 10), ConnectionCounter(10, 10)  # two nodes in one process
    gauge.add(first)
    gauge.add(second)
    gauge.add(first)  # counted once however often it is added
    for counter, address in ((first, "a"), (first, "b"), (second, "a")):
        assert counter.try_open(address) is None
        real.inc()
    first.close("a")
    real.dec()
    assert exposition(ours) == exposition(reference)
    assert "t_open 2.0" in exposition(ours)
    del second, counter  # a node gone: its connections leave the gauge with it
    gc.collect()
    assert "t_open 1.0" in exposition(ours)


def test_live_gauge_without_a_value_exports_no_sample():
    registry = CollectorRegistry()
    LiveGauge("t_up", "Up.", lambda sources: None if not sources else 1, registry=registry)
    assert "t_up " not in exposition(registry)
