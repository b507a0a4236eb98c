"""Rooms shared by several nodes.

Each node keeps its own members as the single-node ``Hub`` does, plus a mirror
of the other nodes' members of the rooms it serves. The membership itself lives
in a shared store (Redis), changed by atomic steps that answer the room's full
member list; nodes tell each other of joins, leaves and relayed messages
through the store's per-node channels. Pure: the store is injected.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from .compare import same_secret
from .metrics import Recorder
from .ports import Clock, Events, Spawn, Timer, Waiter, WaiterFactory
from .rooms import (Held, HoldLimits, Hub, Member, Resumed, RoomFull, UnknownPeer, UnknownToken, bound_device,
                    new_token)

if TYPE_CHECKING:  # admin.py imports this module
    from .admin import Administration

HANDOVER_TIMEOUT = 5.0  # seconds a resume waits for the old node to hand the peer over
DEAD_NODE_POLL = 0.25  # seconds between looks at an old node that does not listen: dead yet?
MARKER_TIMEOUT = 2.0  # seconds a moved peer's direct messages wait for the old route to drain
FORWARD_SECONDS = 30.0  # how long the old node forwards what still reaches it for a moved peer


# What the sender of an undelivered message is told, by the code it gets.
UNDELIVERED = {
    "cluster_unavailable": "the cluster is unavailable",
    "peer_unreachable": "the peer's node is not listening (restarting or gone)",
    "relay_failed": "Redis did not pass it on in time",
}


class ClusterUnavailable(Exception):
    """The shared store cannot be reached: only what is local can be served."""


class ClusterStore(Protocol):
    node_id: str

    def join(self, room_id: str, peer_id: str, token: str, max_peers: int | None,
             device: str | None = None) -> Awaitable[dict[str, str] | None]:
        """Awaitable of the room's members ``{peer_id: node_id}`` after adding the
        peer, or None when the room is full. ``max_peers`` None: no limit. ``device``:
        the device the resume token is bound to (auth on), kept in its record."""

    def leave(self, room_id: str, peer_id: str, token: str) -> Awaitable[dict[str, str]]:
        """Awaitable of the room's remaining members."""

    def members(self, room_id: str) -> Awaitable[dict[str, str]]:
        """Awaitable of the room's members."""

    def publish(self, node_id: str, event: dict[str, Any], on_failure: Callable[[str], None] | None = None) -> None:
        """Send ``event`` to a node; raises ClusterUnavailable when the store is down.
        Later failures go to ``on_failure(code)`` (a code of UNDELIVERED)."""

    def publish_now(self, node_id: str, event: dict[str, Any]) -> Awaitable[int]:
        """Awaitable of how many nodes got ``event`` (0: that node does not listen)."""

    def node_alive(self, node_id: str) -> Awaitable[bool]:
        """Awaitable: whether the node's lease is still there."""

    def adopt(self, room_id: str, peer_id: str, token: str, old_node: str, new_token: str,
              device: str | None = None) -> Awaitable[dict[str, str] | None]:
        """Awaitable of the room's members after taking over the peer of a dead node
        under ``new_token`` (``token`` is spent), or None when it is no longer that
        node's."""

    lease: float

    @property
    def relay_timeout(self) -> float:
        """How late a relayed message may still be delivered."""

    def token(self, token: str) -> Awaitable[dict[str, Any] | None]:
        """Awaitable of the resume token's record ``{"peer", "room", "node", "device"}`` or None."""

    def move(self, room_id: str, peer_id: str, token: str, new_node: str, new_token: str,
             device: str | None = None) -> Awaitable[object]:
        """Awaitable: the peer is now served by ``new_node``, under ``new_token``
        (``token`` is spent)."""

    def rotate(self, room_id: str, peer_id: str, token: str, new_token: str,
               device: str | None = None) -> Awaitable[object]:
        """Awaitable: this node's peer now resumes with ``new_token`` (``token`` is spent)."""

    @property
    def available(self) -> bool: ...


class Moving:
    """A peer just handed over to this node: messages that took the new, direct
    route wait until every node that may still have some on the old route says it
    has no more (its marker, forwarded by the old node), so the order holds."""

    def __init__(self, waiting: set[str], timer: Timer):
        self.waiting = waiting
        self.buffer: list[dict[str, Any]] = []
        self.timer = timer


