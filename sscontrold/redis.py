"""Redis, shared by several nodes (txredisapi): the link with its health, and the
stores built on it.

Redis being down never blocks the reactor: every command has a deadline, the
link is watched by a PING each second, and /ready and the metrics say when it
is down.
"""

from __future__ import annotations

import os
import secrets
import socket
import weakref
from urllib.parse import unquote, urlsplit

import orjson
import txredisapi
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .domain.auth import AuthRefused
from .domain.cluster import ClusterUnavailable
from .logging import Events


class RedisUpCollector:
    """sscontrol_redis_up, read from the links at each scrape: 1 while this node reaches
    Redis, 0 while it does not (also before it ever has). Only a process with a
    RedisLink (redis_url set) exports it: without Redis there is no sample, so
    `sscontrol_redis_up == 0` means "configured and unreachable", nothing else."""

    NAME = ("sscontrol_redis_up", "1 while this node reaches Redis, 0 while it does not; absent without redis_url.")

    def __init__(self):
        self._links: weakref.WeakSet[RedisLink] = weakref.WeakSet()

    def add(self, link: RedisLink) -> None:
        self._links.add(link)

    def describe(self):
        return [GaugeMetricFamily(*self.NAME)]

    def collect(self):
        links = list(self._links)
        if links:
            yield GaugeMetricFamily(*self.NAME, value=1 if all(link.up for link in links) else 0)


REDIS_UP = RedisUpCollector()
REGISTRY.register(REDIS_UP)

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
        self.outages = 0  # how many times the link went down: lets users notice a short outage
        self._address = f"{parts.hostname}:{parts.port or 6379}"
        self._parts = parts
        self.password = password or (unquote(parts.password) if parts.password else None)
        self.connection = self._connect(self.password)
        self._switching = None  # a new password being tried
        self._watch = LoopingCall(self._ping)
        self._watch.clock = clock
        REDIS_UP.add(self)

    def _connect(self, password: str | None, lazy: bool = True):
        """The link's connection (lazy: reconnects for ever, commands wait for it), or
        a one-off trial that fires once Redis accepted the password (or fails)."""
        parts = self._parts
        dbid = int(parts.path.lstrip("/")) if parts.path.lstrip("/") else None
        username = unquote(parts.username) if parts.username else None
        tls = optionsForClientTLS(parts.hostname) if parts.scheme == "rediss" else None
        if not lazy:
            return txredisapi.Connection(parts.hostname, parts.port or 6379, dbid=dbid, reconnect=False,
                                         password=password, username=username, ssl_context_factory=tls or False,
                                         connectTimeout=self.timeout, replyTimeout=self.timeout)
        # txredisapi.lazyConnection, with a protocol that moves more per reactor turn
        factory = txredisapi.RedisFactory(f"{parts.hostname}:{parts.port or 6379}", dbid, 1, isLazy=True,
                                          password=password, replyTimeout=self.timeout, username=username)
        factory.protocol = _LinkProtocol
        factory.startConnecting(txredisapi._makeEndpoint(parts.hostname, parts.port or 6379, self.timeout, tls))
        return factory.handler

    def apply(self, settings) -> Deferred | None:
        """On reload: a new password is tried on a connection of its own first; only
        once Redis accepts it does the link reconnect with it. If Redis refuses it,
        the running connection (authenticated with the old one) stays. So the
        password rotates without a gap: give Redis both, reload, drop the old."""
        password = settings.redis_password or (unquote(self._parts.password) if self._parts.password else None)
        if password == self.password or password == self._switching:
            return None
        self._switching = password
        d = self._connect(password, lazy=False)
        d.addTimeout(max(self.timeout, 2.0), self.clock)

        def accepted(trial):
            trial.disconnect()
            if self._switching == password:
                old, self.connection = self.connection, self._connect(password)
                self.password, self._switching = password, None
                events.emit("info", "redis.password_changed", address=self._address)
                old.disconnect()

        def refused(failure):
            if self._switching == password:
                self._switching = None
            # txredisapi's message names the reason (WRONGPASS...), never the password
            events.emit("error", "redis.password_refused", address=self._address,
                        error=failure.getErrorMessage()[:200])

        return d.addCallbacks(accepted, refused)

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
            if not up:
                self.outages += 1
            if up:
                events.emit("info", "redis.up", address=self._address)
            else:
                events.emit("error", "redis.down", address=self._address, error=why[:200])

    def startService(self) -> None:
        Service.startService(self)
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

# Removes a dead node's members, once: only the caller that runs it while the node's
# lease is gone gets the list back, so each peer_left is announced exactly once.
SWEEP = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
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
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return out
"""


MOVE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
redis.call('SREM', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[4])
if ARGV[5] ~= '' then redis.call('SET', KEYS[4], ARGV[6]) end
return 1
"""


def _pairs(flat) -> dict[str, str]:
    flat = list(flat or ())
    return dict(zip(flat[::2], flat[1::2]))


class _LinkProtocol(txredisapi.RedisProtocol):
    def connectionMade(self):
        # Every message to a peer on another node is a PUBLISH on this one socket: let a
        # reactor turn send (and read) as much as many peers' sockets would, or under
        # load the commands queue up here, behind Twisted's 128 KiB per write.
        self.transport.SEND_LIMIT = 1 << 22
        self.transport.bufferSize = 1 << 20
        return txredisapi.RedisProtocol.connectionMade(self)


