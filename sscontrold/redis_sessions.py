"""REST pairing sessions (docs/protocol.md section 2) in Redis, shared by every node: the host
may create on one node, the viewer read and answer on another. The rules (validation,
attempts guard, tombstones) are those of sscontrold.domain.sessions, applied to a
``Session`` read from Redis; every operation returns a Deferred and fails with
RedisUnavailable while Redis is away.

Keys (after the link's prefix), for a session ``<id>``:

* ``session:<id>``: the session as JSON, with PX = its time to live, so Redis drops it
  itself when it expires (``expire()`` sweeps nothing here).
* ``session:<id>:gone``: its tombstone. Set to ``expired`` at creation, living
  ``TOMBSTONE_SECONDS`` longer than the session, so an id whose session is missing
  but whose tombstone says ``expired`` answers 410 for that long after its expiry;
  set to ``attempts`` (``TOMBSTONE_SECONDS``) when too many attempts deleted the
  session (429); deleted with the session by a DELETE (404 afterwards).
* ``sessions``: a sorted set of live ids scored by ``expires_at``, for the count limit
  (``session_max_count`` over all nodes, checked in the create script) and the count
  reported by ``count()``. Expired members are pruned by creates and by the count
  refresh that the expiry timer runs every second.

Updates are optimistic: read the JSON, apply the change in Python, and write it back
with a script that sets it (KEEPTTL, Redis >= 6.0) only if the stored value still has
the SHA-1 that was read; if another node changed it meanwhile, read again and retry.
Each lost round means another writer won one, so concurrent steps (two nodes adding
ICE candidates at once) all land. The scripts touch several keys: a single Redis (or
a primary), not Redis Cluster, like the other Redis stores.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Mapping

import orjson
import txredisapi
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .domain.metrics import Recorder
from .domain.sessions import (
    EXCEEDED, NOT_COUNTED, TOMBSTONE_SECONDS, Conflict, Gone, NotFound, Session,
    SessionError, SessionLimits, StoreFull, TooManyAttempts, answer_change, count_attempt, ice_change,
    new_session, quota_exceeded, validate_session_id)
from .metrics import PROMETHEUS
from .redis import RedisLink, RedisUnavailable

log = Logger(namespace="sscontrold.redis_sessions")

CAS_TRIES = 32  # read-modify-write rounds before giving up (each lost round is another writer's win)

_EXPIRED = "expired"
_ATTEMPTS = "attempts"

# KEYS: session, gone, index, owner's index. ARGV: json, px, gone px, now, max count, id,
# expires_at, max per owner ('' for no owner).
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
if ARGV[8] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[4])
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[8]) then
    return 'quota:' .. redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')[2]
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return 'full' end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], 'expired', 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6])
if ARGV[8] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[6])
  if redis.call('PTTL', KEYS[4]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[4], ARGV[2]) end
end
return 'created'
"""

# KEYS: session, gone, index, owner's index. ARGV: SHA-1 of the value read, new json ('' to drop),
# tombstone ('' for none), tombstone px, id.
CAS = """
local current = redis.call('GET', KEYS[1])
if not current or redis.sha1hex(current) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[5])
redis.call('ZREM', KEYS[4], ARGV[5])
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
else
  redis.call('DEL', KEYS[2])
end
return 1
"""

# KEYS: index. ARGV: now.
COUNT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZCARD', KEYS[1])
"""


class SessionsBusy(SessionError):
    status = 503


def _sha1(raw: str) -> str:
    """A fingerprint of what was read, compared with Redis's redis.sha1hex (CAS): no secret."""
    return hashlib.sha1(raw.encode("utf-8"), usedforsecurity=False).hexdigest()


