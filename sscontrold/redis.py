"""Redis, shared by several nodes (txredisapi): the link with its health, and the
stores built on it.

Redis being down never blocks the reactor: every command has a deadline, the
link is watched by a PING each second, and /ready and the metrics say when it
is down.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import txredisapi
from prometheus_client import Gauge
from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall

from .domain.auth import AuthRefused
from .logging import Events

REDIS_UP = Gauge("sscontrol_redis_up", "1 while this node reaches Redis (only with redis_url set).")

events = Events()


class RedisUnavailable(Exception):
    pass


class RedisLink(Service):
    """One lazily (re)connecting Redis connection and its health."""

    def __init__(self, url: str, password: str | None, prefix: str, timeout: float, clock):
        parts = urlsplit(url)
        self.prefix = prefix
        self.timeout = timeout
        self.clock = clock
        self.up = False
        self._address = f"{parts.hostname}:{parts.port or 6379}"
        dbid = int(parts.path.lstrip("/")) if parts.path.lstrip("/") else None
        password = password or (unquote(parts.password) if parts.password else None)
        tls = optionsForClientTLS(parts.hostname) if parts.scheme == "rediss" else False
        self.connection = txredisapi.lazyConnection(
            parts.hostname, parts.port or 6379, dbid=dbid, reconnect=True, password=password,
            username=unquote(parts.username) if parts.username else None, ssl_context_factory=tls,
            connectTimeout=timeout, replyTimeout=timeout)
        self._watch = LoopingCall(self._ping)
        self._watch.clock = clock

    def check(self) -> str | None:
        """Readiness: None while Redis answers."""
        return None if self.up else f"cannot reach Redis at {self._address}"

    def call(self, method: str, *args, **kwargs) -> Deferred:
        """Run a command with a deadline; fails with RedisUnavailable."""
        d = getattr(self.connection, method)(*args, **kwargs)
        d.addTimeout(self.timeout, self.clock)
        d.addErrback(self._unavailable)
        return d

    def _unavailable(self, failure):
        if failure.check(txredisapi.ResponseError):
            return failure  # Redis answered: a real error, not an outage
        self._set_up(False, failure.getErrorMessage())
        raise RedisUnavailable(str(failure.value))

    @inlineCallbacks
    def _ping(self):
        try:
            yield self.call("ping")
        except RedisUnavailable:
            return
        self._set_up(True)

    def _set_up(self, up: bool, why: str = "") -> None:
        if up != self.up:
            self.up = up
            REDIS_UP.set(1 if up else 0)
            if up:
                events.emit("info", "redis.up", address=self._address)
            else:
                events.emit("error", "redis.down", address=self._address, error=why[:200])

    def startService(self) -> None:
        Service.startService(self)
        REDIS_UP.set(0)
        self._watch.start(1.0, now=True)

    def stopService(self):
        Service.stopService(self)
        if self._watch.running:
            self._watch.stop()
        return self.connection.disconnect()


class RedisNonceStore:
    """Auth nonces shared by every node: SET NX with the token's remaining life, so a
    token replayed on another node is refused too. Fails closed while Redis is down."""

    def __init__(self, link: RedisLink):
        self._link = link

    def add(self, key: bytes, expires_at: float) -> Deferred:
        ttl_ms = max(1, int((expires_at - self._link.clock.seconds()) * 1000))
        d = self._link.call("set", f"{self._link.prefix}nonce:{key.hex()}", "1", expire=None, pexpire=ttl_ms,
                            only_if_not_exists=True)
        d.addCallbacks(lambda reply: reply == "OK", self._refuse)
        return d

    @staticmethod
    def _refuse(failure):
        failure.trap(RedisUnavailable)
        raise AuthRefused("cluster_unavailable", "authentication is temporarily unavailable, retry shortly")
