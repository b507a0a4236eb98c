"""Rooms and routing between their members (one process, in memory), and the
resume of a peer whose connection dropped: its place in the room is held for a
grace period, with the messages sent to it, until it comes back or the grace ends.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Protocol

import orjson

from .compare import same_secret
from .metrics import MemoryRecorder, Recorder
from .ports import Clock, Timer

CLOSE_REPLACED = 4000  # an old connection whose peer resumed on a new one


class Member(Protocol):
    """What the hub needs of a room member."""

    peer_id: str

    def send(self, message: dict[str, Any]) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class RoomFull(Exception):
    pass


class NotInRoom(Exception):
    pass


class UnknownPeer(Exception):
    pass


class UnknownToken(Exception):
    pass


@dataclass(frozen=True)
class HoldLimits:
    """Built from the settings by sscontrold.policies (no defaults here: config.FIELDS has them)."""

    grace: float  # seconds a dropped peer keeps its place; 0: no resume
    max_messages: int
    max_bytes: int


class Held:
    """Stands in the room for a detached peer and keeps what is sent to it.

    It never calls back into the hub: a send may happen while the hub walks the
    room, so an overflow only marks it, and the hub evicts it once the walk is over.
    """

    def __init__(self, peer_id: str, limits: HoldLimits):
        self.peer_id = peer_id
        self.messages: deque[dict[str, Any]] = deque()
        self._bytes = 0
        self._limits = limits
        self.expiry: Timer | None = None  # the grace timer
        self.overflowed = False
        self.connection_open = False  # released, its connection still closing: frames may come

    def send(self, message: dict[str, Any]) -> None:
        if self.overflowed:
            return
        self._bytes += len(orjson.dumps(message))
        self.messages.append(message)
        if len(self.messages) > self._limits.max_messages or self._bytes > self._limits.max_bytes:
            self.overflowed = True  # rather a clear peer_left than a silent gap
            self.messages.clear()

    def close(self, code: int, reason: str) -> None:
        pass


@dataclass
class Resumed:
    room_id: str
    others: list[str]
    held: list[dict[str, Any]]
    token: str = ""  # the peer's next resume token (the one used is spent)
    held_lost: bool = False  # resumed after its node died: what that node held for it is gone


def new_token() -> str:
    return secrets.token_urlsafe(24)


def bound_device(member: Any) -> str | None:
    """The device a member authenticated as, when auth is on (None otherwise)."""
    return getattr(member, "bound_device", None)


class Hub:
    """Room membership and relay; a peer is in at most one room."""

    def __init__(self, max_peers_per_room: int, clock: Clock | None = None, hold: HoldLimits | None = None,
                 recorder: Recorder | None = None):
        self.max_peers_per_room = max_peers_per_room
        self.recorder = recorder if recorder is not None else MemoryRecorder()
        self.clock = clock
        self.hold = hold  # None (or no clock): a dropped peer leaves at once
        self._rooms: dict[str, dict[str, Member]] = {}
        self._room_of: dict[str, str] = {}
        self._token_of: dict[str, str] = {}  # peer id -> resume token
        self._peer_of: dict[str, str] = {}  # resume token -> peer id
        self._device_of: dict[str, str] = {}  # peer id -> the authenticated device its token is bound to
        self._evictions: list[Held] = []  # held peers that overflowed, to remove once no room is walked
        self._walking = 0  # depth of room walks under way

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    @property
    def held_count(self) -> int:
        return sum(isinstance(m, Held) for room in self._rooms.values() for m in room.values())

    def room_of(self, member: Member) -> str | None:
        room_id = self._room_of.get(member.peer_id)
        if room_id is None or self._rooms[room_id].get(member.peer_id) is not member:
            return None
        return room_id

    def members(self, room_id: str) -> list[str]:
        return list(self._rooms.get(room_id, ()))

    def resume_token(self, member: Member) -> str:
        """The secret with which ``member`` can take its place back after a drop."""
        token = self._token_of.get(member.peer_id)
        if token is None:
            token = new_token()
            self._token_of[member.peer_id] = token
            self._peer_of[token] = member.peer_id
            device = bound_device(member)
            if device is not None:
                self._device_of[member.peer_id] = device
        return token

    def _forget_token(self, peer_id: str) -> str | None:
        token = self._token_of.pop(peer_id, None)
        if token is not None:
            self._peer_of.pop(token, None)
        self._device_of.pop(peer_id, None)
        return token

    def _rotate_token(self, peer_id: str) -> str:
        """Spend the peer's token and give it a new one (same device binding)."""
        old = self._token_of.pop(peer_id, None)
        if old is not None:
            self._peer_of.pop(old, None)
        token = new_token()
        self._token_of[peer_id] = token
        self._peer_of[token] = peer_id
        return token

    def _may_resume(self, peer_id: str, member: object) -> bool:
        """Whether ``member`` may take the peer's place: its token must be bound to no
        device, or to the one ``member`` authenticated as; a held peer that lost
        messages (overflow) cannot come back."""
        expected = self._device_of.get(peer_id)
        if expected is not None and not same_secret(expected, bound_device(member)):
            return False
        room_id = self._room_of.get(peer_id)
        place = self._rooms[room_id].get(peer_id) if room_id is not None else None
        return place is not None and not (isinstance(place, Held) and place.overflowed)

    # --- delivery: the only way the hub sends to members

    def _send(self, member: Member, message: dict[str, Any]) -> None:
        member.send(message)
        if isinstance(member, Held):
            self._held_sent(member)

    def _held_sent(self, held: Held) -> None:
        if held.overflowed and held not in self._evictions:
            self._evictions.append(held)

    def _broadcast(self, members: list[Member], message: dict[str, Any]) -> None:
        """Send to each of ``members`` (a snapshot: nothing changes the room meanwhile)."""
        self._walking += 1
        try:
            for member in members:
                self._send(member, message)
        finally:
            self._walking -= 1

    def _settle(self) -> None:
        """Evict the held peers that overflowed, once no room is being walked."""
        if self._walking:
            return
        self._walking += 1
        try:
            while self._evictions:
                held = self._evictions.pop(0)
                self._evict(held)
        finally:
            self._walking -= 1

    def _evict(self, held: Held) -> None:
        if self.room_of(held) is not None:  # still its place: not resumed nor gone meanwhile
            self._remove(held)

    def join(self, member: Member, room_id: str) -> list[str] | Awaitable[list[str]]:
        """Put ``member`` in ``room_id`` (leaving its old room); return the others' ids
        (a hub whose rooms are shared answers later: an awaitable of them)."""
        return self._join_here(member, room_id)

    def _join_here(self, member: Member, room_id: str) -> list[str]:
        current = self.room_of(member)
        room = self._rooms.get(room_id)
        if current == room_id and room is not None:  # room is set: current is the member's room
            return [pid for pid in room if pid != member.peer_id]
        if room is not None and len(room) >= self.max_peers_per_room:
            raise RoomFull(room_id)
        if current is not None:
            self.leave(member)
        self._place(member, room_id)
        return [pid for pid in self._rooms[room_id] if pid != member.peer_id]

    def _place(self, member: Member, room_id: str) -> None:
        """Put ``member`` in the room, announcing it to the room's (local) members.

        The announcement may overflow a held peer: it is evicted before the joiner
        is placed, so the joiner never hears of it (neither in its ``peers`` nor
        as a ``peer_left``)."""
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = {}
            self._room_new()
        self._broadcast(list(room.values()), {"type": "new_peer", "peer_id": member.peer_id})
        self._settle()
        if room_id not in self._rooms:  # the evictions emptied it
            room = self._rooms[room_id] = {}
            self._room_new()
        room[member.peer_id] = member
        self._room_of[member.peer_id] = room_id

    def leave(self, member: Member) -> str | None:
        """Take ``member`` out of its room, telling the others; return the room it left."""
        room_id = self._remove(member)
        self._settle()
        return room_id

    def _remove(self, member: Member) -> str | None:
        room_id = self.room_of(member)
        if room_id is None:
            return None  # not in a room, or its place was taken over by a resume
        del self._room_of[member.peer_id]
        token = self._forget_token(member.peer_id)  # a clean leave voids the token
        self._left(room_id, member.peer_id, token)
        room = self._rooms[room_id]
        del room[member.peer_id]
        if isinstance(member, Held) and member.expiry is not None and member.expiry.active():
            member.expiry.cancel()
        if not room:
            del self._rooms[room_id]
            self._room_gone()
        else:
            self._broadcast(list(room.values()), {"type": "peer_left", "peer_id": member.peer_id})
        return room_id

    def _room_new(self) -> None:
        self.recorder.rooms(1)

    def _room_gone(self) -> None:
        self.recorder.rooms(-1)

    def _left(self, room_id: str, peer_id: str, token: str | None) -> None:
        """A member left (after its room was told): a hook for shared state."""

    def detach(self, member: Member, still_open: bool = False) -> bool:
        """The connection of ``member`` dropped (or, ``still_open``, is being closed by
        us): hold its place for the grace period.

        Returns False (and the member leaves) when resume is off or it was in no room.
        """
        room_id = self.room_of(member)
        if room_id is None:
            return False
        if self.hold is None or self.hold.grace <= 0 or self.clock is None:
            self.leave(member)
            return False
        held = Held(member.peer_id, self.hold)
        held.connection_open = still_open
        self._rooms[room_id][member.peer_id] = held
        held.expiry = self.clock.callLater(self.hold.grace, self._expire, held)
        return True

    def connection_closed(self, peer_id: str) -> None:
        """A released peer's connection is now closed: all it sent has been read."""
        room_id = self._room_of.get(peer_id)
        place = self._rooms[room_id].get(peer_id) if room_id is not None else None
        if isinstance(place, Held) and place.connection_open:
            place.connection_open = False
            self._connection_closed(peer_id)

    def _connection_closed(self, peer_id: str) -> None:
        """A hook for what waits on it."""

    def _expire(self, held: Held) -> None:
        held.expiry = None
        self.leave(held)

    def resume(self, token: str, member: Member) -> Resumed | Awaitable[Resumed]:
        """Give ``member`` the place of the peer the token names; sets member.peer_id
        (a hub whose rooms are shared may answer later: an awaitable of it)."""
        peer_id = self._peer_of.get(token)
        if peer_id is None or peer_id not in self._room_of:
            self.recorder.resume("unknown_token")
            raise UnknownToken()
        if not self._may_resume(peer_id, member):  # refused: the live peer is left as it is
            self.recorder.resume("refused")
            raise UnknownToken()
        room_id, held = self._vacate(peer_id)
        member.peer_id = peer_id
        self._rooms[room_id][peer_id] = member
        fresh = self._rotate_token(peer_id)  # single use: the answer carries the next one
        self._rotated(room_id, peer_id, token, fresh)
        self.recorder.resume("resumed")
        return Resumed(room_id, [pid for pid in self._rooms[room_id] if pid != peer_id], held, fresh)

    def _rotated(self, room_id: str, peer_id: str, old: str, new: str) -> None:
        """A peer's token was replaced: a hook for shared state."""

    def _vacate(self, peer_id: str) -> tuple[str, list[dict[str, Any]]]:
        """Free a peer's place for its next connection, quietly: the room hears nothing.
        Returns the room and the messages held for the peer."""
        room_id = self._room_of[peer_id]
        old = self._rooms[room_id][peer_id]
        if isinstance(old, Held):
            if old.expiry is not None and old.expiry.active():
                old.expiry.cancel()
            return room_id, list(old.messages)
        old.close(CLOSE_REPLACED, "replaced by a resumed connection")  # it has not noticed it is dead
        return room_id, []

    def sender_room(self, sender: Member) -> str:
        """The room ``sender`` may relay in; raises NotInRoom."""
        room_id = self._room_of.get(sender.peer_id)
        if room_id is None:
            raise NotInRoom()
        place = self._rooms[room_id].get(sender.peer_id)
        # A connection the server asked to reconnect may still send during the close
        # handshake: its place is held, and what it sends still counts.
        if place is not sender and not isinstance(place, Held):
            raise NotInRoom()
        return room_id

    def relay(self, sender: Member, to: str, message: dict[str, Any]) -> None:
        """Deliver ``message`` to member ``to`` of the sender's room."""
        target = self._rooms[self.sender_room(sender)].get(to)
        if target is None:
            raise UnknownPeer(to)
        # _send and _settle inline: this is the relay path, and only a held peer can overflow
        target.send(message)
        if isinstance(target, Held):
            self._held_sent(target)
            self._settle()
