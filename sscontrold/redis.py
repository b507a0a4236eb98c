"""Redis, shared by several nodes (txredisapi): the link with its health, and the
stores built on it.

Redis being down never blocks the reactor: every command has a deadline, the
link is watched by a PING each second, and /ready and the metrics say when it
is down.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
from bisect import insort
from typing import cast
from urllib.parse import unquote, urlsplit

import orjson
import txredisapi
from prometheus_client import Counter, Gauge
from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import (CancelledError, Deferred, DeferredList, TimeoutError as DeferredTimeout,
                                    inlineCallbacks, succeed)
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .domain.auth import MemoryNonceStore
from .domain.cluster import ClusterUnavailable
from .domain.compare import same_secret
from .logging import Events
from .metrics import LiveGauge
from .shortcuts import twisted_tcp
from .shortcuts import txredisapi as redis_guards


def _all_up(links: list[RedisLink]) -> int | None:
    """sscontrol_redis_up: 1 while this node reaches Redis, 0 while it does not (also
    before it ever has). Only a process with a RedisLink (redis_url set) exports it:
    without Redis there is no sample, so `sscontrol_redis_up == 0` means "configured
    and unreachable", nothing else."""
    if not links:
        return None
    return 1 if all(link.up for link in links) else 0


REDIS_UP = LiveGauge("sscontrol_redis_up", "1 while this node reaches Redis, 0 while it does not; absent without "
                     "redis_url.", _all_up)
RECONNECTS = Counter("sscontrol_redis_reconnect_attempts_total",
                     "Attempts to (re)connect to Redis after a failed one, by connection (link, subscriber).",
                     ["connection"])
DEGRADED = Gauge("sscontrol_cluster_degraded", "1 while Redis is unreachable after this node had reached it: "
                 "local rooms only, auth replay protection per node; else 0.")

RECONNECT_CAP = 1.0  # seconds: recovery after Redis returns must not depend on how long it was away


def reconnect_delay(attempt: int) -> float:
    """Capped exponential back-off with jitter (50-100 % of the step), so nodes that
    lost Redis together do not all knock at once, and none waits more than a second."""
    return min(RECONNECT_CAP, 0.05 * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0)  # nosec B311  # jitter, no secret


def hiredis_parser() -> bool:
    """Whether txredisapi parses replies with hiredis. Its pure-Python parser hands the
    rest of a read to the next reactor turn after each bulk string (3 per pub/sub
    message), copying that rest each time: under load a node's subscription then falls
    seconds behind, and what it carries is dropped as late (relay_timeout)."""
    return txredisapi.RedisProtocol is getattr(txredisapi, "HiredisProtocol", None)


def describe_failure(failure, timeout: float) -> str:
    """What went wrong, in words an operator can act on (a timeout's own message is
    only "(2.0, 'Deferred')")."""
    if failure.check(DeferredTimeout, CancelledError):
        return f"no answer within {timeout:g} s"
    return failure.getErrorMessage()[:200] or failure.type.__name__

events = Events()
log = Logger(namespace="sscontrold.redis")


class RedisUnavailable(ClusterUnavailable):
    """Redis did not answer in time (or the link is down)."""


