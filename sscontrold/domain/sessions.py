"""REST pairing sessions (docs/protocol.md section 2): the host posts an offer under a short
session id, the viewer reads it and posts an answer, both trickle ICE candidates.

Pure: no Twisted import. The clock is injected (a callable returning unix seconds);
``SessionStore.expire()`` is called by a timer, and every operation also checks expiry
itself, so an expired session is never served even between two sweeps.

The validation and the operations themselves are module functions (``new_session``,
``count_attempt``, ``answer_change``, ``ice_change``) and a ``Session`` round-trips
through ``to_dict``/``from_dict``, so that another store (sscontrold.redis_sessions,
sessions shared by several nodes) applies exactly the same rules.

Errors are ``SessionError`` subclasses carrying the HTTP status and the message the
REST layer answers with (``{"success": false, "error": message}``).

Compatibility notes (see also docs/protocol.md):

* ``expires_at`` is whole unix seconds, like the Rust REST server (the Worker used
  milliseconds). It is rounded up, so a session lives at least ``ttl`` seconds; it is
  expired from the second ``expires_at`` on.
* ``ttl`` in the body is optional (default ``ttl_default``), must be a whole number
  of at least ``MIN_TTL`` seconds, and is capped at ``ttl_max`` (capped, not refused).
* Enumeration guard: the Worker counted every GET and deleted the session on the
  GET that made the count exceed ``MAX_ATTEMPTS`` (with 3: GETs 1-3 answer, the 4th
  gets 429 and the session is gone). The sscontrol host polls its own session with
  GET until the answer shows up, which that rule would kill after 3 polls. Here a
  GET counts only (a) while the session is still ``waiting`` (once answered, the
  offer has gone to the viewer that answered, and both sides may poll for trickled
  candidates), and (b) when it does not come from the address that created the
  session (the host). The count, the refusal and the deletion are otherwise the
  Worker's.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping, overload

from .metrics import MemoryRecorder, Recorder


MIN_TTL = 1
SESSION_ID_MAX_LENGTH = 64
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % SESSION_ID_MAX_LENGTH)
ROLES = ("host", "client")
TOMBSTONE_SECONDS = 600  # how long an expired (or attempts-deleted) id still answers 410 (429)
TOMBSTONE_MAX = 10000  # most tombstones kept; the oldest go first


# --- errors


class SessionError(Exception):
    status = 500
    code: str | None = None  # the error body's ``code``; None: the one of ``status``

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(SessionError):
    status = 400


class NotFound(SessionError):
    status = 404


class Conflict(SessionError):
    status = 409


class Gone(SessionError):
    status = 410


class TooManyAttempts(SessionError):
    """Final: the session is deleted. Told apart from the request rate limit (also
    429, but ``rate_limited`` with a ``Retry-After``) by its code."""
    status = 429
    code = "too_many_attempts"


class StoreFull(SessionError):
    status = 503
    code = "store_full"


class QuotaExceeded(SessionError):
    """The creator's address holds as many live sessions as it may (retry once one
    of them is gone: ``Retry-After``)."""

    status = 429
    code = "too_many_sessions"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def quota_exceeded(limit: int, earliest_expiry: float, now: float) -> QuotaExceeded:
    return QuotaExceeded(f"too many live sessions from your address (at most {limit})",
                         max(1, math.ceil(earliest_expiry - now)))


# --- limits and validation


@dataclass(frozen=True)
class SessionLimits:
    # The settings' part is built by sscontrold.policies (config.FIELDS has the defaults);
    # the rest are fixed bounds of the REST session format.
    ttl_default: int
    ttl_max: int
    max_attempts: int
    max_count: int
    max_per_owner: int  # live sessions one creator address may hold
    max_sdp_bytes: int
    max_candidate_bytes: int
    max_mid_length: int
    max_candidates: int = 64  # per list (host candidates, client candidates)
    max_public_key_bytes: int = 8192
    max_pin_hash_bytes: int = 512


def _utf8_len(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


@overload
def _string(body: Mapping[str, Any], key: str, max_bytes: int, required: Literal[True] = True,
            allow_empty: bool = False, name: str | None = None) -> str: ...


@overload
def _string(body: Mapping[str, Any], key: str, max_bytes: int, required: bool,
            allow_empty: bool = False, name: str | None = None) -> str | None: ...


def _string(body: Mapping[str, Any], key: str, max_bytes: int, required: bool = True,
            allow_empty: bool = False, name: str | None = None) -> str | None:
    """``body[key]`` checked; ``name`` (default ``key``) is how errors call the field."""
    name = name or key
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if not value and not allow_empty:
        raise BadRequest(f"{name} must not be empty")
    if len(value) > max_bytes or _utf8_len(value) > max_bytes:
        raise BadRequest(f"{name} is longer than {max_bytes} bytes")
    return value


def validate_session_id(value: Any, name: str = "session_id") -> str:
    if value is None:
        raise BadRequest(f"{name} is required")
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if SESSION_ID_RE.fullmatch(value) is None:
        raise BadRequest(f"{name} must be 1 to {SESSION_ID_MAX_LENGTH} characters of A-Z a-z 0-9 _ -")
    return value


@dataclass(frozen=True)
class IceCandidate:
    candidate: str
    sdp_mid: str | None = None
    sdp_m_line_index: int | None = None

    @classmethod
    def from_json(cls, value: Any, name: str, limits: SessionLimits) -> "IceCandidate":
        if not isinstance(value, dict):
            raise BadRequest(f"{name} must be an object with a candidate string")
        candidate = _string(value, "candidate", limits.max_candidate_bytes, allow_empty=True,
                            name=f"{name}.candidate")
        mid = value.get("sdpMid")
        if mid is not None and (not isinstance(mid, str) or len(mid) > limits.max_mid_length):
            raise BadRequest(f"{name}.sdpMid must be a string of at most {limits.max_mid_length} characters")
        index = value.get("sdpMLineIndex")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)
                                  or not 0 <= index <= 65535):
            raise BadRequest(f"{name}.sdpMLineIndex must be a whole number from 0 to 65535")
        return cls(candidate, mid, index)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"candidate": self.candidate}
        if self.sdp_mid is not None:
            out["sdpMid"] = self.sdp_mid
        if self.sdp_m_line_index is not None:
            out["sdpMLineIndex"] = self.sdp_m_line_index
        return out


def _candidate(body: Mapping[str, Any], name: str, limits: SessionLimits) -> IceCandidate:
    value = body.get(name)
    if value is None:
        raise BadRequest(f"{name} is required")
    return IceCandidate.from_json(value, name, limits)


def _candidates(body: Mapping[str, Any], name: str, limits: SessionLimits,
                required: bool) -> list[IceCandidate]:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required")
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{name} must be a list of ICE candidates")
    if len(value) > limits.max_candidates:
        raise BadRequest(f"{name} has more than {limits.max_candidates} entries")
    return [IceCandidate.from_json(item, f"{name}[{i}]", limits) for i, item in enumerate(value)]


def _ttl(body: Mapping[str, Any], limits: SessionLimits) -> int:
    value = body.get("ttl")
    if value is None:
        return min(limits.ttl_default, limits.ttl_max)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise BadRequest("ttl must be a whole number of seconds")
    if value < MIN_TTL:
        raise BadRequest(f"ttl must be at least {MIN_TTL} second")
    return int(min(value, limits.ttl_max))


# --- the sessions


@dataclass
class Session:
    session_id: str
    offer: str
    candidates: list[IceCandidate]
    expires_at: int
    public_key: str | None = None
    pin_hash: str | None = None
    owner: str | None = None  # address of the creator (the host); its GETs are not counted
    status: str = "waiting"
    answer: str | None = None
    client_candidates: list[IceCandidate] = field(default_factory=list)
    attempts: int = 0

    def view(self) -> dict[str, Any]:
        """The GET answer: like the Rust server, optional fields are left out when unset
        (``client_candidates`` also when empty); ``pin_hash`` is never shown."""
        out: dict[str, Any] = {"offer": self.offer, "candidates": [c.to_json() for c in self.candidates]}
        if self.public_key is not None:
            out["public_key"] = self.public_key
        out["expires_at"] = self.expires_at
        out["status"] = self.status
        if self.answer is not None:
            out["answer"] = self.answer
        if self.client_candidates:
            out["client_candidates"] = [c.to_json() for c in self.client_candidates]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything, as JSON-able values (for a store that keeps sessions elsewhere)."""
        return {"session_id": self.session_id, "offer": self.offer,
                "candidates": [c.to_json() for c in self.candidates], "expires_at": self.expires_at,
                "public_key": self.public_key, "pin_hash": self.pin_hash, "owner": self.owner,
                "status": self.status, "answer": self.answer,
                "client_candidates": [c.to_json() for c in self.client_candidates], "attempts": self.attempts}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> "Session":
        """The inverse of ``to_dict`` (trusted input: no validation)."""
        def candidates(items: Iterable[Mapping[str, Any]]) -> list[IceCandidate]:
            return [IceCandidate(c["candidate"], c.get("sdpMid"), c.get("sdpMLineIndex")) for c in items]
        return cls(value["session_id"], value["offer"], candidates(value["candidates"]), value["expires_at"],
                   value.get("public_key"), value.get("pin_hash"), value.get("owner"),
                   value.get("status", "waiting"), value.get("answer"),
                   candidates(value.get("client_candidates") or ()), value.get("attempts", 0))


