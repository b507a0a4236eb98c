"""Rooms and routing between their members (one process, in memory)."""

from __future__ import annotations

from typing import Protocol

from prometheus_client import Gauge

ROOMS = Gauge("sscontrol_rooms", "Rooms with at least one member on this node.")


class Member(Protocol):
    """What the hub needs of a room member."""

    peer_id: str

    def send(self, message: dict) -> None: ...


class RoomFull(Exception):
    pass


class NotInRoom(Exception):
    pass


class UnknownPeer(Exception):
    pass


class Hub:
    """Room membership and relay; a peer is in at most one room."""

    def __init__(self, max_peers_per_room: int):
        self.max_peers_per_room = max_peers_per_room
        self._rooms: dict[str, dict[str, Member]] = {}
        self._room_of: dict[str, str] = {}

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def room_of(self, member: Member) -> str | None:
        return self._room_of.get(member.peer_id)

    def members(self, room_id: str) -> list[str]:
        return list(self._rooms.get(room_id, ()))

    def join(self, member: Member, room_id: str) -> list[str]:
        """Put ``member`` in ``room_id`` (leaving its old room); return the others' ids."""
        current = self._room_of.get(member.peer_id)
        room = self._rooms.get(room_id)
        if current == room_id:
            return [pid for pid in room if pid != member.peer_id]
        if room is not None and len(room) >= self.max_peers_per_room:
            raise RoomFull(room_id)
        if current is not None:
            self.leave(member)
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = {}
            ROOMS.inc()
        others = list(room)
        announcement = {"type": "new_peer", "peer_id": member.peer_id}
        for other in room.values():
            other.send(announcement)
        room[member.peer_id] = member
        self._room_of[member.peer_id] = room_id
        return others

    def leave(self, member: Member) -> str | None:
        """Take ``member`` out of its room, telling the others; return the room it left."""
        room_id = self._room_of.pop(member.peer_id, None)
        if room_id is None:
            return None
        room = self._rooms[room_id]
        del room[member.peer_id]
        if not room:
            del self._rooms[room_id]
            ROOMS.dec()
        else:
            notice = {"type": "peer_left", "peer_id": member.peer_id}
            for other in list(room.values()):
                other.send(notice)
        return room_id

    def relay(self, sender: Member, to: str, message: dict) -> None:
        """Deliver ``message`` to member ``to`` of the sender's room."""
        room_id = self._room_of.get(sender.peer_id)
        if room_id is None:
            raise NotInRoom()
        target = self._rooms[room_id].get(to)
        if target is None:
            raise UnknownPeer(to)
        target.send(message)