class RedisLink(Service):
    """One lazily (re)connecting Redis connection and its health."""

    def __init__(self, url: str, password: str | None, prefix: str, timeout: float, clock):
        parts = urlsplit(url)
        self.prefix = prefix
        self.timeout = timeout
        self.clock = clock
        self.up = False
        self.ever_up = False  # reached Redis at least once since start
        self.outages = 0  # how many times the link went down: lets users notice a short outage
        self.stopping = False  # a clean stop: the lost connection is ours, not an outage
        self.on_up: list = []  # called each time the link comes (back) up
        self.on_down: list = []
        self.goodbyes: list = []  # run at stop, before the connection closes
        self._inflight: set[Deferred] = set()
        self._failed_pings = 0
        self._factory: _LinkFactory | None = None
        self._address = f"{parts.hostname}:{parts.port or 6379}"
        self._parts = parts
        self.password = password or (unquote(parts.password) if parts.password else None)
        self.connection = self._connect(self.password)
        self._switching: str | None = None  # a new password being tried
        self._watch = LoopingCall(self._ping)
        self._watch.clock = clock
        REDIS_UP.add(self)

    def _connect(self, password: str | None, lazy: bool = True):
        """The link's connection (lazy: reconnects for ever, commands wait for it), or
        a one-off trial that fires once Redis accepted the password (or fails)."""
        parts = self._parts
        dbid = int(parts.path.lstrip("/")) if parts.path.lstrip("/") else None
        username = unquote(parts.username) if parts.username else None
        host = cast(str, parts.hostname)  # config.load() refuses a redis_url without a host
        tls = optionsForClientTLS(host) if parts.scheme == "rediss" else None
        if not lazy:
            return txredisapi.Connection(parts.hostname, parts.port or 6379, dbid=dbid, reconnect=False,
                                         password=password, username=username, ssl_context_factory=tls or False,
                                         connectTimeout=self.timeout, replyTimeout=self.timeout)
        # txredisapi.lazyConnection, with a protocol that moves more per reactor turn and
        # tells the link at once when its connection drops, and a capped back-off
        factory = _LinkFactory(self._address, dbid, 1, isLazy=True,
                               password=password, replyTimeout=self.timeout, username=username)
        factory.link = self
        self._factory = factory
        factory.startConnecting(redis_endpoint(host, parts.port or 6379, self.timeout, tls))
        return factory.handler

    def apply(self, settings) -> Deferred | None:
        """On reload: a new password is tried on a connection of its own first; only
        once Redis accepts it does the link reconnect with it. If Redis refuses it,
        the running connection (authenticated with the old one) stays. So the
        password rotates without a gap: give Redis both, reload, drop the old."""
        password = settings.redis_password or (unquote(self._parts.password) if self._parts.password else None)
        if same_secret(password, self.password) or same_secret(password, self._switching):
            return None
        self._switching = password
        d = self._connect(password, lazy=False)
        d.addTimeout(max(self.timeout, 2.0), self.clock)

        def accepted(trial):
            trial.disconnect()
            if same_secret(self._switching, password):
                old, self.connection = self.connection, self._connect(password)
                self.password, self._switching = password, None
                events.emit("info", "redis.password_changed", address=self._address)
                old.disconnect()

        def refused(failure):
            if same_secret(self._switching, password):
                self._switching = None
            # txredisapi's message names the reason (WRONGPASS...), never the password
            events.emit("error", "redis.password_refused", address=self._address,
                        error=failure.getErrorMessage()[:200])

        return d.addCallbacks(accepted, refused)

    def check(self) -> str | None:
        """Readiness: None while Redis answers. Once this node has reached Redis, losing
        it degrades the node (local rooms, local replay cache) without making it unready:
        behind a proxy that checks /ready, new clients must still get in."""
        if self.up:
            return None
        if self.ever_up:
            return (f"degraded: cannot reach Redis at {self._address}; serving rooms whose members "
                    "are all on this node, auth with this node's replay cache")
        return f"cannot reach Redis at {self._address}"

    def call(self, method: str, *args, timeout: float | None = None, **kwargs) -> Deferred:
        """Run a command with a deadline; fails with RedisUnavailable."""
        d = getattr(self.connection, method)(*args, **kwargs)
        d.addTimeout(self.timeout if timeout is None else timeout, self.clock)
        d.addErrback(self._unavailable)
        self._inflight.add(d)
        d.addBoth(self._done, d)
        return d

    def _done(self, result, d):
        self._inflight.discard(d)
        return result

    def _unavailable(self, failure):
        if failure.check(txredisapi.ResponseError):
            return failure  # Redis answered: a real error, not an outage
        why = describe_failure(failure, self.timeout)
        self._set_up(False, why)
        raise RedisUnavailable(why)

    @inlineCallbacks
    def _ping(self):
        try:
            yield self.call("ping")
        except RedisUnavailable:
            self._failed_pings += 1
            if self._failed_pings >= 2:
                # A connection that stopped answering (a paused or wedged Redis keeps its
                # TCP connection open) is not waited on: drop it, and the capped
                # back-off connects afresh, so the link is up once Redis answers again.
                self._drop_connections()
            return
        self._failed_pings = 0
        self._set_up(True)

    def _drop_connections(self) -> None:
        redis_guards.abort_connections(self._factory)

    def connection_lost(self, why: str) -> None:
        """The link's connection dropped: down now, not after the next ping's deadline,
        so no command is accepted meanwhile only to fail later."""
        self._set_up(False, f"connection lost: {why}")

    def connection_made(self) -> None:
        if self.running and not self.stopping:
            self._ping()  # up as soon as Redis answers, not at the next tick

    def _set_up(self, up: bool, why: str = "") -> None:
        if self.stopping or up == self.up:
            return
        self.up = up
        if up:
            self.ever_up = True
            DEGRADED.set(0)
            events.emit("info", "redis.up", address=self._address)
            for hook in list(self.on_up):
                hook()
        else:
            self.outages += 1
            events.emit("error", "redis.down", address=self._address, error=why[:200])
            if self.ever_up:
                DEGRADED.set(1)
                events.emit("warn", "cluster.degraded", address=self._address,
                            serving="rooms whose members are all on this node",
                            auth="replay protection by this node only until Redis is back")
            for hook in list(self.on_down):
                hook()

    def startService(self) -> None:
        Service.startService(self)
        if not hiredis_parser():
            events.emit("warn", "redis.slow_parser", action="install hiredis (requirements.txt pins it)",
                        why="without it txredisapi reads one bulk string per reactor turn: under load, "
                            "messages to peers on other nodes arrive late and are reported undelivered")
        self._watch.start(1.0, now=True)

    @inlineCallbacks
    def stopService(self):
        Service.stopService(self)
        if self._watch.running:
            self._watch.stop()
        for goodbye in self.goodbyes:
            try:
                yield goodbye()
            except Exception:
                log.failure("internal error in a clean stop's goodbye to Redis")
        # Commands still under way (a leave, a session write) finish, or time out, first.
        yield DeferredList([d for d in list(self._inflight)], consumeErrors=True)
        self.stopping = True
        DEGRADED.set(0)
        yield self.connection.disconnect()


