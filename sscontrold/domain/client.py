"""One signaling connection's state machine: parses, validates and dispatches
each frame of the sscontrol protocol to ``handle_<type>``.

It knows nothing of Twisted or Autobahn: it reaches its peer through a
``Connection`` (send a message, close with a WebSocket code) and reads time from
an injected clock.
"""

from __future__ import annotations

import enum
import secrets
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, Iterator, Protocol, cast

import orjson

from .auth import Authenticator, AuthRefused
from .cluster import ClusterUnavailable, undelivered_error
from .limits import FailureGuard, TokenBucket
from .metrics import MemoryRecorder, Recorder
from .ports import Clock, Events, Spawn, Timer
from .rooms import Hub, NotInRoom, Resumed, RoomFull, UnknownPeer, UnknownToken

# WebSocket close codes (RFC 6455 section 7.4.1)
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009  # sent by Autobahn (max_message_bytes, max_frame_bytes); docs/protocol.md lists it

MAX_AUTH_FAILURES = 5  # then the connection is closed with 1008

MAX_WAITING = 64  # messages kept in order behind a step that waits on Redis



class Outcome(enum.Enum):
    """What became of a message ``Client.receive`` was given."""

    HANDLED = "handled"  # acted on here (answered, or nothing to answer)
    RELAYED = "relayed"  # delivered to a peer of the room (or handed to the cluster for it)
    PENDING = "pending"  # waits on the cluster store, or behind a step that does
    REFUSED = "refused"  # answered with an error, or dropped (over the rate, closing)


HANDLED, RELAYED, PENDING, REFUSED = Outcome.HANDLED, Outcome.RELAYED, Outcome.PENDING, Outcome.REFUSED


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Connection(Protocol):
    def send(self, message: dict[str, Any]) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


# A handler of a message type the node adds (e.g. "turn"): it answers through the client.
Extension = Callable[["Client", dict[str, Any]], None]

# What a handler may answer that waits on the cluster store: run it with spawn.
Step = Coroutine[Any, Any, None]


@dataclass(frozen=True)
class MessageLimits:
    """Built from the settings by sscontrold.policies (no defaults here: config.FIELDS has them)."""

    max_id_length: int
    max_sdp_bytes: int
    max_candidate_bytes: int
    rate_per_second: float
    rate_burst: int
    rate_strikes: int
    auth_timeout: float


class BadMessage(Exception):
    def __init__(self, message: str, code: str = "bad_message"):
        super().__init__(message)
        self.message = message
        self.code = code


def new_peer_id() -> str:
    """Unguessable and unique: 128 random bits."""
    return "peer_" + secrets.token_urlsafe(16)