# --- the operations, shared by the stores


def new_session(body: Mapping[str, Any], limits: SessionLimits, now: float,
                owner: str | None = None) -> Session:
    """The session a create body describes (validated), expiring ``ttl`` seconds after ``now``."""
    session_id = validate_session_id(body.get("session_id"))
    offer = _string(body, "offer", limits.max_sdp_bytes)
    candidates = _candidates(body, "candidates", limits, required=True)
    public_key = _string(body, "public_key", limits.max_public_key_bytes, required=False)
    pin_hash = _string(body, "pin_hash", limits.max_pin_hash_bytes, required=False)
    ttl = _ttl(body, limits)
    return Session(session_id, offer, candidates, math.ceil(now + ttl), public_key, pin_hash, owner)


NOT_COUNTED, COUNTED, EXCEEDED = "not counted", "counted", "exceeded"


def count_attempt(session: Session, address: str | None, limits: SessionLimits) -> str:
    """Count a GET of ``session`` from ``address``: ``NOT_COUNTED`` (nothing changed),
    ``COUNTED`` (``attempts`` went up) or ``EXCEEDED`` (one too many: the session must go,
    leaving a too-many-attempts tombstone)."""
    if session.status == "waiting" and (address is None or address != session.owner):
        session.attempts += 1
        return EXCEEDED if session.attempts > limits.max_attempts else COUNTED
    return NOT_COUNTED