class RedisNonceStore:
    """Auth nonces shared by every node: SET NX with the token's remaining life, so a
    token replayed on another node is refused too.

    While Redis is unreachable the node falls back to a replay cache of its own
    (bounded by ``max_entries``, each nonce kept until its token is too old to
    pass anyway), so new clients still get in; a token can then be replayed once
    on another node, nowhere else. When Redis is back, the nonces taken meanwhile
    are written to it, so from then on the whole cluster refuses them again."""

    def __init__(self, link: RedisLink, max_entries: int):
        self._link = link
        self._local = MemoryNonceStore(link.clock.seconds, max_entries)
        self._taken: dict[bytes, float] = {}  # taken while Redis was away: key -> expiry
        link.on_up.append(self._converge)

    def _key(self, key: bytes) -> str:
        return f"{self._link.prefix}nonce:{key.hex()}"

    def add(self, key: bytes, expires_at: float):
        if not self._link.up:
            return self._add_locally(key, expires_at)
        if key in self._taken:  # taken here during an outage, not yet written to Redis
            return False
        ttl_ms = max(1, int((expires_at - self._link.clock.seconds()) * 1000))
        d = self._link.call("set", self._key(key), "1", expire=None, pexpire=ttl_ms, only_if_not_exists=True)

        def down(failure):
            failure.trap(RedisUnavailable)  # Redis went away meanwhile: this node decides
            return self._add_locally(key, expires_at)

        d.addCallbacks(lambda reply: reply == "OK", down)
        return d

    def _add_locally(self, key: bytes, expires_at: float) -> bool:
        fresh = self._local.add(key, expires_at)  # AuthRefused when full: fail closed
        if fresh:
            self._taken[key] = expires_at
        return fresh

    @inlineCallbacks
    def _converge(self):
        now = self._link.clock.seconds()
        taken, self._taken = self._taken, {}
        replayed = 0
        for key, expires_at in taken.items():
            if expires_at <= now:
                continue
            try:
                reply = yield self._link.call("set", self._key(key), "1", expire=None,
                                              pexpire=max(1, int((expires_at - now) * 1000)),
                                              only_if_not_exists=True)
            except RedisUnavailable:
                self._taken.update(taken)  # down again: the next recovery writes them
                return
            if reply != "OK":
                replayed += 1  # the same token got in on another node too during the outage
        if taken:
            events.emit("warn" if replayed else "info", "auth.nonces_converged", written=len(taken) - replayed,
                        used_on_two_nodes=replayed)


# --- rooms shared by several nodes

# Keys (after the prefix): room:<id> hash peer -> node; node:<id>:members set of
# JSON [room, peer, token]; node:<id>:alive the node's lease; nodes set; token:<t>.
# The scripts touch keys they compute: a single Redis (or a primary), not Redis Cluster.

JOIN = """
if ARGV[3] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
   and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return false
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
if ARGV[5] ~= '' then redis.call('SET', KEYS[3], ARGV[6]) end
return redis.call('HGETALL', KEYS[1])
"""