class Client:
    """Protocol state of one connected client."""

    def __init__(
        self,
        connection: Connection,
        hub: Hub,
        authenticator: Authenticator,
        limits: MessageLimits,
        clock: Clock,
        events: Events,
        address: str,
        extensions: dict[str, Extension] | None = None,
        spawn: Spawn | None = None,
        failures: FailureGuard | None = None,
        recorder: Recorder | None = None,
    ):
        self.connection = connection
        self.hub = hub
        self.authenticator = authenticator
        self.limits = limits
        self.clock = clock
        self.events = events
        self.address = address
        self.peer_id = new_peer_id()
        self.device_id: str | None = None
        self.authenticated = not authenticator.enabled
        self.closed = False
        self.recorder = recorder if recorder is not None else MemoryRecorder()
        self._messages = self.recorder.messages  # counted per message: one lookup less
        self._released = False  # asked to reconnect; its connection is still closing
        self._closing = False  # closed by the server for cause
        self._auth_failures = 0
        self._bucket = TokenBucket(limits.rate_per_second, limits.rate_burst, limits.rate_strikes, clock.seconds)
        self._extensions = extensions or {}
        self._spawn = spawn  # runs a coroutine to its end (the adapter's event loop)
        self._failures = failures  # failed auths per address (shared by the node's connections)
        self._waiting: deque[tuple[bytes, bool]] | None = None
        self._auth_deadline: Timer | None = None
        self._timers: dict[str, Timer] = {}  # named per-connection timers (schedule())
        if not self.authenticated:
            self._auth_deadline = clock.callLater(limits.auth_timeout, self._auth_timed_out)

    @property
    def bound_device(self) -> str | None:
        """The device this connection authenticated as, when auth is on: resume
        tokens are bound to it."""
        return self.device_id if self.authenticator.enabled and self.authenticated else None

    # --- to the peer

    def send(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self.connection.send(message)

    def send_error(self, message: str, code: str) -> None:
        self.recorder.error(code)  # codes are a fixed set of literals: low cardinality
        self.send({"type": "error", "message": message, "code": code})

    def close(self, code: int, reason: str) -> None:
        self._closing = True  # what the peer sends during the close handshake is ignored
        if not self.closed:
            self.connection.close(code, reason)

    def schedule(self, name: str, delay: float, f: Callable[[], None]) -> None:
        """Run ``f`` in ``delay`` seconds unless the connection ends first; a timer of
        the same name is replaced. Extensions (TURN refresh) keep their timers here so
        that a closed connection holds none."""
        old = self._timers.pop(name, None)
        if old is not None and old.active():
            old.cancel()
        if self.closed:
            return

        def fire() -> None:
            self._timers.pop(name, None)
            if not self.closed:
                f()

        self._timers[name] = self.clock.callLater(delay, fire)

    def _cancel_timers(self) -> None:
        timers, self._timers = self._timers, {}
        for timer in timers.values():
            if timer.active():
                timer.cancel()

    # --- from the peer

    def receive(self, payload: bytes, is_binary: bool = False) -> Outcome:
        """Handle one WebSocket message and say what became of it. One waits (PENDING)
        behind a step still under way, to keep the client's order; it is counted
        when its turn comes."""
        if self._closing:
            return REFUSED
        if self._waiting is not None:
            if len(self._waiting) >= MAX_WAITING:
                self.close(CLOSE_POLICY_VIOLATION, "too many messages while the server was busy")
                return REFUSED
            self._waiting.append((payload, is_binary))
            return PENDING
        return self._dispatch(payload, is_binary)

    def receive_control(self, kind: str) -> bool:
        """A ping or pong from the peer: it counts against the message rate like any
        message. Returns whether to answer it (a ping over the rate gets no pong)."""
        if self._closing:
            return False
        verdict = self._bucket.take()
        if verdict != "ok":
            self._rate_refused(verdict)
            return False
        self._messages[kind] += 1
        return True

    def _rate_refused(self, verdict: str) -> None:
        """A message over the rate: warn, answer with an error or close, count it."""
        self.events.emit("warn", "limit.rate", address=self.address, device_id=self.device_id,
                         peer_id=self.peer_id, action=verdict)
        if verdict == "close":
            self.recorder.error("rate_limit_close")
            self.close(CLOSE_POLICY_VIOLATION, "message rate limit exceeded")
        else:
            self.send_error("rate limit exceeded: slow down", "rate_limited")
        self._messages["rate_limited"] += 1

    def _dispatch(self, payload: bytes, is_binary: bool) -> Outcome:
        # Each message is counted once by its type label (handler names and a few
        # labels: a bounded set), inline: this is the relay path.
        messages = self._messages
        verdict = self._bucket.take()
        if verdict != "ok":
            self._rate_refused(verdict)
            return REFUSED
        if is_binary:
            messages["invalid"] += 1
            self.send_error("binary frames are not supported: send JSON text frames", "bad_message")
            return REFUSED
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            messages["invalid"] += 1
            # The transport leaves UTF-8 to the parser; a text message that is not
            # UTF-8 breaks the WebSocket protocol itself (RFC 6455 8.1).
            if not _is_utf8(payload):
                self.recorder.error("invalid_utf8")
                self.close(CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in a text message")
                return REFUSED
            self.send_error("invalid JSON", "bad_message")
            return REFUSED
        if not isinstance(message, dict):
            messages["invalid"] += 1
            self.send_error("a message must be a JSON object", "bad_message")
            return REFUSED
        kind = message.get("type")
        if not isinstance(kind, str):
            messages["invalid"] += 1
            self.send_error("missing or non-string field 'type'", "bad_message")
            return REFUSED
        handler = _HANDLERS.get(kind) or self._extensions.get(kind)
        if handler is None:
            messages["unknown"] += 1
            self.send_error(f"unknown message type {kind[:32]!r}", "unknown_type")
            return REFUSED
        messages[kind] += 1
        if kind != "auth" and not self.authenticated:
            self.send_error("authentication required", "auth_required")
            return REFUSED
        try:
            step = handler(self, message)
        except BadMessage as e:
            self.send_error(e.message, e.code)
            return REFUSED
        if step is None:
            return HANDLED
        if isinstance(step, Outcome):  # a relay: delivered, or answered with an error
            return step
        # a coroutine: it waits on the cluster store
        self._waiting = deque()
        # Only a hub that waits on a store answers later, and the node passes spawn with one.
        cast(Spawn, self._spawn)(self._finish(step))
        return PENDING

    async def _finish(self, step: Awaitable[None]) -> None:
        try:
            await step
        except BadMessage as e:
            self.send_error(e.message, e.code)
        finally:
            waiting, self._waiting = self._waiting, None
            while waiting:
                if self._waiting is not None:  # another step started: the rest waits behind it
                    self._waiting.extend(waiting)
                    break
                self.receive(*waiting.popleft())

    def release(self, code: int, reason: str) -> None:
        """Ask the client to reconnect (and resume): its place is held from now on,
        so nothing sent to it during the close handshake is lost."""
        if self.closed:
            return
        self.closed = True
        if self._auth_deadline is not None and self._auth_deadline.active():
            self._auth_deadline.cancel()
        self._cancel_timers()
        self._released = True
        if self.hub.detach(self, still_open=True):
            self.events.emit("info", "room.detach", address=self.address, device_id=self.device_id,
                             peer_id=self.peer_id)
        self.connection.close(code, reason)

    def disconnected(self, resumable: bool = False) -> None:
        """The connection is gone. ``resumable``: it dropped (or the server asked the
        client to reconnect), so the peer's place is held for the resume grace;
        otherwise (a deliberate close) the peer leaves at once."""
        if self.closed:
            if self._released:
                self._released = False
                self.hub.connection_closed(self.peer_id)
            return
        self.closed = True
        if self._auth_deadline is not None and self._auth_deadline.active():
            self._auth_deadline.cancel()
        self._cancel_timers()
        if resumable and self.hub.detach(self):
            self.events.emit("info", "room.detach", address=self.address, device_id=self.device_id,
                             peer_id=self.peer_id)
            return
        room = self.hub.leave(self)
        if room is not None:
            self.events.emit("info", "room.leave", address=self.address, device_id=self.device_id,
                             peer_id=self.peer_id, reason="disconnect")

    # --- field validation

    def _str(self, message: dict[str, Any], field: str, max_len: int, *, allow_empty: bool = False,
             measure_bytes: bool = False) -> str:
        value = message.get(field)
        if not isinstance(value, str):
            raise BadMessage(f"missing or non-string field '{field}'")
        if not value and not allow_empty:
            raise BadMessage(f"field '{field}' must not be empty")
        size = len(value.encode()) if measure_bytes else len(value)
        if size > max_len:
            raise BadMessage(f"field '{field}' is too long (at most {max_len})", "too_long")
        return value

    def _int(self, message: dict[str, Any], field: str, low: int, high: int) -> int:
        value = message.get(field)
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadMessage(f"missing or non-integer field '{field}'")
        if not low <= value <= high:
            raise BadMessage(f"field '{field}' must be between {low} and {high}")
        return value

    # --- handlers, one per message type

    def handle_auth(self, message: dict[str, Any]) -> Step | None:
        limit = self.limits.max_id_length
        device_id = self._str(message, "device_id", limit)
        if "api_key" in message and not isinstance(message["api_key"], str):
            raise BadMessage("field 'api_key' must be a string")
        timestamp = self._int(message, "timestamp", 0, 2**53)
        nonce = self._str(message, "nonce", limit)
        token = self._str(message, "token", 128)
        if not self.authenticator.enabled:
            self.recorder.auth("accepted", "auth_disabled")
            self.device_id = device_id
            self.send({"type": "auth_success", "message": "authentication is disabled on this server"})
            return None
        failures = self._failures
        if failures is not None and failures.throttle.retry_after(self.address) > 0:
            # Too many failures from this address of late: not even checked.
            failures.throttle.failed(self.address)
            self.recorder.auth("refused", "throttled")
            failures.emit(self.events, "warn", "auth.throttled", address=self.address, via="websocket")
            self.close(CLOSE_POLICY_VIOLATION, "too many failed authentication attempts from your address")
            return None
        try:
            pending = self.authenticator.verify(device_id, timestamp, nonce, token)
        except AuthRefused as refused:
            self._auth_refused(device_id, refused)
            return None
        if pending is not None:
            return self._auth_after(pending, device_id)
        self._auth_accepted(device_id)
        return None

    async def _auth_after(self, pending: Awaitable[None], device_id: str) -> None:
        try:
            await pending
        except AuthRefused as refused:
            self._auth_refused(device_id, refused)
            return
        self._auth_accepted(device_id)

    def _auth_refused(self, device_id: str, refused: AuthRefused) -> None:
        self._auth_failures += 1
        self.recorder.auth("refused", refused.reason)
        if self._failures is not None:
            self._failures.throttle.failed(self.address)
            self._failures.emit(self.events, "warn", "auth.refused", address=self.address, device_id=device_id,
                                reason=refused.reason)
        else:
            self.events.emit("warn", "auth.refused", address=self.address, device_id=device_id,
                             reason=refused.reason)
        self.send_error(refused.message, "auth_failed")
        if self._auth_failures >= MAX_AUTH_FAILURES:
            self.close(CLOSE_POLICY_VIOLATION, "too many failed authentication attempts")

    def _auth_accepted(self, device_id: str) -> None:
        self.recorder.auth("accepted", "token")
        self.authenticated = True
        self.device_id = device_id
        if self._auth_deadline is not None and self._auth_deadline.active():
            self._auth_deadline.cancel()
        self.events.emit("info", "auth.accepted", address=self.address, device_id=device_id,
                         peer_id=self.peer_id)
        self.send({"type": "auth_success", "message": "authenticated"})

    def handle_join(self, message: dict[str, Any]) -> Step | None:
        room_id = self._str(message, "room_id", self.limits.max_id_length)
        previous = self.hub.room_of(self)
        with self._room_errors():
            others = self.hub.join(self, room_id)
        if isinstance(others, list):
            self._joined(room_id, previous, others)
            return None
        return self._join_after(others, room_id, previous)  # the cluster store answers later

    async def _join_after(self, pending: Awaitable[list[str]], room_id: str, previous: str | None) -> None:
        with self._room_errors():
            others = await pending
        self._joined(room_id, previous, others)

    @contextmanager
    def _room_errors(self) -> Iterator[None]:
        try:
            yield
        except RoomFull:
            self.events.emit("warn", "limit.room_full", address=self.address, device_id=self.device_id,
                             peer_id=self.peer_id)
            raise BadMessage("room full", "room_full") from None
        except ClusterUnavailable:
            raise BadMessage("the cluster is unavailable: try again shortly", "cluster_unavailable") from None

    def _joined(self, room_id: str, previous: str | None, others: list[str]) -> None:
        if self.closed:
            return
        if previous is not None and previous != room_id:
            self.events.emit("info", "room.leave", address=self.address, device_id=self.device_id,
                             peer_id=self.peer_id, reason="moved")
        self.events.emit("info", "room.join", address=self.address, device_id=self.device_id,
                         peer_id=self.peer_id, peers=len(others))
        self.send({"type": "peers", "peers": [{"id": pid} for pid in others], "peer_id": self.peer_id,
                   "resume_token": self.hub.resume_token(self)})

    def handle_resume(self, message: dict[str, Any]) -> Step | None:
        """Take back the place of a peer whose connection dropped (an extension:
        the answer, ``resumed``, goes only to clients that ask)."""
        token = self._str(message, "resume_token", 128)
        if self.hub.room_of(self) is not None:
            raise BadMessage("resume on a new connection, before any join", "already_joined")
        fresh_id = self.peer_id
        try:
            resumed = self.hub.resume(token, self)
        except UnknownToken:
            raise BadMessage("unknown or expired resume token: join again", "resume_failed") from None
        if isinstance(resumed, Resumed):
            self._resumed(resumed, fresh_id)
            return None
        return self._resume_after(resumed, fresh_id)  # the peer is on another node

    async def _resume_after(self, pending: Awaitable[Resumed], fresh_id: str) -> None:
        try:
            resumed = await pending
        except UnknownToken:
            raise BadMessage("unknown or expired resume token: join again", "resume_failed") from None
        except ClusterUnavailable:
            raise BadMessage("the cluster is unavailable: try again shortly", "cluster_unavailable") from None
        self._resumed(resumed, fresh_id)

    def _resumed(self, resumed: Resumed, fresh_id: str) -> None:
        self.events.emit("info", "room.resume", address=self.address, device_id=self.device_id,
                         peer_id=self.peer_id, replaces=fresh_id, held=len(resumed.held))
        answer: dict[str, Any] = {"type": "resumed", "peer_id": self.peer_id, "room_id": resumed.room_id,
                                  "peers": [{"id": pid} for pid in resumed.others],
                                  "resume_token": resumed.token}  # the one used is spent
        if resumed.held_lost:  # its node died: messages sent to it meanwhile are gone
            answer["held_lost"] = True
        self.send(answer)
        for held in resumed.held:
            self.send(held)

    def handle_offer(self, message: dict[str, Any]) -> Outcome:
        return self._relay_sdp("offer", message)

    def handle_answer(self, message: dict[str, Any]) -> Outcome:
        return self._relay_sdp("answer", message)

    def handle_ice(self, message: dict[str, Any]) -> Outcome:
        to = self._str(message, "to", self.limits.max_id_length)
        candidate = self._str(message, "candidate", self.limits.max_candidate_bytes,
                              allow_empty=True, measure_bytes=True)
        sdp_mid = self._str(message, "sdp_mid", self.limits.max_id_length, allow_empty=True)
        index = self._int(message, "sdp_mline_index", 0, 65535)
        return self._relay(to, {"type": "ice", "from": self.peer_id, "to": to, "candidate": candidate,
                         "sdp_mid": sdp_mid, "sdp_mline_index": index})

    def _relay_sdp(self, kind: str, message: dict[str, Any]) -> Outcome:
        to = self._str(message, "to", self.limits.max_id_length)
        sdp = self._str(message, "sdp", self.limits.max_sdp_bytes, measure_bytes=True)
        return self._relay(to, {"type": kind, "from": self.peer_id, "to": to, "sdp": sdp})

    def _relay(self, to: str, message: dict[str, Any]) -> Outcome:
        if to == self.peer_id:  # it would only fill the sender's own queue
            raise BadMessage("cannot relay a message to yourself", "self_relay")
        try:
            self.hub.relay(self, to, message)
        except NotInRoom:
            raise BadMessage("join a room first", "not_in_room") from None
        except UnknownPeer:
            raise BadMessage("unknown peer: no such peer in your room", "unknown_peer") from None
        except ClusterUnavailable:  # answered with the message's type and target, as a later failure is
            self.recorder.error("cluster_unavailable")
            self.send(undelivered_error(message["type"], to, "cluster_unavailable"))
            return REFUSED
        return RELAYED

    def _auth_timed_out(self) -> None:
        self._auth_deadline = None
        if not self.authenticated and not self.closed:
            self.events.emit("warn", "auth.timeout", address=self.address, peer_id=self.peer_id)
            self.recorder.auth("refused", "timeout")
            self.close(CLOSE_POLICY_VIOLATION, "authentication timeout")


# A message's type -> its handler (the Client's handle_<type>, called with the client):
# one lookup per message, where getattr would first build the name.
_HANDLERS: dict[str, Callable[[Client, dict[str, Any]], Any]] = {
    name.removeprefix("handle_"): handler for name, handler in vars(Client).items() if name.startswith("handle_")}
