"""Health, readiness, liveness and Prometheus metrics (the loopback admin listener)."""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import REGISTRY, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web import http
from twisted.web.server import Request

from . import __version__, cgroup  # noqa: F401 (cgroup: registers the cgroup memory collector)
from .web import Health, JSONResource, JSONRoot, QuietSite, json_response

BUILD_INFO = Info("sscontrol_build", "Version of the running daemon.")
BUILD_INFO.info({"version": __version__})


def passing(result: str) -> bool:
    """A check passes when "ok", or when it reports a degraded mode ("degraded: ..."):
    the node serves, with less (see /ready's "degraded")."""
    return result == "ok" or result.startswith("degraded: ")


class Readiness:
    """Named checks; the daemon is ready when every one passes.

    A check returns None when it passes, a short reason why it does not, or
    "degraded: <what still works>" when the node serves in a degraded mode.
    """

    def __init__(self):
        self._checks: dict[str, Callable[[], str | None]] = {}

    def add(self, name: str, check: Callable[[], str | None]) -> None:
        self._checks[name] = check

    def results(self) -> dict[str, str]:
        return {name: (check() or "ok") for name, check in self._checks.items()}

    def failing(self) -> dict[str, str]:
        return {name: result for name, result in self.results().items() if not passing(result)}

    @property
    def ready(self) -> bool:
        return not self.failing()


class ReadinessCollector:
    """sscontrol_ready (1 when /ready would answer 200) and sscontrol_ready_check{check}
    (1 passing, 0 failing), computed from the checks at each scrape: exactly what
    /ready answers at that moment, whoever polls it or not."""

    READY = ("sscontrol_ready", "1 when the node is ready (/ready answers 200), else 0.")
    CHECK = ("sscontrol_ready_check", "Each readiness check behind /ready: 1 passing, 0 failing.")

    def __init__(self, readiness: Readiness):
        self._readiness = readiness

    def describe(self):
        return [GaugeMetricFamily(*self.READY), GaugeMetricFamily(*self.CHECK, labels=["check"])]

    def collect(self):
        results = self._readiness.results()
        checks = GaugeMetricFamily(*self.CHECK, labels=["check"])
        for name, result in sorted(results.items()):
            checks.add_metric([name], 1 if passing(result) else 0)
        yield GaugeMetricFamily(*self.READY, value=1 if all(passing(r) for r in results.values()) else 0)
        yield checks


class Ready(JSONResource):
    def __init__(self, readiness: Readiness):
        super().__init__()
        self._readiness = readiness

    def render_GET(self, request: Request) -> bytes:
        checks = self._readiness.results()
        failing = sorted(name for name, result in checks.items() if not passing(result))
        if failing:
            return json_response(request, http.SERVICE_UNAVAILABLE,
                                 {"status": "not ready", "failing": failing, "checks": checks})
        degraded = sorted(name for name, result in checks.items() if result != "ok")
        if degraded:
            return json_response(request, http.OK, {"status": "degraded", "degraded": degraded, "checks": checks})
        return json_response(request, http.OK, {"status": "ready", "checks": checks})


class Live(JSONResource):
    """Answering at all proves the reactor turns."""

    def render_GET(self, request: Request) -> bytes:
        return json_response(request, http.OK, {"status": "alive"})


class Metrics(JSONResource):
    """The default registry, plus the collectors of this admin site (its readiness):
    those belong to the service this site serves, not to the process."""

    def __init__(self, *collectors):
        super().__init__()
        self._collectors = collectors

    def collect(self):
        yield from REGISTRY.collect()
        for collector in self._collectors:
            yield from collector.collect()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self)


class HealthSummary:
    """The /health body: status, version, uptime, counts and the readiness checks."""

    def __init__(self, readiness: Readiness, counts: Callable[[], dict], clock: Callable[[], float] = time.time):
        self._readiness = readiness
        self._counts = counts
        self._clock = clock
        self._started = clock()

    def __call__(self) -> dict:
        checks = self._readiness.results()
        ok = all(result == "ok" for result in checks.values())
        return {"status": "ok" if ok else "degraded", "version": __version__,
                "uptime": round(self._clock() - self._started, 3), **self._counts(), "checks": checks}


def admin_site(readiness: Readiness, health: HealthSummary, timeout: float, max_body_bytes: int,
               extra=None, reactor=None) -> QuietSite:
    root = JSONRoot()
    root.putChild(b"health", Health(health))
    root.putChild(b"ready", Ready(readiness))
    root.putChild(b"live", Live())
    root.putChild(b"metrics", Metrics(ReadinessCollector(readiness)))
    for name, resource in (extra or {}).items():  # the operators' actions (admin_actions.py)
        root.putChild(name, resource)
    return QuietSite(root, timeout, max_body_bytes, reactor=reactor)