LEAVE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('SREM', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('DEL', KEYS[3]) end
return redis.call('HGETALL', KEYS[1])
"""

# A node whose lease ran out is dead. Its members keep their places for the resume
# grace (counted by Redis from the first sweep that sees it dead), so they can resume
# on another node without their room hearing anything; only then are the rest removed,
# once: only the caller that runs it gets the list back, so each peer_left is
# announced exactly once.
SWEEP = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[4])
  return false
end
local grace = tonumber(ARGV[3])
if grace > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local since = redis.call('GET', KEYS[4])
  if not since then
    redis.call('SET', KEYS[4], now, 'PX', grace + 60000)
    return false
  end
  if now - tonumber(since) < grace then return false end
end
local out = {}
for _, entry in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local e = cjson.decode(entry)
  local rkey = ARGV[2] .. 'room:' .. e[1]
  if redis.call('HGET', rkey, e[2]) == ARGV[1] then
    redis.call('HDEL', rkey, e[2])
    table.insert(out, cjson.encode({e[1], e[2], redis.call('HGETALL', rkey)}))
  end
  if e[3] ~= '' then redis.call('DEL', ARGV[2] .. 'token:' .. e[3]) end
end
redis.call('DEL', KEYS[2], KEYS[4])
redis.call('SREM', KEYS[3], ARGV[1])
return out
"""


# KEYS: room, old node's members, new node's members, old token, new token.
# ARGV: peer, old node, new node, old entry, new entry, new token's record, old token.
MOVE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
redis.call('SREM', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[5])
if ARGV[7] ~= '' then redis.call('DEL', KEYS[4]) end
redis.call('SET', KEYS[5], ARGV[6])
return 1
"""

# A resume on the node that holds the peer spends its token for a new one.
# KEYS: this node's members, old token, new token. ARGV: old entry, new entry, record.
ROTATE = """
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then redis.call('SADD', KEYS[1], ARGV[2]) end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[3], ARGV[3])
return 1
"""

# A peer of a dead node (its lease gone) resumes here: take its place over from
# Redis alone, if it is still the dead node's (not swept, not taken by another resume),
# spending its token for a new one.
# KEYS: room, dead node's members, this node's members, old token, dead node's lease,
# new token. ARGV: peer, dead node, this node, old entry, new token's record, new entry.
ADOPT = """
if redis.call('EXISTS', KEYS[5]) == 1 or redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return false
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('SREM', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[6])
redis.call('DEL', KEYS[4])
redis.call('SET', KEYS[6], ARGV[5])
return redis.call('HGETALL', KEYS[1])
"""

HOLD_STEP = 0.1  # seconds between tries of a message whose target node is not subscribed
LATE_MARGIN = 0.5  # the sender waits this much longer than the receiver accepts (see publish)


def _pairs(flat) -> dict[str, str]:
    flat = list(flat or ())
    return dict(zip(flat[::2], flat[1::2], strict=False))  # an odd last item has no value: dropped


def redis_endpoint(host: str, port: int, timeout: float, tls=None):
    """A client endpoint for the Redis at ``host``:``port``, as txredisapi makes its own:
    getaddrinfo (IPv6-only servers work), TLS with ``tls`` (client TLS options) if given."""
    from twisted.internet import reactor

    plain = HostnameEndpoint(reactor, host, port, timeout=timeout)
    return wrapClientTLS(tls, plain) if tls else plain


class _LinkProtocol(txredisapi.RedisProtocol):
    def connectionMade(self):
        # Every message to a peer on another node is a PUBLISH on this one socket: let a
        # reactor turn send (and read) as much as many peers' sockets would, or under
        # load the commands queue up here, behind Twisted's 128 KiB per write.
        twisted_tcp.widen(self.transport, send_limit=1 << 22, read_size=1 << 20)
        result = txredisapi.RedisProtocol.connectionMade(self)
        self.whenConnected().addCallback(lambda _: self._set_up())
        return result

    def _set_up(self) -> None:
        self.factory.setup_succeeded()
        self.factory.link.connection_made()

    def connectionLost(self, why):
        txredisapi.RedisProtocol.connectionLost(self, why)
        link = self.factory.link
        if link.connection is self.factory.handler:  # not the old one of a password change
            link.connection_lost(why.getErrorMessage()[:200])


class _Retrying(redis_guards.KeepTrying):
    """A Redis connection's factory that keeps trying after a failed set-up (AUTH,
    SELECT refused, or no answer from a paused Redis). A TCP connect that succeeds
    resets ClientService's attempt count, so the back-off counts failed set-ups too,
    and the failure is said once per outage, with txredisapi's reason (which names
    no password), not once per attempt."""

    connection_name = ""  # the label of sscontrol_redis_reconnect_attempts_total
    setup_failures = 0

    def on_setup_failed(self) -> None:
        self.setup_failures += 1

    def connectionError(self, why):
        # txredisapi's report of the failure on_setup_failed was just told of
        if self.setup_failures == 1:
            events.emit("warn", "redis.setup_failed", connection=self.connection_name, error=str(why)[:200],
                        action="retrying with the capped back-off; said once until a connection is set up")
        return super().connectionError(why)

    def setup_succeeded(self) -> None:
        if self.setup_failures:
            events.emit("info", "redis.setup_recovered", connection=self.connection_name,
                        failed_attempts=self.setup_failures)
        self.setup_failures = 0

    def retry_delay(self, attempt: int) -> float:
        RECONNECTS.labels(self.connection_name).inc()
        return reconnect_delay(max(attempt, self.setup_failures))


class _LinkFactory(_Retrying, txredisapi.RedisFactory):
    protocol = _LinkProtocol
    connection_name = "link"
    link: RedisLink

    def retryDelay(self, attempt):
        return self.retry_delay(attempt)


class _Subscriber(txredisapi.SubscriberProtocol):
    def connectionMade(self):
        # This one socket carries the messages of every peer on other nodes: read it in
        # big gulps, or under load the reactor's one read per socket per turn would
        # serve it like a single peer and its backlog would grow in Redis.
        twisted_tcp.widen(self.transport, read_size=1 << 20)
        txredisapi.SubscriberProtocol.connectionMade(self)
        self.whenConnected().addCallback(lambda _: self.factory.setup_succeeded())
        self.whenConnected().addCallback(lambda _: self.subscribe(self.factory.channel)).addCallbacks(
            lambda _: self.factory.cluster.subscribed_now(self),
            lambda f: events.emit("error", "cluster.subscribe_failed", error=f.getErrorMessage()[:200]))

    def connectionLost(self, why):
        txredisapi.SubscriberProtocol.connectionLost(self, why)
        self.factory.cluster.unsubscribed(self, why.getErrorMessage()[:200])

    def dataReceived(self, data, *args):
        # Like a WebSocket read: what the events of this read send goes out in one
        # write per recipient when it is handled, and relays are timed as local ones.
        batch = self.factory.cluster.batch
        outer = batch is not None and batch.begin()
        try:
            txredisapi.SubscriberProtocol.dataReceived(self, data, *args)
        finally:
            if outer:
                batch.end()

    def messageReceived(self, pattern, channel, message):
        self.factory.cluster.deliver(message)


class _SubscriberFactory(_Retrying, txredisapi.RedisFactory):
    protocol = _Subscriber
    connection_name = "subscriber"

    def __init__(self, channel: str, link, cluster):
        txredisapi.RedisFactory.__init__(self, None, None, 1, isLazy=True, password=link.password)
        self.channel = channel
        self.cluster = cluster
        self._link = link

    def buildProtocol(self, addr):
        self.password = self._link.password  # after a rotation, reconnect with the new one
        return txredisapi.RedisFactory.buildProtocol(self, addr)


class _Outgoing:
    """The messages to another node of one reactor turn (one PUBLISH), until Redis has
    handed them to that node's subscriber. ``failures``: (op, on_failure) of each."""

    __slots__ = ("seq", "node", "payload", "failures", "started")

    def __init__(self, seq, node, payload, failures, started):
        self.seq, self.node, self.payload = seq, node, payload
        self.failures, self.started = failures, started

    def __lt__(self, other):
        return self.seq < other.seq


