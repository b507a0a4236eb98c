"""Rooms shared by several nodes.

Each node keeps its own members as the single-node ``Hub`` does, plus a mirror
of the other nodes' members of the rooms it serves. The membership itself lives
in a shared store (Redis), changed by atomic steps that answer the room's full
member list; nodes tell each other of joins, leaves and relayed messages
through the store's per-node channels. Pure: the store is injected.
"""

from __future__ import annotations

from typing import Protocol

from .rooms import Hub, Member, NotInRoom, RoomFull, UnknownPeer


class ClusterUnavailable(Exception):
    """The shared store cannot be reached: only what is local can be served."""


class ClusterStore(Protocol):
    node_id: str

    def join(self, room_id: str, peer_id: str, token: str, max_peers: int | None):
        """Awaitable of the room's members ``{peer_id: node_id}`` after adding the
        peer, or None when the room is full. ``max_peers`` None: no limit."""

    def leave(self, room_id: str, peer_id: str, token: str):
        """Awaitable of the room's remaining members."""

    def members(self, room_id: str):
        """Awaitable of the room's members."""

    def publish(self, node_id: str, event: dict) -> None:
        """Send ``event`` to a node; raises ClusterUnavailable when the store is down."""

    @property
    def available(self) -> bool: ...


class ClusterHub(Hub):
    def __init__(self, max_peers_per_room: int, clock, hold, store: ClusterStore, spawn, events):
        super().__init__(max_peers_per_room, clock, hold)
        self.store = store
        self._spawn = spawn
        self._events = events
        self._remote: dict[str, dict[str, str]] = {}  # room -> {peer: node} of other nodes
        self._joining: dict[str, list[dict]] = {}  # room -> events that came during a join

    # --- membership

    def join(self, member: Member, room_id: str):
        current = self.room_of(member)
        if current == room_id:
            return [pid for pid in self._members_of(room_id) if pid != member.peer_id]
        if not self.store.available:
            raise ClusterUnavailable()
        return self._join(member, room_id, current)

    async def _join(self, member: Member, room_id: str, current: str | None) -> list[str]:
        if current is not None:
            self.leave(member)
        self._joining.setdefault(room_id, [])
        try:
            members = await self.store.join(room_id, member.peer_id, self.resume_token(member),
                                            self.max_peers_per_room)
        except Exception:
            self._replay_joining(room_id, None)
            raise
        if members is None:
            self._replay_joining(room_id, None)
            raise RoomFull(room_id)
        self._place(member, room_id)
        remote = {pid: node for pid, node in members.items()
                  if node != self.store.node_id and pid != member.peer_id}
        self._remote[room_id] = remote
        for node in set(remote.values()):
            self._tell(node, {"op": "joined", "room": room_id, "peer": member.peer_id, "node": self.store.node_id})
        others = [pid for pid in members if pid != member.peer_id]
        self._replay_joining(room_id, room_id)
        return others

    def _replay_joining(self, room_id: str, joined: str | None) -> None:
        """Apply the events that arrived while the join was under way."""
        pending = self._joining.pop(room_id, [])
        if joined is not None:
            for event in pending:
                self.on_event(event)

    def _left(self, room_id: str, peer_id: str, token: str | None) -> None:
        if room_id not in self._rooms:
            self._remote.pop(room_id, None)  # no local member left: stop mirroring
        self._spawn(self._leave(room_id, peer_id, token or ""))

    async def _leave(self, room_id: str, peer_id: str, token: str) -> None:
        remaining = await self.store.leave(room_id, peer_id, token)
        for node in {n for n in remaining.values() if n != self.store.node_id}:
            self._tell(node, {"op": "left", "room": room_id, "peer": peer_id})

    def _members_of(self, room_id: str) -> list[str]:
        return list(self._rooms.get(room_id, ())) + list(self._remote.get(room_id, ()))

    # --- relay

    def relay(self, sender: Member, to: str, message: dict) -> None:
        room_id = self.sender_room(sender)
        target = self._rooms[room_id].get(to)
        if target is not None:
            target.send(message)
            return
        node = self._remote.get(room_id, {}).get(to)
        if node is None:
            raise UnknownPeer(to)
        self.store.publish(node, {"op": "relay", "room": room_id, "to": to, "msg": message})

    # --- what other nodes tell this one

    def on_event(self, event: dict) -> None:
        op, room_id = event.get("op"), event.get("room")
        if room_id in self._joining and op in ("joined", "left"):
            self._joining[room_id].append(event)
            return
        room = self._rooms.get(room_id)
        if room is None:
            return  # no local member (any more): nothing to tell anyone
        if op == "relay":
            target = room.get(event.get("to"))
            if target is not None:
                target.send(event["msg"])
        elif op == "joined":
            peer, node = event["peer"], event["node"]
            remote = self._remote.setdefault(room_id, {})
            if peer in room:
                return
            if peer not in remote:
                self._announce(room, {"type": "new_peer", "peer_id": peer})
            remote[peer] = node
        elif op == "left":
            if self._remote.get(room_id, {}).pop(event["peer"], None) is not None:
                self._announce(room, {"type": "peer_left", "peer_id": event["peer"]})

    def reconcile(self, room_id: str, members: dict[str, str]) -> None:
        """Bring the mirror of a room in line with the store (after an outage)."""
        room = self._rooms.get(room_id)
        if room is None:
            return
        remote = self._remote.setdefault(room_id, {})
        now = {pid: node for pid, node in members.items() if node != self.store.node_id and pid not in room}
        for gone in [pid for pid in remote if pid not in now]:
            del remote[gone]
            self._announce(room, {"type": "peer_left", "peer_id": gone})
        for pid, node in now.items():
            if pid not in remote:
                self._announce(room, {"type": "new_peer", "peer_id": pid})
            remote[pid] = node

    def local_members(self) -> list[tuple[str, str, str]]:
        """(room, peer, token) of every member this node holds, for re-registration."""
        return [(room_id, pid, self._token_of.get(pid, "")) for room_id, room in self._rooms.items()
                for pid in room]

    def local_rooms(self) -> list[str]:
        return list(self._rooms)

    # --- helpers

    @staticmethod
    def _announce(room: dict, message: dict) -> None:
        for member in list(room.values()):
            member.send(message)

    def _tell(self, node: str, event: dict) -> None:
        try:
            self.store.publish(node, event)
        except ClusterUnavailable:
            self._events.emit("warn", "cluster.publish_failed", op=event.get("op"))
