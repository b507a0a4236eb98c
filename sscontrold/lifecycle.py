"""Reload (SIGHUP) and graceful drain (on stop, e.g. SIGTERM)."""

from __future__ import annotations

import random
import signal
from typing import TYPE_CHECKING, Callable

from prometheus_client import Gauge
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred

from .config import RESTART_ONLY as _RESTART_ONLY_FIELDS, ConfigError, Settings
from .logging import Events

if TYPE_CHECKING:
    from .admin import Readiness
    from .node import SignalingNode

events = Events()

DRAINING = Gauge("sscontrol_draining", "1 once the node drains (it is stopping: refuses new clients, "
                 "sends its clients elsewhere), else 0.")

CLOSE_SERVICE_RESTART = 1012


# Settings that take effect only at start (config.Field.restart): a reload that changes
# one says so. TLS on or off too: the listener's TLS wrapper is chosen at start.
RESTART_ONLY = tuple(sorted(_RESTART_ONLY_FIELDS)) + ("tls_enabled",)


class Reloader(Service):
    """Re-reads the settings (file, secrets, certificate) on SIGHUP and hands them
    to every part that takes new settings. A bad new configuration keeps the
    running one; open connections are never closed."""

    def __init__(self, load: Callable[[], Settings], apply: list[Callable[[Settings], object]], notifier, clock,
                 started_with: Settings):
        self._load = load
        self._apply = apply
        self._notifier = notifier
        self._clock = clock
        self._started_with = started_with  # what the restart-only settings still are

    def startService(self) -> None:
        Service.startService(self)
        # A signal handler runs between two bytecodes: hand the work to the reactor.
        self._previous = signal.signal(signal.SIGHUP,
                                       lambda signum, frame: self._clock.callFromThread(self.reload))

    def stopService(self) -> None:
        Service.stopService(self)
        signal.signal(signal.SIGHUP, self._previous or signal.SIG_DFL)

    def reload(self) -> bool:
        self._notifier.reloading()
        try:
            settings = self._load()
        except ConfigError as e:
            events.emit("error", "reload.failed", error=str(e), action="kept the running configuration")
            self._notifier.ready("reload failed, running configuration kept")
            return False
        for warning in settings.warnings:  # e.g. a key file made world-readable since
            events.emit("warn", warning.event, message=warning.message)
        for apply in self._apply:
            apply(settings)
        # Against the start, not the last reload: each reload says it until the restart.
        for key in RESTART_ONLY:
            if getattr(self._started_with, key) != getattr(settings, key):
                events.emit("warn", "reload.restart_needed", setting=key,
                            message=f"{key} changed: it takes effect on restart; the running value is kept")
        events.emit("info", "reload.done", config_file=settings.config_file)
        self._notifier.ready("reloaded")
        return True


class DrainingService(MultiService):
    """A MultiService whose stop first drains: the node refuses new connections and
    reports not ready, every client is told to reconnect elsewhere (close 1012 with
    a jittered reconnect hint), and the listeners close once the clients are gone
    or the deadline has passed."""

    # Set by tap.makeService: what the in-memory tests (tests/memory.py) inspect of the tree.
    node: SignalingNode
    readiness: Readiness
    reloader: Reloader

    def __init__(self, clock):
        super().__init__()
        self._clock = clock
        self.drain_steps: list[Callable[[], object]] = []

    def stopService(self):
        # A second SIGTERM/SIGINT while draining must not stop the reactor twice.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: self._clock.callFromThread(
                events.emit, "info", "drain.signal_ignored", signal=signal.Signals(signum).name))
        d = DeferredList([maybeDeferred(step) for step in self.drain_steps], consumeErrors=True)
        d.addCallback(lambda _: MultiService.stopService(self))
        return d


# The longest reconnect hint, whatever the connection count and rate.
MAX_RECONNECT_SPREAD = 60.0


def reconnect_spread(connections: int, rate: float) -> float:
    """Seconds over which ``connections`` clients should come back to arrive at ``rate``
    per second: a small node's clients return at once, a big one's are paced."""
    return min(MAX_RECONNECT_SPREAD, connections / rate) if rate > 0 else 0.0


def drain(node, factory, notifier, clock, deadline: float, reconnect_rate: float) -> Deferred:
    """Tell every connected client to go, and fire when all are gone or at ``deadline``."""
    node.draining = True
    DRAINING.set(1)
    notifier.stopping(f"draining {len(factory.open_connections)} connections")
    spread = reconnect_spread(len(factory.open_connections), reconnect_rate)
    events.emit("info", "drain.start", connections=len(factory.open_connections), deadline=deadline,
                reconnect_spread=round(spread, 3))
    for proto in list(factory.open_connections):
        hint = int(random.uniform(0, spread) * 1000)  # nosec B311  # spreads reconnects: no secret
        reason = f"server restarting; reconnect_in_ms={hint}"
        if proto.client is not None:
            proto.client.release(CLOSE_SERVICE_RESTART, reason)
        else:
            proto.close(CLOSE_SERVICE_RESTART, reason)
    done: Deferred[None] = Deferred()
    ends_at = clock.seconds() + deadline

    def check() -> None:
        # With a cluster, held peers can still be taken over by the node they resume on.
        if not factory.open_connections and not (node.clustered and (node.hub.held_count or node.hub.forwarding)):
            events.emit("info", "drain.done", dropped=0)
            done.callback(None)
        elif clock.seconds() >= ends_at:
            left = list(factory.open_connections)
            events.emit("warn", "drain.deadline", dropped=len(left))
            for proto in left:
                proto.dropConnection(abort=True)
            done.callback(None)
        else:
            clock.callLater(0.05, check)

    check()
    return done
