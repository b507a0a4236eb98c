"""The signaling node: the domain objects one daemon process shares between its
connections, built from the settings and re-configured in place on reload.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .domain.admin import Administration
from .domain.auth import Authenticator, MemoryNonceStore
from .domain.client import Client
from .domain.limits import ConnectionCounter, FailureGuard
from .domain.metrics import Recorder
from .domain.cluster import ClusterHub
from .domain.rooms import Hub
from .metrics import PROMETHEUS
from .policies import auth_policy, hold_limits, message_limits


log = Logger(namespace="sscontrold.node")


def spawn(coroutine) -> None:
    """Run a domain coroutine on the reactor; a bug in it is logged, never raised."""
    Deferred.fromCoroutine(coroutine).addErrback(
        lambda failure: log.failure("internal error in an asynchronous step", failure))


class Waiter:
    """Something a domain coroutine awaits until another event says how it went."""

    def __init__(self, clock, timeout: float):
        self._d: Deferred[Any] = Deferred()
        self._d.addTimeout(timeout, clock, onTimeoutCancel=lambda *_: _raise(TimeoutError()))

    def wait(self) -> Deferred:
        return self._d

    def succeed(self, value) -> None:
        if not self._d.called:
            self._d.callback(value)

    def fail(self, exception: Exception) -> None:
        if not self._d.called:
            self._d.errback(exception)


def _raise(exception: Exception):
    raise exception


class SignalingNode:
    def __init__(self, settings, clock, events, nonces=None, cluster=None, recorder: Recorder = PROMETHEUS):
        self.clock = clock
        self.events = events
        self.settings = settings
        self.recorder = recorder  # where the domain's metrics go
        cluster_hub: ClusterHub | None = None
        self.hub: Hub
        if cluster is None:
            self.hub = Hub(settings.max_peers_per_room, clock, hold_limits(settings), recorder)
        else:  # rooms shared with other nodes through the cluster store
            self.hub = cluster_hub = ClusterHub(settings.max_peers_per_room, clock, hold_limits(settings), cluster,
                                                spawn, events, lambda timeout: Waiter(clock, timeout), recorder)
            cluster.hub = self.hub
        self.nonces = nonces or MemoryNonceStore(clock.seconds, settings.nonce_store_max)
        self.authenticator = Authenticator(auth_policy(settings), self.nonces, clock.seconds)
        self.connections = ConnectionCounter(settings.max_connections, settings.max_connections_per_ip)
        # Connections of the public port before their upgrade, counted from accept by TCP address.
        self.http_connections = ConnectionCounter(settings.max_http_connections,
                                                  settings.max_http_connections_per_ip)
        self.limits = message_limits(settings)
        self.trusted_proxies = frozenset(settings.trusted_proxies)
        self.extensions: dict[str, Any] = {}
        self.draining = False
        self.failures = FailureGuard(clock.seconds, settings.auth_failure_limit, settings.auth_failure_window,
                                     settings.auth_failure_log_per_minute)
        self.admin = Administration(self.hub, events, cluster.node_id if cluster is not None else "local",
                                    cluster, lambda timeout: Waiter(clock, timeout))
        if cluster_hub is not None:  # there is one exactly when there is a cluster
            cluster_hub.admin = self.admin

    def new_client(self, connection, address: str) -> Client:
        return Client(connection, self.hub, self.authenticator, self.limits, self.clock,
                      self.events, address, self.extensions, spawn, self.failures, self.recorder)

    def apply(self, settings) -> None:
        """Take new settings: new connections (and new messages) see them; none is closed."""
        self.settings = settings
        self.hub.max_peers_per_room = settings.max_peers_per_room
        self.hub.hold = hold_limits(settings)
        self.authenticator.policy = auth_policy(settings)
        self.connections.max_total = settings.max_connections
        self.connections.max_per_address = settings.max_connections_per_ip
        self.http_connections.max_total = settings.max_http_connections
        self.http_connections.max_per_address = settings.max_http_connections_per_ip
        self.limits = message_limits(settings)
        self.trusted_proxies = frozenset(settings.trusted_proxies)
        self.failures.configure(settings.auth_failure_limit, settings.auth_failure_window,
                                settings.auth_failure_log_per_minute)

    @property
    def clustered(self) -> bool:
        return isinstance(self.hub, ClusterHub)

    def status_line(self) -> str:
        """For systemd's STATUS=."""
        state = "draining" if self.draining else "serving"
        return f"{state}: {self.connections.total} connections, {self.hub.room_count} rooms"

    def summary(self) -> dict:
        return {"connections": self.connections.total, "rooms": self.hub.room_count,
                "held_peers": self.hub.held_count}