def answer_change(body: Mapping[str, Any], limits: SessionLimits) -> Callable[[Session], None]:
    """Validate an answer body; the returned function applies it to a session."""
    answer = _string(body, "answer", limits.max_sdp_bytes)
    candidates = _candidates(body, "candidates", limits, required=False)

    def apply(session: Session) -> None:
        # As in both earlier servers, a second answer replaces the first (a retried POST).
        session.answer = answer
        session.client_candidates = list(candidates)
        session.status = "answered"
    return apply


def ice_change(body: Mapping[str, Any], limits: SessionLimits) -> Callable[[Session], None]:
    """Validate an ICE body; the returned function adds the candidate to a session (or
    raises BadRequest when the session has as many as it may hold)."""
    role = body.get("role")
    if role is None:
        raise BadRequest("role is required")
    if role not in ROLES:  # also a non-string
        raise BadRequest("role must be 'host' or 'client'")
    candidate = _candidate(body, "candidate", limits)

    def apply(session: Session) -> None:
        target = session.candidates if role == "host" else session.client_candidates
        if len(target) >= limits.max_candidates:
            raise BadRequest(f"the session already has {limits.max_candidates} {role} candidates")
        target.append(candidate)
    return apply


_EXPIRED = "expired"
_ATTEMPTS = "attempts"


