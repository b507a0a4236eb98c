"""The daemon's Prometheus metrics: the domain's, recorded through
``PrometheusRecorder`` (the domain itself imports no prometheus_client), and the
classes for the per-message path.

prometheus_client's counters and histograms take a lock and make several calls
on every update: about a microsecond, which at tens of thousands of messages a
second is a tenth of the daemon's time. These keep plain numbers that the
reactor thread alone updates, and hand them to prometheus_client at scrape time
(as a custom collector), with the same names, types and exposition.
Everything off the per-message path keeps using prometheus_client directly.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections import defaultdict
from typing import Any, Callable

from prometheus_client import Counter, Gauge
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily


class MessageCounter:
    """A counter with one label: ``counter.counts[value] += 1``."""

    def __init__(self, name: str, documentation: str, label: str, registry=REGISTRY):
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.label = label
        self.counts: defaultdict[str, int] = defaultdict(int)
        if registry is not None:
            registry.register(self)

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation, labels=[self.label])]

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for label_value, count in list(self.counts.items()):
            family.add_metric([label_value], count)
        yield family


class LatencyHistogram:
    """A histogram without labels that takes ``n`` observations of one value at once."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry=REGISTRY):
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        if registry is not None:
            registry.register(self)

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self):
        cumulative, buckets = 0, []
        for bound, count in zip(self.bounds + (float("inf"),), list(self.counts), strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, sum_value=self.sum)
        yield family


class LiveGauge:
    """A gauge read at scrape time from live objects that already hold its value (a
    node's ``ConnectionCounter``, a ``RedisLink``): nothing to update as they change.
    ``value`` turns the sources still alive into the sample, or None for none."""

    def __init__(self, name: str, documentation: str, value: Callable[[list[Any]], float | None],
                 registry=REGISTRY):
        self.name = name
        self.documentation = documentation
        self._value = value
        self._sources: weakref.WeakSet = weakref.WeakSet()
        if registry is not None:
            registry.register(self)

    def add(self, source: Any) -> None:
        """Let ``source`` count for as long as it lives."""
        self._sources.add(source)

    def describe(self):
        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self):
        value = self._value(list(self._sources))
        if value is not None:
            yield GaugeMetricFamily(self.name, self.documentation, value=value)


def total_of(counters: list[Any]) -> int:
    """The value of a LiveGauge of ConnectionCounters: their totals, summed over the nodes of the process."""
    return sum(counter.total for counter in counters)


# The domain's metrics (sscontrold.domain.metrics.Recorder says when each moves).
MESSAGES = MessageCounter("sscontrol_messages_total", "WebSocket messages received, by type "
                          "(invalid, unknown and rate_limited for the ones refused before dispatch).", "type")
ERRORS = Counter("sscontrol_errors_total", "Errors answered to clients and internal errors, by reason.", ["reason"])
AUTH = Counter("sscontrol_auth_total", "Authentication attempts by result and reason.", ["result", "reason"])
ROOMS = Gauge("sscontrol_rooms", "Rooms with at least one member on this node.")
RESUMES = Counter("sscontrol_resumes_total", "Resume attempts by result.", ["result"])
RELAY_FAILURES = Counter("sscontrol_cluster_relay_failures_total",
                         "Messages to a peer on another node not delivered, each reported to its sender, "
                         "by code.", ["code"])
SESSIONS = Gauge("sscontrol_sessions", "REST pairing sessions held (live, not expired).")


class PrometheusRecorder:
    """The domain's ``Recorder``, onto the metrics above (all values are from fixed
    sets of literals in the code: low cardinality)."""

    def __init__(self) -> None:
        self.messages = MESSAGES.counts

    def error(self, reason: str) -> None:
        ERRORS.labels(reason).inc()

    def auth(self, result: str, reason: str) -> None:
        AUTH.labels(result, reason).inc()

    def resume(self, result: str) -> None:
        RESUMES.labels(result).inc()

    def rooms(self, delta: int) -> None:
        ROOMS.inc(delta)

    def relay_failure(self, code: str) -> None:
        RELAY_FAILURES.labels(code).inc()

    def sessions(self, held: int) -> None:
        SESSIONS.set(held)


PROMETHEUS = PrometheusRecorder()