class RedisCluster(Service):
    """The ClusterStore on Redis: membership scripts, per-node channels, the node's
    lease, and the sweep that removes the members of nodes whose lease ran out."""

    def __init__(self, link: RedisLink, url: str, password: str | None, lease: float, node_id: str | None = None):
        self.link = link
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.lease = lease
        self.hub = None  # set by the node once its ClusterHub exists
        p = link.prefix
        self._channel = f"{p}node:{self.node_id}"
        self._members_key = f"{p}node:{self.node_id}:members"
        parts = urlsplit(url)
        host = cast(str, parts.hostname)  # config.load() refuses a redis_url without a host
        factory = _SubscriberFactory(self._channel, link, self)
        self._subscriber = ClientService(
            redis_endpoint(host, parts.port or 6379, link.timeout,
                           optionsForClientTLS(host) if parts.scheme == "rediss" else None),
            factory, retryPolicy=factory.retry_delay, clock=link.clock)
        self._subscribed_on = None  # the subscriber connection whose SUBSCRIBE Redis confirmed
        self._loops = [LoopingCall(self._renew_lease), LoopingCall(self._sweep)]
        for loop in self._loops:
            loop.clock = link.clock
        self._registered_after = None  # link.outages when this node last registered its members
        self._seq = 0
        self._held: dict[str, list[_Outgoing]] = {}  # node -> messages waiting for it to subscribe
        # node -> (event, on_failure) published during this reactor turn, sent at its end
        self._turn: dict[str, list[tuple[dict, object]]] = {}
        self._turn_call = None
        self.batch = None  # the WebSocket side's WriteBatch (protocol.py), set by the wiring
        self._gone = False  # said goodbye (clean stop): nothing of this node is left in Redis
        link.goodbyes.append(self._goodbye)

    @property
    def available(self) -> bool:
        # After a reconnect, this node hears its own channel before it sends anything:
        # an answer to what it sends could not reach it otherwise.
        return self.link.up and self._subscribed_on is not None and not self._gone

    @property
    def relay_timeout(self) -> float:
        """How late a relayed message may still be delivered (redis_timeout)."""
        return self.link.timeout

    def check(self) -> str | None:
        """Readiness (see RedisLink.check): the link, and this node's subscription."""
        problem = self.link.check()
        if problem is None and self._subscribed_on is None:
            problem = f"not yet subscribed to {self._channel}"
            if self.link.ever_up:
                problem = "degraded: " + problem
        return problem

    def subscribed_now(self, protocol) -> None:
        self._subscribed_on = protocol
        events.emit("info", "cluster.subscribed", channel=self._channel)
        if self.link.up:
            self.link.clock.callLater(0, self._renew_lease_now)

    def unsubscribed(self, protocol, why: str) -> None:
        if self._subscribed_on is protocol:
            self._subscribed_on = None
            if not self._gone and not self.link.stopping:
                events.emit("warn", "cluster.unsubscribed", channel=self._channel, error=why)

    # --- ClusterStore

    @staticmethod
    def _record(peer_id: str, room_id: str, node: str, device: str | None) -> str:
        """A resume token's record: where its peer is, and the device it is bound to."""
        return orjson.dumps({"peer": peer_id, "room": room_id, "node": node, "device": device}).decode()

    def join(self, room_id: str, peer_id: str, token: str, max_peers: int | None, device: str | None = None):
        p = self.link.prefix
        entry = orjson.dumps([room_id, peer_id, token]).decode()
        d = self.link.call("eval", JOIN, [f"{p}room:{room_id}", self._members_key, f"{p}token:{token}"],
                           [peer_id, self.node_id, "" if max_peers is None else str(max_peers), entry, token,
                            self._record(peer_id, room_id, self.node_id, device)])
        return d.addCallback(lambda reply: None if reply is None else _pairs(reply))

    def leave(self, room_id: str, peer_id: str, token: str):
        if self._gone:
            return succeed({})  # the goodbye took every member of this node out already
        p = self.link.prefix
        entry = orjson.dumps([room_id, peer_id, token]).decode()
        d = self.link.call("eval", LEAVE, [f"{p}room:{room_id}", self._members_key, f"{p}token:{token}"],
                           [peer_id, self.node_id, entry, token])
        return d.addCallback(_pairs)

    def token(self, token: str):
        d = self.link.call("get", f"{self.link.prefix}token:{token}")
        return d.addCallback(lambda raw: orjson.loads(raw) if raw else None)

    def move(self, room_id: str, peer_id: str, token: str, new_node: str, new_token: str,
             device: str | None = None):
        p = self.link.prefix
        entry = orjson.dumps([room_id, peer_id, token]).decode()
        new_entry = orjson.dumps([room_id, peer_id, new_token]).decode()
        return self.link.call("eval", MOVE, [f"{p}room:{room_id}", self._members_key,
                                             f"{p}node:{new_node}:members", f"{p}token:{token}",
                                             f"{p}token:{new_token}"],
                              [peer_id, self.node_id, new_node, entry, new_entry,
                               self._record(peer_id, room_id, new_node, device), token])

    def rotate(self, room_id: str, peer_id: str, token: str, new_token: str, device: str | None = None):
        p = self.link.prefix
        entry = orjson.dumps([room_id, peer_id, token]).decode()
        new_entry = orjson.dumps([room_id, peer_id, new_token]).decode()
        return self.link.call("eval", ROTATE, [self._members_key, f"{p}token:{token}", f"{p}token:{new_token}"],
                              [entry, new_entry, self._record(peer_id, room_id, self.node_id, device)])

    def node_alive(self, node_id: str):
        d = self.link.call("exists", f"{self.link.prefix}node:{node_id}:alive")
        return d.addCallback(bool)

    def adopt(self, room_id: str, peer_id: str, token: str, old_node: str, new_token: str,
              device: str | None = None):
        p = self.link.prefix
        entry = orjson.dumps([room_id, peer_id, token]).decode()
        new_entry = orjson.dumps([room_id, peer_id, new_token]).decode()
        d = self.link.call("eval", ADOPT, [f"{p}room:{room_id}", f"{p}node:{old_node}:members", self._members_key,
                                           f"{p}token:{token}", f"{p}node:{old_node}:alive",
                                           f"{p}token:{new_token}"],
                           [peer_id, old_node, self.node_id, entry,
                            self._record(peer_id, room_id, self.node_id, device), new_entry])
        return d.addCallback(lambda reply: None if reply is None else _pairs(reply))

    def members(self, room_id: str):
        return self.link.call("hgetall", f"{self.link.prefix}room:{room_id}")  # txredisapi: a dict

    # --- for the operators' listings (domain/admin.py)

    async def rooms(self, limit: int) -> tuple[dict[str, int], bool]:
        """Every room of the cluster with its member count (SCAN: Redis keeps serving
        others meanwhile); at most ``limit``, and whether more were left out."""
        p = self.link.prefix
        counts: dict[str, int] = {}
        cursor = 0
        while True:
            cursor, keys = await self.link.call("scan", cursor, pattern=f"{p}room:*", count=500)
            for key in keys:
                if len(counts) >= limit:
                    return counts, True
                counts[key[len(p) + 5:]] = await self.link.call("hlen", key)
            if int(cursor) == 0:
                return {room: n for room, n in counts.items() if n}, False

    async def nodes(self) -> list[str]:
        return list(await self.link.call("smembers", f"{self.link.prefix}nodes") or ())

    def publish_now(self, node_id: str, event: dict):
        """Awaitable of how many subscribers got ``event`` (0: the node is not listening)."""
        self.flush()  # what was published before goes first
        return self.link.call("publish", f"{self.link.prefix}node:{node_id}", orjson.dumps(event).decode())

    def publish(self, node_id: str, event: dict, on_failure=None) -> None:
        """Send ``event`` to a node; raises ClusterUnavailable when the store is down.

        Redis answers a PUBLISH with how many subscribers got it. 0: the node is not
        listening (reconnecting, or dead): the message waits, with every later one to
        that node behind it (the order holds), and is tried again every HOLD_STEP until
        the relay timeout. A message that fails, or is not confirmed within the relay
        timeout plus LATE_MARGIN, is reported to ``on_failure(code)`` (or logged);
        the receiving node drops anything older than the relay timeout and reports it
        (the hub's relay_failed), so a message is delivered or its sender hears why,
        never both, as long as the nodes' clocks agree within LATE_MARGIN."""
        if not self.available:
            raise ClusterUnavailable()
        # Batched like the WebSocket writes: what one reactor turn publishes to a node
        # (e.g. the relays of one read) goes as one PUBLISH of one encoded list at its end.
        pending = self._turn.get(node_id)
        if pending is None:
            pending = self._turn[node_id] = []
        pending.append((event, on_failure))
        if self._turn_call is None:
            self._turn_call = self.link.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Send what this reactor turn published, in order: one write to Redis for the
        turn, one PUBLISH per event. (Nodes also read a list of events in one PUBLISH;
        sending lists waits until no node of an earlier version, which cannot read them,
        may share a room: a rolling upgrade would lose messages silently.)"""
        if self._turn_call is not None:
            if self._turn_call.active():
                self._turn_call.cancel()
            self._turn_call = None
        turn, self._turn = self._turn, {}
        now = self.link.clock.seconds()
        for node_id, pending in turn.items():
            for event, on_failure in pending:
                self._seq += 1
                out = _Outgoing(self._seq, node_id, orjson.dumps(event).decode(),
                                [(event.get("op"), on_failure)], now)
                if not self.available:  # Redis went away within the turn
                    self._failed(out, "relay_failed", "Redis unreachable")
                    continue
                held = self._held.get(node_id)
                if held is not None:
                    held.append(out)
                else:
                    self._send(out)

    def _send(self, out: _Outgoing) -> None:
        left = out.started + self.relay_timeout + LATE_MARGIN - self.link.clock.seconds()
        d = self.link.call("publish", f"{self.link.prefix}node:{out.node}", out.payload, timeout=max(0.05, left))
        d.addCallbacks(self._published, self._not_published, callbackArgs=(out,), errbackArgs=(out,))

    def _published(self, receivers, out: _Outgoing) -> None:
        if receivers:
            return
        held = self._held.get(out.node)
        if held is None:
            held = self._held[out.node] = []
            self.link.clock.callLater(HOLD_STEP, self._retry, out.node)
        insort(held, out)  # messages to that node sent after it wait behind it

    def _not_published(self, failure, out: _Outgoing) -> None:
        self._failed(out, "relay_failed", describe_failure(failure, self.relay_timeout))

    def _failed(self, out: _Outgoing, code: str, why: str) -> None:
        for op, on_failure in out.failures:
            if on_failure is not None:
                on_failure(code)
            else:
                events.emit("warn", "cluster.publish_failed", op=op, node=out.node, code=code, error=why)

    def _retry(self, node: str) -> None:
        held = self._held.get(node)
        now = self.link.clock.seconds()
        while held and (now - held[0].started > self.relay_timeout or not self.available):
            out = held.pop(0)
            if self.available:
                self._failed(out, "peer_unreachable", f"node {node} not listening for {self.relay_timeout:g} s")
            else:
                self._failed(out, "relay_failed", "Redis unreachable")
        if not held:
            self._held.pop(node, None)
            return
        first = held[0]
        d = self.link.call("publish", f"{self.link.prefix}node:{node}", first.payload)

        def answered(receivers):
            if not receivers:
                self.link.clock.callLater(HOLD_STEP, self._retry, node)
                return
            held.remove(first)
            del self._held[node]
            for out in held:  # the node listens again: the rest goes, in order
                self._send(out)

        def failed(failure):
            if first in held:
                held.remove(first)
                self._failed(first, "relay_failed", describe_failure(failure, self.relay_timeout))
            self.link.clock.callLater(HOLD_STEP, self._retry, node)

        d.addCallbacks(answered, failed)

    # --- inbound

    def deliver(self, message) -> None:
        """The events of one PUBLISH: one, or a list (one turn's batch of a node)."""
        try:
            decoded = orjson.loads(message)
            if self.hub is None:
                return
            delivered = 0
            for event in decoded if isinstance(decoded, list) else (decoded,):
                delivered += self.hub.on_event(event) is True
            if delivered and self.batch is not None and self.batch.active:
                self.batch.relayed += delivered  # timed from this read to the write, as local relays
        except Exception:
            log.failure("internal error handling a cluster event")

    # --- lease, sweep, recovery

    def _renew_lease_now(self) -> None:
        if self.running and self._loops[0].running:
            self._renew_lease()

    @inlineCallbacks
    def _renew_lease(self):
        p = self.link.prefix
        try:
            yield self.link.call("set", f"{self._channel}:alive", "1", pexpire=int(self.lease * 1000))
            yield self.link.call("sadd", f"{p}nodes", self.node_id)
        except RedisUnavailable:
            return
        # Any outage since the last registration, however short (even one this loop
        # never saw), may have deferred a leave or lost a join: register again, once
        # this node hears its channel (the others answer there).
        outages = self.link.outages
        if self._registered_after != outages and self._subscribed_on is not None and not self._reregistering:
            self._reregistering = True
            try:
                done = yield self._reregister()
            finally:
                self._reregistering = False
            if done:
                self._registered_after = outages

    _reregistering = False

    @inlineCallbacks
    def _reregister(self):
        """After (re)connecting: put this node's members back and, once the other
        nodes have done the same, bring the mirrors in line. True once all is done."""
        if self.hub is None:
            return
        local = self.hub.local_members()
        # Members that left while Redis was away are still listed under this node: let
        # them go now (and tell the other nodes), so no one keeps a ghost.
        try:
            listed = yield self.link.call("smembers", self._members_key)
        except RedisUnavailable:
            return
        here = {(room_id, peer_id) for room_id, peer_id, _ in local}
        # A leave sent to a stalled Redis may have been done there after this node gave
        # up on it: no longer listed, but the other nodes were never told.
        deferred, self.hub.deferred_leaves = self.hub.deferred_leaves, []
        entries = [orjson.loads(entry) for entry in listed or ()]
        entries += [list(leave) for leave in deferred if list(leave) not in entries]
        for room_id, peer_id, token in entries:
            if (room_id, peer_id) in here:
                continue
            try:
                remaining = yield self.leave(room_id, peer_id, token)
            except RedisUnavailable:
                self.hub.deferred_leaves += deferred
                return
            if peer_id in remaining:
                continue  # it lives on another node now (resumed there): nothing to announce
            self.flush()  # anything published before goes first
            for node in {n for n in remaining.values() if n != self.node_id}:
                try:  # not publish(): the link may not have noticed yet that Redis is back
                    yield self.link.call("publish", f"{self.link.prefix}node:{node}",
                                         orjson.dumps({"op": "left", "room": room_id, "peer": peer_id}).decode())
                except RedisUnavailable:
                    return
        if not local:
            return True
        for room_id, peer_id, token in local:
            try:
                members = yield self.join(room_id, peer_id, token, None)
            except RedisUnavailable:
                return
            self.flush()
            for node in {n for n in members.values() if n != self.node_id}:
                try:
                    yield self.link.call("publish", f"{self.link.prefix}node:{node}", orjson.dumps(
                        {"op": "joined", "room": room_id, "peer": peer_id, "node": self.node_id}).decode())
                except RedisUnavailable:
                    return
        self.link.clock.callLater(self.lease * 1.5, self._reconcile)
        return True

    @inlineCallbacks
    def _reconcile(self):
        for room_id in self.hub.local_rooms():
            try:
                members = yield self.members(room_id)
            except RedisUnavailable:
                return
            self.hub.reconcile(room_id, members or {})

    @inlineCallbacks
    def _sweep(self):
        p = self.link.prefix
        try:
            nodes = yield self.link.call("smembers", f"{p}nodes")
            for node in nodes or ():
                if node == self.node_id:
                    continue
                grace = self.hub.hold.grace if self.hub is not None else 0.0
                removed = yield self.link.call(
                    "eval", SWEEP, [f"{p}node:{node}:alive", f"{p}node:{node}:members", f"{p}nodes",
                                    f"{p}node:{node}:dead"], [node, p, str(int(grace * 1000))])
                for item in removed or ():
                    room_id, peer_id, flat = orjson.loads(item)
                    remaining = _pairs(flat) if isinstance(flat, list) else {}
                    events.emit("warn", "cluster.node_lost", node=node, peer_id=peer_id)
                    for target in set(remaining.values()):
                        if target == self.node_id:
                            self.hub.on_event({"op": "left", "room": room_id, "peer": peer_id})
                        else:
                            self.publish(target, {"op": "left", "room": room_id, "peer": peer_id})
        except (RedisUnavailable, ClusterUnavailable):
            return

    def startService(self) -> None:
        Service.startService(self)
        self._subscriber.startService()
        self._loops[0].start(max(0.2, self.lease / 5), now=True)
        self._loops[1].start(1.0, now=False)

    def stopService(self):
        # The goodbye itself runs when the link stops (RedisLink.goodbyes), after
        # every service that may still leave a member has stopped.
        Service.stopService(self)
        for loop in self._loops:
            if loop.running:
                loop.stop()

    @inlineCallbacks
    def _goodbye(self):
        """A clean stop: the members this node still holds leave (their rooms hear it
        now, not after the lease), and nothing of the node stays in Redis."""
        p = self.link.prefix
        self.flush()
        try:
            if self.link.up and self.hub is not None:
                for room_id, peer_id, token in self.hub.local_members():
                    remaining = yield self.leave(room_id, peer_id, token)
                    for node in {n for n in remaining.values() if n != self.node_id}:
                        yield self.publish_now(node, {"op": "left", "room": room_id, "peer": peer_id})
                listed = yield self.link.call("smembers", self._members_key)
                for entry in listed or ():  # left while Redis was away, not yet put right
                    room_id, peer_id, token = orjson.loads(entry)
                    yield self.leave(room_id, peer_id, token)
                yield self.link.call("delete", [f"{self._channel}:alive", self._members_key])
                yield self.link.call("srem", f"{p}nodes", self.node_id)
                events.emit("info", "cluster.goodbye", node=self.node_id)
            else:
                events.emit("warn", "cluster.goodbye_skipped", node=self.node_id,
                            why="Redis unreachable: the others remove this node's members after its lease")
        except RedisUnavailable as e:
            events.emit("warn", "cluster.goodbye_failed", node=self.node_id, error=str(e),
                        why="the others remove this node's members after its lease")
        finally:
            self._gone = True
            yield self._subscriber.stopService()