class SessionStore:
    """In-memory sessions. ``limits`` may be replaced at any time (settings reload);
    existing sessions keep their expiry."""

    def __init__(self, clock: Callable[[], float], limits: SessionLimits,
                 recorder: Recorder | None = None):
        self.clock = clock
        self.limits = limits
        self.recorder = recorder if recorder is not None else MemoryRecorder()
        self._sessions: dict[str, Session] = {}
        self._expiry: list[tuple[int, str]] = []  # heap; entries of deleted sessions linger
        self._tombstones: OrderedDict[str, tuple[float, str]] = OrderedDict()  # id -> (until, why)
        self._owned: dict[str, set[str]] = {}  # creator address -> its live sessions' ids
        self._publish()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    # --- operations

    def count(self) -> int:
        return len(self._sessions)

    def create(self, body: Mapping[str, Any], owner: str | None = None) -> Session:
        limits = self.limits
        now = self.clock()
        session = new_session(body, limits, now, owner)
        session_id = session.session_id
        self.expire(now)
        if session_id in self._sessions:
            raise Conflict("session already exists")
        owned = self._owned.get(owner) if owner is not None else None
        if owned is not None and len(owned) >= limits.max_per_owner:
            earliest = min(self._sessions[sid].expires_at for sid in owned)
            raise quota_exceeded(limits.max_per_owner, earliest, now)
        if len(self._sessions) >= limits.max_count:
            raise StoreFull("too many sessions, try again later")
        self._tombstones.pop(session_id, None)
        self._sessions[session_id] = session
        if owner is not None:
            self._owned.setdefault(owner, set()).add(session_id)
        heapq.heappush(self._expiry, (session.expires_at, session_id))
        self._compact()
        self._publish()
        return session

    def get(self, session_id: str, address: str | None = None) -> dict[str, Any]:
        """The session's public view. A GET while the session is waiting for its answer,
        from another address than its creator's, counts as an attempt."""
        session = self._live(session_id)
        if count_attempt(session, address, self.limits) == EXCEEDED:
            self._drop(session_id, _ATTEMPTS)
            raise TooManyAttempts("too many attempts")
        return session.view()

    def answer(self, session_id: str, body: Mapping[str, Any]) -> Session:
        validate_session_id(session_id, "session id")
        change = answer_change(body, self.limits)
        session = self._live(session_id)
        change(session)
        return session

    def add_ice(self, session_id: str, body: Mapping[str, Any]) -> Session:
        validate_session_id(session_id, "session id")
        change = ice_change(body, self.limits)
        session = self._live(session_id)
        change(session)
        return session

    def delete(self, session_id: str) -> None:
        self._live(session_id)
        self._drop(session_id, None)

    def expire(self, now: float | None = None) -> int:
        """Drop every session whose time is up (and old tombstones); return how many."""
        now = self.clock() if now is None else now
        dropped = 0
        heap = self._expiry
        while heap and heap[0][0] <= now:
            expires_at, session_id = heapq.heappop(heap)
            session = self._sessions.get(session_id)
            if session is not None and session.expires_at <= now:
                self._drop(session_id, _EXPIRED, now)
                dropped += 1
        tombstones = self._tombstones
        while tombstones:
            session_id, (until, _) = next(iter(tombstones.items()))
            if until > now:
                break
            del tombstones[session_id]
        return dropped

    # --- internals

    def _live(self, session_id: str) -> Session:
        """The live session, or the error for an unknown, expired or deleted id."""
        validate_session_id(session_id, "session id")
        session = self._sessions.get(session_id)
        now = self.clock()
        if session is not None:
            if session.expires_at > now:
                return session
            self._drop(session_id, _EXPIRED, now)
        tombstone = self._tombstones.get(session_id)
        if tombstone is not None and tombstone[0] > now:
            if tombstone[1] == _ATTEMPTS:
                raise TooManyAttempts("too many attempts")
            raise Gone("session expired")
        raise NotFound("session not found")

    def _drop(self, session_id: str, why: str | None, now: float | None = None) -> None:
        session = self._sessions.pop(session_id)
        if session.owner is not None:
            owned = self._owned.get(session.owner)
            if owned is not None:
                owned.discard(session_id)
                if not owned:
                    del self._owned[session.owner]
        if why is not None:
            now = self.clock() if now is None else now
            self._tombstones.pop(session_id, None)
            self._tombstones[session_id] = (now + TOMBSTONE_SECONDS, why)
            while len(self._tombstones) > TOMBSTONE_MAX:
                self._tombstones.popitem(last=False)
        self._publish()

    def _compact(self) -> None:
        # Entries of deleted sessions stay in the heap until their time; rebuild it when
        # they outnumber the live ones, so create/delete churn cannot grow it unbounded.
        if len(self._expiry) > 2 * len(self._sessions) + 1024:
            self._expiry = [(s.expires_at, sid) for sid, s in self._sessions.items()]
            heapq.heapify(self._expiry)

    def _publish(self) -> None:
        self.recorder.sessions(len(self._sessions))