class RedisSessionStore:
    """The SessionStore operations on Redis, returning Deferreds. ``limits_getter``
    returns the current SessionLimits (read at every operation)."""

    def __init__(self, link: RedisLink, limits_getter: Callable[[], SessionLimits], recorder: Recorder = PROMETHEUS):
        self._link = link
        self._limits = limits_getter
        self._recorder = recorder
        self._count: int | None = None
        self._counting = False
        self._index = f"{link.prefix}sessions"

    @property
    def limits(self) -> SessionLimits:
        return self._limits()

    def count(self) -> int | None:
        """Live sessions over all nodes as of the last refresh (at most about a second
        old), or None while unknown (Redis away)."""
        return self._count

    # --- operations

    def create(self, body: Mapping[str, Any], owner: str | None = None) -> Deferred:
        return Deferred.fromCoroutine(self._create(body, owner))

    def get(self, session_id: str, address: str | None = None) -> Deferred:
        return Deferred.fromCoroutine(self._get(session_id, address))

    def answer(self, session_id: str, body: Mapping[str, Any]) -> Deferred:
        return Deferred.fromCoroutine(self._change(session_id, answer_change, body))

    def add_ice(self, session_id: str, body: Mapping[str, Any]) -> Deferred:
        return Deferred.fromCoroutine(self._change(session_id, ice_change, body))

    def delete(self, session_id: str) -> Deferred:
        return Deferred.fromCoroutine(self._delete(session_id))

    def expire(self, now: float | None = None) -> int:
        """Redis expires the sessions itself: nothing to drop here. Refreshes the count."""
        if not self._counting:
            self._counting = True
            d = Deferred.fromCoroutine(self._refresh_count())
            d.addErrback(lambda f: log.failure("internal error counting the sessions", f))
            d.addBoth(self._counted)
        return 0

    # --- the coroutines

    async def _create(self, body, owner) -> Session:
        limits = self._limits()
        now = self._now()
        session = new_session(body, limits, now, owner)
        ttl_ms = max(1, int((session.expires_at - now) * 1000))
        sid = session.session_id
        reply = await self._call("eval", CREATE, [self._key(sid), self._gone(sid), self._index, self._owner(owner)],
                                 [self._encode(session), ttl_ms, ttl_ms + TOMBSTONE_SECONDS * 1000,
                                  repr(now), limits.max_count, sid, session.expires_at,
                                  "" if owner is None else limits.max_per_owner])
        if reply == "exists":
            raise Conflict("session already exists")
        if isinstance(reply, str) and reply.startswith("quota:"):
            raise quota_exceeded(limits.max_per_owner, float(reply[6:]), now)
        if reply == "full":
            raise StoreFull("too many sessions, try again later")
        return session

    async def _get(self, session_id, address) -> dict:
        for _ in range(CAS_TRIES):
            raw, session = await self._live(session_id)
            outcome = count_attempt(session, address, self._limits())
            if outcome == NOT_COUNTED:
                return session.view()
            if outcome == EXCEEDED:
                if await self._cas(raw, session_id, None, _ATTEMPTS):
                    raise TooManyAttempts("too many attempts")
            elif await self._cas(raw, session_id, session):
                return session.view()
        raise SessionsBusy("session busy, retry")

    async def _change(self, session_id, make_change, body) -> Session:
        validate_session_id(session_id, "session id")
        change = make_change(body, self._limits())
        for _ in range(CAS_TRIES):
            raw, session = await self._live(session_id)
            change(session)
            if await self._cas(raw, session_id, session):
                return session
        raise SessionsBusy("session busy, retry")

    async def _delete(self, session_id) -> None:
        for _ in range(CAS_TRIES):
            raw, _ = await self._live(session_id)
            if await self._cas(raw, session_id, None, None):
                return
        raise SessionsBusy("session busy, retry")

    async def _refresh_count(self) -> None:
        if not self._link.up:
            self._count = None
            return
        try:
            count = await self._call("eval", COUNT, [self._index], [repr(self._now())])
        except (RedisUnavailable, txredisapi.ResponseError, StoreFull):
            self._count = None
            return
        self._count = int(count)
        self._recorder.sessions(self._count)

    def _counted(self, _):
        self._counting = False

    # --- internals

    async def _live(self, session_id: str) -> tuple[str, Session]:
        """(stored JSON, session) of the live session, or the error for an unknown,
        expired or deleted id."""
        validate_session_id(session_id, "session id")
        raw, gone = await self._call("mget", [self._key(session_id), self._gone(session_id)])
        if raw is not None:
            session = Session.from_dict(orjson.loads(raw))
            if session.expires_at > self._now():
                return raw, session
            raise Gone("session expired")  # Redis drops it within a moment
        if gone == _ATTEMPTS:
            raise TooManyAttempts("too many attempts")
        if gone == _EXPIRED:
            raise Gone("session expired")
        raise NotFound("session not found")

    async def _cas(self, raw: str, session_id: str, session: Session | None, tombstone: str | None = None) -> bool:
        """Replace the stored ``raw`` with ``session`` (or drop it, leaving ``tombstone``)
        if nobody changed it since it was read."""
        owner = orjson.loads(raw).get("owner")
        reply = await self._call("eval", CAS, [self._key(session_id), self._gone(session_id), self._index,
                                               self._owner(owner)],
                                 [_sha1(raw), "" if session is None else self._encode(session), tombstone or "",
                                  TOMBSTONE_SECONDS * 1000, session_id])
        return reply == 1

    async def _call(self, method: str, *args):
        try:
            return await self._link.call(method, *args)
        except txredisapi.ResponseError as e:
            if str(e).startswith("OOM"):  # maxmemory reached (with noeviction)
                raise StoreFull("too many sessions, try again later") from None
            raise

    def _now(self) -> float:
        return self._link.clock.seconds()

    def _key(self, session_id: str) -> str:
        return f"{self._link.prefix}session:{session_id}"

    def _owner(self, owner: str | None) -> str:
        """The sorted set of a creator address's live sessions (its quota, over all nodes)."""
        return f"{self._link.prefix}owner:{owner or ''}"

    def _gone(self, session_id: str) -> str:
        return f"{self._link.prefix}session:{session_id}:gone"

    @staticmethod
    def _encode(session: Session) -> str:
        return orjson.dumps(session.to_dict()).decode()