class _Subscriber(txredisapi.SubscriberProtocol):
    def connectionMade(self):
        # This one socket carries the messages of every peer on other nodes: read it in
        # big gulps, or under load the reactor's one read per socket per turn would
        # serve it like a single peer and its backlog would grow in Redis.
        self.transport.bufferSize = 1 << 20
        txredisapi.SubscriberProtocol.connectionMade(self)
        self.whenConnected().addCallback(lambda _: self.subscribe(self.factory.channel))

    def messageReceived(self, pattern, channel, message):
        self.factory.deliver(message)


class _SubscriberFactory(txredisapi.RedisFactory):
    protocol = _Subscriber

    def __init__(self, channel: str, link, deliver):
        txredisapi.RedisFactory.__init__(self, None, None, 1, isLazy=True, password=link.password)
        self.channel = channel
        self.deliver = deliver
        self._link = link

    def buildProtocol(self, addr):
        self.password = self._link.password  # after a rotation, reconnect with the new one
        return txredisapi.RedisFactory.buildProtocol(self, addr)


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
        factory = _SubscriberFactory(self._channel, link, self._deliver)
        self._subscriber = ClientService(
            txredisapi._makeEndpoint(parts.hostname, parts.port or 6379, link.timeout,
                                     optionsForClientTLS(parts.hostname) if parts.scheme == "rediss" else None),
            factory, retryPolicy=lambda attempt: min(2.0, 0.2 * attempt), clock=link.clock)
        self._loops = [LoopingCall(self._renew_lease), LoopingCall(self._sweep)]
        for loop in self._loops:
            loop.clock = link.clock
        self._registered_after = None  # link.outages when this node last registered its members

    @property
    def available(self) -> bool:
        return self.link.up

    # --- ClusterStore

    def join(self, room_id: str, peer_id: str, token: str, max_peers: int | None):
        p = self.link.prefix
        entry = orjson.dumps([room_id, peer_id, token]).decode()
        d = self.link.call("eval", JOIN, [f"{p}room:{room_id}", self._members_key, f"{p}token:{token}"],
                           [peer_id, self.node_id, "" if max_peers is None else str(max_peers), entry, token,
                            orjson.dumps({"peer": peer_id, "room": room_id, "node": self.node_id}).decode()])
        return d.addCallback(lambda reply: None if reply is None else _pairs(reply))

    def leave(self, room_id: str, peer_id: str, token: str):
        p = self.link.prefix
        entry = orjson.dumps([room_id, peer_id, token]).decode()
        d = self.link.call("eval", LEAVE, [f"{p}room:{room_id}", self._members_key, f"{p}token:{token}"],
                           [peer_id, self.node_id, entry, token])
        return d.addCallback(_pairs)

    def token(self, token: str):
        d = self.link.call("get", f"{self.link.prefix}token:{token}")
        return d.addCallback(lambda raw: orjson.loads(raw) if raw else None)

    def move(self, room_id: str, peer_id: str, token: str, new_node: str):
        p = self.link.prefix
        entry = orjson.dumps([room_id, peer_id, token]).decode()
        return self.link.call("eval", MOVE, [f"{p}room:{room_id}", self._members_key,
                                             f"{p}node:{new_node}:members", f"{p}token:{token}"],
                              [peer_id, self.node_id, new_node, entry, token,
                               orjson.dumps({"peer": peer_id, "room": room_id, "node": new_node}).decode()])

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

    def publish(self, node_id: str, event: dict) -> None:
        if not self.link.up:
            raise ClusterUnavailable()
        d = self.link.call("publish", f"{self.link.prefix}node:{node_id}", orjson.dumps(event).decode())
        d.addErrback(lambda f: events.emit("warn", "cluster.publish_failed", op=event.get("op"),
                                           error=f.getErrorMessage()[:200]))

    # --- inbound

    def _deliver(self, message) -> None:
        try:
            event = orjson.loads(message)
            if self.hub is not None:
                self.hub.on_event(event)
        except Exception:
            log.failure("internal error handling a cluster event")

    # --- lease, sweep, recovery

    @inlineCallbacks
    def _renew_lease(self):
        p = self.link.prefix
        try:
            yield self.link.call("set", f"{self._channel}:alive", "1", pexpire=int(self.lease * 1000))
            yield self.link.call("sadd", f"{p}nodes", self.node_id)
        except RedisUnavailable:
            return
        # Any outage since the last registration, however short (even one this loop
        # never saw), may have deferred a leave or lost a join: register again.
        outages = self.link.outages
        if self._registered_after != outages:
            done = yield self._reregister()
            if done:
                self._registered_after = outages

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
        for entry in listed or ():
            room_id, peer_id, token = orjson.loads(entry)
            if (room_id, peer_id) in here:
                continue
            try:
                remaining = yield self.leave(room_id, peer_id, token)
            except RedisUnavailable:
                return
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
                removed = yield self.link.call(
                    "eval", SWEEP, [f"{p}node:{node}:alive", f"{p}node:{node}:members", f"{p}nodes"], [node, p])
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

    @inlineCallbacks
    def stopService(self):
        Service.stopService(self)
        for loop in self._loops:
            if loop.running:
                loop.stop()
        yield self._subscriber.stopService()
        try:  # a clean goodbye: the others need not wait for the lease to run out
            yield self.link.call("del", f"{self._channel}:alive")
        except RedisUnavailable:
            pass
