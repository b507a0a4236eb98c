"""Admission control under overload: when the reactor falls behind, a new WebSocket
upgrade gets a fast 503 with Retry-After instead of joining the queue.

The lag is measured, not guessed: a timer due every 50 ms records how late it fires
(a reactor busy with a burst of work runs its timers late by about as long as one
turn of its loop takes). Between ticks, a timer already overdue counts as lag too,
so the first requests read after a stall (a reconnect storm, a long GC pause, a
stopped process) are judged by it. Only upgrades are shed: they are what a storm
brings and what holds state afterwards; REST, /turn, /health and established peers
are served as usual. /ready is unaffected (docs/performance.md, "Admission control").
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge
from twisted.application.service import Service

INTERVAL = 0.05  # seconds between lag measurements

LOOP_LAG = Gauge("sscontrol_loop_lag_seconds", "How late the reactor ran a timer due every 50 ms, last "
                 "measured: how far behind the event loop is.")
SHED = Counter("sscontrol_connections_shed_total", "WebSocket upgrades refused with 503 and Retry-After "
               "because the node is overloaded, by reason (loop_lag: the reactor ran more than "
               "overload_lag behind).", ["reason"])
SHED.labels("loop_lag")


class LoopLag(Service):
    """The reactor's lag, measured every ``INTERVAL``; ``shed()`` says whether a new
    upgrade is refused now (and counts it)."""

    def __init__(self, clock, node):
        self._clock = clock
        self._node = node
        self._call = None
        self._due = None
        self.lag = 0.0  # seconds, last measured
        self._shed_since_warning = 0
        self._warned_at = float("-inf")

    def startService(self) -> None:
        super().startService()
        self._schedule(self._clock.seconds())

    def stopService(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self._due = None
        return super().stopService()

    def _schedule(self, now: float) -> None:
        self._due = now + INTERVAL
        self._call = self._clock.callLater(INTERVAL, self._tick)

    def _tick(self) -> None:
        now = self._clock.seconds()
        self.lag = max(0.0, now - self._due)
        LOOP_LAG.set(self.lag)
        self._schedule(now)

    def current(self) -> float:
        """The larger of the last measured lag and how overdue the next tick is."""
        if self._due is None:
            return 0.0
        return max(self.lag, self._clock.seconds() - self._due)

    @property
    def retry_after(self) -> int:
        return self._node.settings.overload_retry_after

    def shed(self) -> bool:
        threshold = self._node.settings.overload_lag
        if not threshold or self.current() <= threshold:
            return False
        SHED.labels("loop_lag").inc()
        # One line a second at most: a storm must not become a flood of lines.
        self._shed_since_warning += 1
        now = self._clock.seconds()
        if now - self._warned_at >= 1.0:
            self._node.events.emit("warn", "overload.shed", lag_ms=round(self.current() * 1000),
                                   threshold_ms=round(threshold * 1000), refused=self._shed_since_warning)
            self._shed_since_warning, self._warned_at = 0, now
        return True