class Forward:
    def __init__(self, node: str, until: float, awaiting: set[str]):
        self.node = node
        self.until = until
        self.awaiting = awaiting


class _Claimant:
    """Who asks for a peer from another node: the device it authenticated as."""

    def __init__(self, device: str | None):
        self.bound_device = device


class ClusterHub(Hub):
    clock: Clock  # required here (the single-node hub may have none)

    def __init__(self, max_peers_per_room: int, clock: Clock, hold: HoldLimits | None, store: ClusterStore,
                 spawn: Spawn, events: Events, waiter: WaiterFactory, recorder: Recorder | None = None):
        super().__init__(max_peers_per_room, clock, hold, recorder)
        self.store = store
        self._spawn = spawn
        self._events = events
        self._waiter = waiter  # waiter(timeout): .wait() awaitable, .succeed(v), .fail(exc)
        # peer -> (waiter, member, token): resumes waiting here
        self._handovers: dict[str, tuple[Waiter, Member, str]] = {}
        self._moving: dict[str, Moving] = {}  # peers handed over to this node, old route draining
        self._forward: dict[str, Forward] = {}  # peers handed to another node
        self._takeovers: dict[str, dict[str, Any]] = {}  # takeovers waiting for the old connection to close
        self._remote: dict[str, dict[str, str]] = {}  # room -> {peer: node} of other nodes
        self._joining: dict[str, list[dict[str, Any]]] = {}  # room -> events that came during a join
        self.deferred_leaves: list[tuple[str, str, str]] = []  # leaves the store may not have seen
        self._relay_seq = 0
        self._relays: dict[int, tuple[str, str, str]] = {}  # relays on their way: id -> (sender, type, to)
        self._relays_expiry: deque[tuple[float, int]] = deque()

    # --- membership

    def join(self, member: Member, room_id: str) -> list[str] | Awaitable[list[str]]:
        current = self.room_of(member)
        if current == room_id:
            return [pid for pid in self._members_of(room_id) if pid != member.peer_id]
        if not self.store.available:
            return self._join_alone(member, room_id, current)
        return self._join(member, room_id, current)

    def _join_alone(self, member: Member, room_id: str, current: str | None) -> list[str]:
        """Without the store: a room this node can serve alone (no member known on
        another node) is joined here; it is written to the store, and merged with
        any members other nodes took meanwhile, when the store is back."""
        if self._remote.get(room_id):
            raise ClusterUnavailable()
        return self._join_here(member, room_id)

    async def _join(self, member: Member, room_id: str, current: str | None) -> list[str]:
        if current is not None:
            self.leave(member)
        self._joining.setdefault(room_id, [])
        try:
            members = await self.store.join(room_id, member.peer_id, self.resume_token(member),
                                            self.max_peers_per_room, device=bound_device(member))
        except ClusterUnavailable:  # the store went away during the join
            self._replay_joining(room_id, None)
            return self._join_alone(member, room_id, None)
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
        # Local members are taken from the room itself: the store may still list one
        # that left meanwhile (e.g. a held peer evicted by the announcement).
        local = self._rooms[room_id]
        others = [pid for pid, node in members.items() if pid != member.peer_id
                  and (node != self.store.node_id or pid in local)]
        others += [pid for pid in local if pid != member.peer_id and pid not in members]
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
        try:
            remaining = await self.store.leave(room_id, peer_id, token)
        except ClusterUnavailable:  # put right when the store is back (re-registration)
            self._events.emit("warn", "cluster.leave_deferred", peer_id=peer_id)
            self.deferred_leaves.append((room_id, peer_id, token))
            return
        nodes = {n for n in remaining.values() if n != self.store.node_id}
        if nodes and not self.store.available:  # done in the store, but the others cannot hear it yet
            self.deferred_leaves.append((room_id, peer_id, token))
            return
        for node in nodes:
            self._tell(node, {"op": "left", "room": room_id, "peer": peer_id})

    def _members_of(self, room_id: str) -> list[str]:
        return list(self._rooms.get(room_id, ())) + list(self._remote.get(room_id, ()))

    # --- relay

    def relay(self, sender: Member, to: str, message: dict[str, Any]) -> None:
        room_id = self.sender_room(sender)
        target = self._rooms[room_id].get(to)
        if target is not None:
            self._deliver(target, message, self.store.node_id)
            self._settle()
            return
        node = self._remote.get(room_id, {}).get(to)
        if node is None:
            raise UnknownPeer(to)
        now = self.clock.seconds()
        self._relay_seq += 1
        rid = self._relay_seq
        # Failures may be reported up to the deadline of the publish, then a notice of a
        # late drop from the receiver; after that nothing more comes for this id.
        expiries = self._relays_expiry
        while expiries and expiries[0][0] < now:
            self._relays.pop(expiries.popleft()[1], None)
        self._relays[rid] = (sender.peer_id, message.get("type", ""), to)
        try:
            self.store.publish(node, {"op": "relay", "room": room_id, "to": to, "msg": message,
                                      "node": self.store.node_id, "id": rid, "at": now},
                               lambda code: self._undelivered(rid, code))
        except ClusterUnavailable:
            del self._relays[rid]  # the sender hears it now, as the answer to its message
            raise
        expiries.append((now + 2 * self.store.relay_timeout + 3.0, rid))

    def _undelivered(self, rid: int, code: str) -> None:
        """A relayed message did not reach its peer: tell its sender, once."""
        relay = self._relays.pop(rid, None)
        if relay is None:
            return
        sender_id, kind, to = relay
        self.recorder.relay_failure(code)
        self._events.emit("warn", "cluster.relay_undelivered", peer_id=sender_id, to=to, message_type=kind,
                          code=code)
        room_id = self._room_of.get(sender_id)
        place = self._rooms[room_id].get(sender_id) if room_id is not None else None
        if place is not None:  # where the sender is now (held: it hears on resume)
            place.send(undelivered_error(kind, to, code))

    def _deliver(self, target: Member, message: dict[str, Any], from_node: str) -> None:
        moving = self._moving.get(target.peer_id)
        if moving is not None and from_node in moving.waiting:
            moving.buffer.append(message)
        else:
            self._send(target, message)

    # --- resume on another node than the one that held the peer

    def resume(self, token: str, member: Member) -> Resumed | Awaitable[Resumed]:
        if token in self._peer_of:
            return super().resume(token, member)
        if not self.store.available:
            raise ClusterUnavailable()
        return self._resume_remote(token, member)

    async def _resume_remote(self, token: str, member: Member) -> Resumed:
        record = await self.store.token(token)
        if not record or record.get("node") == self.store.node_id:
            self.recorder.resume("unknown_token")
            raise UnknownToken()
        peer_id, room_id, old_node = record["peer"], record["room"], record["node"]
        if peer_id in self._handovers:  # one resume of a peer at a time
            self.recorder.resume("refused")
            raise UnknownToken()
        # The old node hands the peer over, once it has checked the token and the device
        # (it alone knows them for sure); if it does not listen, it is restarting or
        # dead: wait (polling) until it listens or its lease is gone, then take over.
        deadline = self.clock.seconds() + max(HANDOVER_TIMEOUT, getattr(self.store, "lease", 0) + 1.0)
        while True:
            if not await self.store.node_alive(old_node):
                return await self._adopt(member, token, record, old_node)
            takeover = {"op": "takeover", "peer": peer_id, "room": room_id, "node": self.store.node_id,
                        "token": token, "device": bound_device(member)}
            waiter = self._waiter(max(0.1, deadline - self.clock.seconds()))
            self._handovers[peer_id] = (waiter, member, token)
            try:
                if await self.store.publish_now(old_node, takeover):
                    resumed: Resumed = await waiter.wait()
                    self.recorder.resume("resumed_elsewhere")
                    return resumed
                waiter.fail(UnknownToken())  # not heard: this waiter is done with
                try:
                    await waiter.wait()
                except UnknownToken:
                    pass
            except TimeoutError:
                self.recorder.resume("handover_timeout")
                raise UnknownToken() from None
            finally:
                self._handovers.pop(peer_id, None)
            if self.clock.seconds() >= deadline:
                self.recorder.resume("handover_timeout")
                raise UnknownToken()
            try:
                await self._waiter(DEAD_NODE_POLL).wait()
            except TimeoutError:
                pass

    async def _adopt(self, member: Member, token: str, record: dict[str, Any], old_node: str) -> Resumed:
        """The peer's node died: take its place over from the store alone. Its room
        hears nothing; what the dead node held for it is lost (the answer says so).
        The token is spent for a new one, and with auth on only the device it was bound
        to may use it (the binding is in its record, since its node cannot tell)."""
        peer_id, room_id = record["peer"], record["room"]
        device = record.get("device")
        if device is not None and not same_secret(device, bound_device(member)):
            self.recorder.resume("refused")
            raise UnknownToken()
        fresh = new_token()
        members = await self.store.adopt(room_id, peer_id, token, old_node, fresh, device)
        if members is None:  # swept already, or another resume was first
            self.recorder.resume("unknown_token")
            raise UnknownToken()
        member.peer_id = peer_id
        self._place_quietly(member, room_id)
        self._token_of[peer_id] = fresh
        self._peer_of[fresh] = peer_id
        if device is not None:
            self._device_of[peer_id] = device
        room = self._rooms[room_id]
        remote = self._remote.setdefault(room_id, {})
        remote.pop(peer_id, None)
        for pid, node in members.items():
            if pid not in room and node != self.store.node_id:
                remote[pid] = node
        for node in {n for n in remote.values() if n != old_node}:
            self._tell(node, {"op": "moved", "room": room_id, "peer": peer_id, "node": self.store.node_id})
        self.recorder.resume("resumed_after_node_loss")
        self._events.emit("info", "cluster.adopted", peer_id=peer_id, dead_node=old_node)
        return Resumed(room_id, [pid for pid in list(room) + list(remote) if pid != peer_id], [], token=fresh,
                       held_lost=True)

    def _on_takeover(self, event: dict[str, Any]) -> None:
        """Another node resumes one of ours: hand the peer over, quietly."""
        peer_id, room_id, new_node = event["peer"], event["room"], event["node"]
        room = self._rooms.get(room_id)
        if room is None or peer_id not in room:
            self._tell(new_node, {"op": "takeover_failed", "peer": peer_id})
            return
        if not (same_secret(self._token_of.get(peer_id), event.get("token"))
                and self._may_resume(peer_id, _Claimant(event.get("device")))):
            # A spent or wrong token, another device: refused, the live peer stays as it is.
            self.recorder.resume("refused")
            self._tell(new_node, {"op": "takeover_failed", "peer": peer_id})
            return
        place = room[peer_id]
        if isinstance(place, Held) and place.connection_open and peer_id not in self._takeovers:
            # The old connection may still hold frames this node has not read: hand
            # over once it is closed (all read), or after a short wait.
            self._takeovers[peer_id] = event
            self.clock.callLater(MARKER_TIMEOUT, self._connection_closed, peer_id)
            return
        self._takeovers.pop(peer_id, None)
        _, held = self._vacate(peer_id)
        device = self._device_of.get(peer_id)
        token = self._forget_token(peer_id) or ""
        fresh = new_token()  # single use: the new node hands this one to the client
        del room[peer_id]
        del self._room_of[peer_id]
        members = {pid: node for pid, node in self._remote.get(room_id, {}).items() if pid != peer_id}
        members.update({pid: self.store.node_id for pid in room})  # local members are local
        if room:
            self._remote.setdefault(room_id, {})[peer_id] = new_node
        else:
            del self._rooms[room_id]
            self._remote.pop(room_id, None)
            self._room_gone()
        # Forward what still comes this way until every node that may send some has
        # said (its marker) that nothing more will: only then may this node go.
        told = {n for n in members.values() if n not in (self.store.node_id, new_node)}
        self._forward[peer_id] = Forward(new_node, self.clock.seconds() + FORWARD_SECONDS, told | {new_node})
        self._spawn(self._move(room_id, peer_id, token, new_node, fresh, device))
        self._events.emit("info", "cluster.handed_over", peer_id=peer_id, to=new_node, held=len(held))
        self._tell(new_node, {"op": "handover", "peer": peer_id, "room": room_id, "held": held,
                              "members": members, "node": self.store.node_id, "token": fresh,
                              "device": device})
        for node in {n for n in members.values() if n not in (self.store.node_id, new_node)}:
            self._tell(node, {"op": "moved", "room": room_id, "peer": peer_id, "node": new_node,
                              "via": self.store.node_id})

    def _connection_closed(self, peer_id: str) -> None:
        event = self._takeovers.get(peer_id)
        if event is not None:
            place = self._rooms.get(event["room"], {}).get(peer_id)
            if isinstance(place, Held):
                place.connection_open = False
            self._on_takeover(event)

    async def _move(self, room_id: str, peer_id: str, token: str, new_node: str, new: str,
                    device: str | None) -> None:
        try:
            await self.store.move(room_id, peer_id, token, new_node, new, device=device)
        except Exception as e:  # the old node's lease sweep will settle it
            self._events.emit("warn", "cluster.move_failed", peer_id=peer_id, error=str(e)[:200])

    def _rotated(self, room_id: str, peer_id: str, old: str, new: str) -> None:
        self._spawn(self._rotate(room_id, peer_id, old, new))

    async def _rotate(self, room_id: str, peer_id: str, old: str, new: str) -> None:
        try:
            await self.store.rotate(room_id, peer_id, old, new, device=self._device_of.get(peer_id))
        except Exception as e:  # the old token is refused here anyway (this node checks it)
            self._events.emit("warn", "cluster.rotate_failed", peer_id=peer_id, error=str(e)[:200])

    def _on_handover(self, event: dict[str, Any]) -> None:
        peer_id, room_id, old_node = event["peer"], event["room"], event["node"]
        pending = self._handovers.pop(peer_id, None)
        if pending is None:
            return  # the resume gave up meanwhile: the old node's sweep ends the peer
        waiter, member, _spent = pending
        member.peer_id = peer_id
        self._place_quietly(member, room_id)
        token = event.get("token") or new_token()
        self._token_of[peer_id] = token
        self._peer_of[token] = peer_id
        if event.get("device") is not None:
            self._device_of[peer_id] = event["device"]
        room = self._rooms[room_id]
        remote = self._remote.setdefault(room_id, {})
        remote.pop(peer_id, None)  # it is local now, whatever this node believed before
        for pid, node in event["members"].items():
            if pid not in room and node != self.store.node_id:
                remote[pid] = node
        # Nodes that may still have messages for the peer on the way through the old
        # node, this one included; each sends a marker along that route.
        waiting = {n for n in remote.values() if n != old_node} | {self.store.node_id}
        timer = self.clock.callLater(MARKER_TIMEOUT, self._moved_in, peer_id)
        self._moving[peer_id] = Moving(waiting, timer)
        self._tell(old_node, {"op": "marker", "room": room_id, "peer": peer_id, "node": self.store.node_id})
        others = [pid for pid in list(room) + list(remote) if pid != peer_id]
        waiter.succeed(Resumed(room_id, others, event["held"], token))

    def _on_marker(self, event: dict[str, Any]) -> None:
        moving = self._moving.get(event["peer"])
        if moving is not None:
            moving.waiting.discard(event["node"])
            if not moving.waiting:
                self._moved_in(event["peer"])

    def _moved_in(self, peer_id: str) -> None:
        moving = self._moving.pop(peer_id, None)
        if moving is None:
            return
        self._events.emit("info" if not moving.waiting else "warn", "cluster.moved_in", peer_id=peer_id,
                          buffered=len(moving.buffer), missing_markers=len(moving.waiting))
        if moving.timer.active():
            moving.timer.cancel()
        room_id = self._room_of.get(peer_id)
        target = self._rooms[room_id].get(peer_id) if room_id else None
        for message in moving.buffer:
            if target is not None:
                self._send(target, message)
        self._settle()

    def _place_quietly(self, member: Member, room_id: str) -> None:
        if room_id not in self._rooms:
            self._rooms[room_id] = {}
            self._room_new()
        self._rooms[room_id][member.peer_id] = member
        self._room_of[member.peer_id] = room_id

    def _forwarded(self, event: dict[str, Any]) -> bool:
        """Pass on what reaches this node for a peer it handed over."""
        peer_id: Any = event.get("peer") or event.get("to")  # as the other node sent it
        forward = self._forward.get(peer_id)
        if forward is None:
            return False
        self._tell(forward.node, event)
        if event.get("op") == "marker":
            self._events.emit("debug", "cluster.marker_forwarded", peer_id=peer_id, sender=event.get("node"),
                              to=forward.node)
            forward.awaiting.discard(event.get("node"))
        if not forward.awaiting or self.clock.seconds() > forward.until:
            del self._forward[peer_id]
        return True

    @property
    def forwarding(self) -> int:
        """Peers handed over whose old route may still carry messages."""
        now = self.clock.seconds()
        return sum(1 for f in self._forward.values() if f.awaiting and f.until > now)

    # --- what other nodes tell this one

    # The node's Administration (domain/admin.py): operator requests from other nodes.
    admin: Administration | None = None

    def on_event(self, event: dict[str, Any]) -> bool | None:
        """Handle an event from another node; True when it was a relayed message
        delivered here (the adapter times it like a local relay)."""
        op = event.get("op")
        room_id: Any = event.get("room")  # as the other node sent it: looked up, not trusted
        if op in ("admin", "admin_reply"):
            if self.admin is not None:
                self.admin.on_event(event)
            return None
        if op in ("takeover", "handover", "marker", "takeover_failed"):
            if op == "takeover":
                self._on_takeover(event)
            elif op == "handover":
                self._on_handover(event)
            elif op == "takeover_failed":
                pending = self._handovers.pop(event["peer"], None)
                if pending is not None:
                    pending[0].fail(UnknownToken())
            elif not self._forwarded(event):
                self._on_marker(event)
            return None
        if op == "moved":
            remote = self._remote.get(room_id)
            self._events.emit("debug", "cluster.moved_seen", peer_id=event["peer"], to=event["node"],
                              known=remote is not None and event["peer"] in remote)
            if remote is not None and event["peer"] in remote:
                remote[event["peer"]] = event["node"]
                if event.get("via"):  # not when the old node is dead: nothing left on that route
                    self._tell(event["via"], {"op": "marker", "room": room_id, "peer": event["peer"],
                                              "node": self.store.node_id})
            return None
        if op == "relay_failed":
            rid: Any = event.get("id")  # as the other node sent it
            self._undelivered(rid, event.get("code", "relay_failed"))
            return None
        if op == "relay" and self._late(event):
            return None
        if room_id in self._joining and op in ("joined", "left"):
            self._joining[room_id].append(event)
            return None
        room = self._rooms.get(room_id)
        if op == "relay" and (room is None or event.get("to") not in room) and self._forwarded(event):
            return None
        if room is None:
            return None  # no local member (any more): nothing to tell anyone
        if op == "relay":
            to: Any = event.get("to")  # as the other node sent it
            target = room.get(to)
            if target is not None:
                self._deliver(target, event["msg"], event.get("node", ""))
                self._settle()
                return True
        elif op == "joined":
            peer, node = event["peer"], event["node"]
            remote = self._remote.setdefault(room_id, {})
            if peer in room:
                return None
            if peer not in remote:
                self._announce(room, {"type": "new_peer", "peer_id": peer})
            remote[peer] = node
        elif op == "left":
            if self._remote.get(room_id, {}).pop(event["peer"], None) is not None:
                self._announce(room, {"type": "peer_left", "peer_id": event["peer"]})
        return None

    def _late(self, event: dict[str, Any]) -> bool:
        """A relayed message older than the relay timeout (Redis stalled) is dropped,
        not delivered late, and its sender's node is told."""
        at = event.get("at")
        if at is None or self.clock.seconds() - at <= self.store.relay_timeout:
            return False
        self._events.emit("warn", "cluster.relay_late", to=event.get("to"), age=round(self.clock.seconds() - at, 3))
        self._tell(event.get("node", ""), {"op": "relay_failed", "id": event.get("id"), "code": "relay_failed"})
        return True

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

    def _announce(self, room: dict[str, Member], message: dict[str, Any]) -> None:
        self._broadcast(list(room.values()), message)
        self._settle()

    def _tell(self, node: str, event: dict[str, Any]) -> None:
        try:
            self.store.publish(node, event)
        except ClusterUnavailable:
            self._events.emit("warn", "cluster.publish_failed", op=event.get("op"), node=node,
                              error="Redis unreachable")


def undelivered_error(kind: str, to: str, code: str) -> dict[str, Any]:
    """The error a sender gets for a message that did not reach its peer on another node."""
    return {"type": "error", "code": code, "message_type": kind, "to": to,
            "message": f"{kind} to {to} not delivered: {UNDELIVERED.get(code, code)}"}
