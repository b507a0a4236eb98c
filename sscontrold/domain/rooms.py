"""Rooms and routing between their members (one process, in memory), and the
resume of a peer whose connection dropped: its place in the room is held for a
grace period, with the messages sent to it, until it comes back or the grace ends.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import orjson
from prometheus_client import Counter, Gauge

ROOMS = Gauge("sscontrol_rooms", "Rooms with at least one member on this node.")
RESUMES = Counter("sscontrol_resumes_total", "Resume attempts by result.", ["result"])

CLOSE_REPLACED = 4000  # an old connection whose peer resumed on a new one


class Member(Protocol):
    """What the hub needs of a room member."""

    peer_id: str

    def send(self, message: dict) -> None: ...

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
    grace: float = 10.0  # seconds a dropped peer keeps its place; 0: no resume
    max_messages: int = 256
    max_bytes: int = 1024 * 1024


class Held:
    """Stands in the room for a detached peer and keeps what is sent to it."""

    def __init__(self, peer_id: str, limits: HoldLimits, overflow: Callable[["Held"], None]):
        self.peer_id = peer_id
        self.messages: deque[dict] = deque()
        self._bytes = 0
        self._limits = limits
        self._overflow = overflow
        self.expiry: Any = None  # the grace timer
        self.overflowed = False
        self.connection_open = False  # released, its connection still closing: frames may come

    def send(self, message: dict) -> None:
        if self.overflowed:
            return
        self._bytes += len(orjson.dumps(message))
        self.messages.append(message)
        if len(self.messages) > self._limits.max_messages or self._bytes > self._limits.max_bytes:
            self.overflowed = True
            self._overflow(self)  # rather a clear peer_left than a silent gap

    def close(self, code: int, reason: str) -> None:
        pass


@dataclass
class Resumed:
    room_id: str
    others: list[str]
    held: list[dict]
    held_lost: bool = False  # resumed after its node died: what that node held for it is gone


class Hub:
    """Room membership and relay; a peer is in at most one room."""

    def __init__(self, max_peers_per_room: int, clock=None, hold: HoldLimits = HoldLimits()):
        self.max_peers_per_room = max_peers_per_room
        self.clock = clock
        self.hold = hold
        self._rooms: dict[str, dict[str, Member]] = {}
        self._room_of: dict[str, str] = {}
        self._token_of: dict[str, str] = {}  # peer id -> resume token
        self._peer_of: dict[str, str] = {}  # resume token -> peer id

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
            token = secrets.token_urlsafe(24)
            self._token_of[member.peer_id] = token
            self._peer_of[token] = member.peer_id
        return token

    def join(self, member: Member, room_id: str) -> list[str]:
        """Put ``member`` in ``room_id`` (leaving its old room); return the others' ids."""
        current = self.room_of(member)
        room = self._rooms.get(room_id)
        if current == room_id:
            return [pid for pid in room if pid != member.peer_id]
        if room is not None and len(room) >= self.max_peers_per_room:
            raise RoomFull(room_id)
        if current is not None:
            self.leave(member)
        others = list(self._rooms.get(room_id, ()))
        self._place(member, room_id)
        return others

    def _place(self, member: Member, room_id: str) -> None:
        """Put ``member`` in the room, announcing it to the room's (local) members."""
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = {}
            self._room_new()
        announcement = {"type": "new_peer", "peer_id": member.peer_id}
        for other in room.values():
            other.send(announcement)
        room[member.peer_id] = member
        self._room_of[member.peer_id] = room_id

    def leave(self, member: Member) -> str | None:
        """Take ``member`` out of its room, telling the others; return the room it left."""
        room_id = self.room_of(member)
        if room_id is None:
            return None  # not in a room, or its place was taken over by a resume
        del self._room_of[member.peer_id]
        token = self._token_of.pop(member.peer_id, None)
        if token is not None:
            del self._peer_of[token]
        self._left(room_id, member.peer_id, token)
        room = self._rooms[room_id]
        del room[member.peer_id]
        if isinstance(member, Held) and member.expiry is not None and member.expiry.active():
            member.expiry.cancel()
        if not room:
            del self._rooms[room_id]
            self._room_gone()
        else:
            notice = {"type": "peer_left", "peer_id": member.peer_id}
            for other in list(room.values()):
                other.send(notice)
        return room_id

    @staticmethod
    def _room_new() -> None:
        ROOMS.inc()

    @staticmethod
    def _room_gone() -> None:
        ROOMS.dec()

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
        if self.hold.grace <= 0 or self.clock is None:
            self.leave(member)
            return False
        held = Held(member.peer_id, self.hold, self.leave)
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

    def resume(self, token: str, member: Member) -> Resumed:
        """Give ``member`` the place of the peer the token names; sets member.peer_id."""
        peer_id = self._peer_of.get(token)
        if peer_id is None or peer_id not in self._room_of:
            RESUMES.labels("unknown_token").inc()
            raise UnknownToken()
        room_id, held = self._vacate(peer_id)
        member.peer_id = peer_id
        self._rooms[room_id][peer_id] = member
        RESUMES.labels("resumed").inc()
        return Resumed(room_id, [pid for pid in self._rooms[room_id] if pid != peer_id], held)

    def _vacate(self, peer_id: str) -> tuple[str, list[dict]]:
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

    def relay(self, sender: Member, to: str, message: dict) -> None:
        """Deliver ``message`` to member ``to`` of the sender's room."""
        target = self._rooms[self.sender_room(sender)].get(to)
        if target is None:
            raise UnknownPeer(to)
        target.send(message)
