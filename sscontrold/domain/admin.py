"""Operator actions on rooms and peers (docs/cluster-admin.md): list rooms and their
members, remove a peer, close a room, on this node and, with a cluster store, on every
node. Each action is an audit event (who, what; the log line carries when).

Pure: the hub, the store and the waiter are injected (see node.py).
"""

from __future__ import annotations

import secrets
from typing import Any, Awaitable, Iterable, Protocol, TypedDict, cast

from .cluster import ClusterUnavailable
from .ports import Events, Waiter, WaiterFactory
from .rooms import Held, Hub, Member

CLOSE_POLICY_VIOLATION = 1008
ASK_TIMEOUT = 2.0  # seconds to wait for the other nodes' answers
MAX_REASON = 200
MAX_LISTED_ROOMS = 10000  # a listing is cut there (and says so)
DEFAULT_REASON = "removed by an operator"


class AdminError(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def check_reason(reason: Any) -> str:
    if reason is None or reason == "":
        return DEFAULT_REASON
    if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
        raise AdminError(f"reason must be printable text of at most {MAX_REASON} characters")
    return reason


class AdminStore(Protocol):
    """What the cluster-wide actions need of the cluster store."""

    def members(self, room_id: str) -> Awaitable[dict[str, str]]:
        """Awaitable of the room's members ``{peer_id: node_id}``."""

    def rooms(self, limit: int) -> Awaitable[tuple[dict[str, int], bool]]:
        """Awaitable of the rooms' member counts (at most ``limit``) and whether more were left out."""

    def nodes(self) -> Awaitable[Iterable[str]]:
        """Awaitable of the nodes of the cluster."""

    def publish(self, node_id: str, event: dict[str, Any]) -> None:
        """Send ``event`` to a node; raises ClusterUnavailable when the store is down."""


class _Ask(TypedDict):
    """An ask of ours waiting for the other nodes' answers."""

    waiter: Waiter
    expect: int
    got: int
    found: list[dict[str, Any]]


class Administration:
    def __init__(self, hub: Hub, events: Events, node_id: str = "local", store: AdminStore | None = None,
                 waiter: WaiterFactory | None = None):
        self.hub = hub
        self.events = events
        self.node_id = node_id
        self.store = store  # a ClusterStore with rooms() and nodes(), or None: this node only
        self._waiter = waiter  # waiter(timeout): .wait(), .succeed(v), .fail(e)
        self._asks: dict[str, _Ask] = {}

    @property
    def scope(self) -> str:
        return "cluster" if self.store is not None else "node"

    def audit(self, level: str, event: str, actor: str | None, **fields: Any) -> None:
        """``actor`` None: another node's request that named none."""
        self.events.emit(level, f"admin.{event}", actor=actor, node=self.node_id, **fields)

    # --- this node

    def _local_rooms(self) -> dict[str, dict[str, Member]]:
        return self.hub._rooms  # room -> {peer: member}, the hub's own table (read only)

    def local_peers(self, room_id: str) -> list[dict[str, Any]]:
        peers = []
        for peer_id, member in self._local_rooms().get(room_id, {}).items():
            entry: dict[str, Any] = {"peer_id": peer_id, "node": self.node_id,
                     "state": "held" if isinstance(member, Held) else "connected"}
            for field in ("device_id", "address"):
                value = getattr(member, field, None)
                if value is not None:
                    entry[field] = value
            peers.append(entry)
        return peers

    # The codes of the error a removed peer gets (docs/protocol.md, Errors).
    REMOVAL_CODES = ("kicked", "room_closed")

    def _remove(self, member: Member, message: str, code: str) -> None:
        """The peer gets an ``error``, its room ``peer_left`` (at once), then the close."""
        if not isinstance(member, Held):
            member.send({"type": "error", "message": message, "code": code})
        self.hub.leave(member)
        if code == "room_closed":
            member.close(CLOSE_POLICY_VIOLATION, "room closed by an operator")
        else:
            member.close(CLOSE_POLICY_VIOLATION, "removed by an operator")

    def kick_local(self, peer_id: str, reason: str) -> str | None:
        """The room the peer was removed from, or None if it is not on this node."""
        for room_id, room in self._local_rooms().items():
            member = room.get(peer_id)
            if member is not None:
                self._remove(member, f"{DEFAULT_REASON}: {reason}" if reason != DEFAULT_REASON else reason,
                             "kicked")
                return room_id
        return None

    def close_room_local(self, room_id: str, reason: str) -> int:
        members = list(self._local_rooms().get(room_id, {}).values())
        for member in members:
            self._remove(member, f"room closed by an operator: {reason}", "room_closed")
        return len(members)

    # --- the whole cluster

    async def rooms(self, actor: str) -> dict[str, Any]:
        self.audit("info", "rooms", actor)
        if self.store is None:
            counts = {room_id: len(room) for room_id, room in self._local_rooms().items()}
            truncated = False
        else:
            counts, truncated = await self.store.rooms(MAX_LISTED_ROOMS)
        rooms = [{"room_id": r, "members": n} for r, n in sorted(counts.items())][:MAX_LISTED_ROOMS]
        return {"scope": self.scope, "rooms": rooms, "truncated": truncated or len(counts) > MAX_LISTED_ROOMS}

    async def peers(self, room_id: str, actor: str) -> dict[str, Any]:
        self.audit("info", "peers", actor, room=room_id)
        local = {p["peer_id"]: p for p in self.local_peers(room_id)}
        if self.store is not None:
            for peer_id, node in (await self.store.members(room_id) or {}).items():
                local.setdefault(peer_id, {"peer_id": peer_id, "node": node})
        if not local:
            raise AdminError("no such room (or it is empty)", 404)
        return {"scope": self.scope, "room_id": room_id, "peers": sorted(local.values(), key=lambda p: p["peer_id"])}

    async def kick(self, peer_id: str, reason: Any, actor: str) -> dict[str, Any]:
        reason = check_reason(reason)
        room_id = self.kick_local(peer_id, reason)
        if room_id is not None:
            self.audit("warn", "kick", actor, peer_id=peer_id, room=room_id, reason=reason, where=self.node_id)
            return {"kicked": peer_id, "room_id": room_id, "node": self.node_id}
        if self.store is not None:
            answers = await self._ask(self.store, {"action": "kick", "peer": peer_id, "reason": reason, "actor": actor})
            for answer in answers["found"]:
                self.audit("warn", "kick", actor, peer_id=peer_id, room=answer["room"], reason=reason,
                           where=answer["node"])
                return {"kicked": peer_id, "room_id": answer["room"], "node": answer["node"]}
            if answers["unanswered"]:
                self.audit("warn", "kick", actor, peer_id=peer_id, reason=reason, result="unanswered",
                           unanswered=answers["unanswered"])
                raise AdminError(f"peer not found; {answers['unanswered']} node(s) did not answer", 504)
        self.audit("warn", "kick", actor, peer_id=peer_id, reason=reason, result="not_found")
        raise AdminError("no such peer", 404)

    async def close_room(self, room_id: str, reason: Any, actor: str) -> dict[str, Any]:
        reason = check_reason(reason)
        closed = {self.node_id: self.close_room_local(room_id, reason)}
        unanswered = 0
        if self.store is not None:
            answers = await self._ask(self.store, {"action": "close_room", "room": room_id, "reason": reason,
                                                   "actor": actor})
            for answer in answers["found"]:
                closed[answer["node"]] = answer["count"]
            unanswered = answers["unanswered"]
        total = sum(closed.values())
        self.audit("warn", "close_room", actor, room=room_id, reason=reason, peers=total,
                   unanswered=unanswered or None)
        if not total and not unanswered:
            raise AdminError("no such room (or it is empty)", 404)
        return {"room_id": room_id, "closed": total, "by_node": {n: c for n, c in closed.items() if c},
                "unanswered": unanswered}

    # --- asking the other nodes

    async def _ask(self, store: AdminStore, request: dict[str, Any]) -> dict[str, Any]:
        nodes = [n for n in await store.nodes() if n != self.node_id]
        result: dict[str, Any] = {"found": [], "unanswered": 0}
        if not nodes:
            return result
        ask_id = secrets.token_hex(8)
        waiter = cast(WaiterFactory, self._waiter)(ASK_TIMEOUT)  # set with the store (node.py)
        self._asks[ask_id] = {"waiter": waiter, "expect": len(nodes), "got": 0, "found": result["found"]}
        try:
            for node in nodes:
                store.publish(node, {"op": "admin", "id": ask_id, "reply": self.node_id, **request})
            await waiter.wait()
        except TimeoutError:
            pass
        except ClusterUnavailable:
            raise AdminError("the cluster is unavailable: try again shortly", 503) from None
        finally:
            ask = self._asks.pop(ask_id)
        result["unanswered"] = ask["expect"] - ask["got"]
        return result

    def on_event(self, event: dict[str, Any]) -> None:
        """An admin request from another node, or an answer to one of ours."""
        if event.get("op") == "admin_reply":
            ask_id: Any = event.get("id")  # as the other node sent it
            ask = self._asks.get(ask_id)
            if ask is None:
                return  # too late: that ask has timed out
            ask["got"] += 1
            if event.get("found"):
                ask["found"].append(event)
            if ask["got"] >= ask["expect"] or (event.get("found") and event.get("action") == "kick"):
                ask["waiter"].succeed(None)
            return
        action, actor, reason = event.get("action"), event.get("actor"), event.get("reason") or DEFAULT_REASON
        reply = {"op": "admin_reply", "id": event.get("id"), "node": self.node_id, "action": action}
        if action == "kick":
            room_id = self.kick_local(event.get("peer", ""), reason)
            reply.update(found=room_id is not None, room=room_id)
            if room_id is not None:
                self.audit("warn", "applied", actor, action="kick", requested_by=event.get("reply"),
                           peer_id=event.get("peer"), room=room_id, reason=reason)
        elif action == "close_room":
            count = self.close_room_local(event.get("room", ""), reason)
            reply.update(found=count > 0, count=count)
            if count:
                self.audit("warn", "applied", actor, action="close_room", requested_by=event.get("reply"),
                           room=event.get("room"), peers=count, reason=reason)
        else:
            return
        try:
            # Only a cluster store's nodes send these: there is one.
            cast(AdminStore, self.store).publish(event["reply"], reply)
        except ClusterUnavailable:  # the asking node times out and says so
            self.events.emit("warn", "cluster.publish_failed", op="admin_reply")
