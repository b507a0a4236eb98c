"""ClusterHub against an in-process shared store: several hubs (nodes) that share
rooms, with the store's answers and the nodes' events delivered when the test says."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from defaults import hold_limits
from sscontrold.domain.cluster import ClusterHub, ClusterUnavailable
from sscontrold.domain.rooms import RoomFull
from sscontrold.node import Waiter


class Store:
    """One shared membership table; per-node stores publish into a common queue."""

    def __init__(self):
        self.rooms: dict[str, dict[str, str]] = {}
        self.tokens: dict[str, dict] = {}
        self.queue: list[tuple[str, dict]] = []
        self.hubs: dict[str, ClusterHub] = {}
        self.up = True

    def node(self, node_id):
        return NodeStore(self, node_id)

    def flush(self):
        while self.queue:
            node, event = self.queue.pop(0)
            self.hubs[node].on_event(event)


class NodeStore:
    relay_timeout = 2.0
    lease = 5.0

    def __init__(self, shared: Store, node_id: str):
        self.shared, self.node_id = shared, node_id

    @property
    def available(self):
        return self.shared.up

    async def join(self, room_id, peer_id, token, max_peers, device=None):
        room = self.shared.rooms.setdefault(room_id, {})
        if peer_id not in room and max_peers is not None and len(room) >= max_peers:
            return None
        room[peer_id] = self.node_id
        self.shared.tokens[token] = {"peer": peer_id, "room": room_id, "node": self.node_id, "device": device}
        return dict(room)

    async def token(self, token):
        return self.shared.tokens.get(token)

    async def move(self, room_id, peer_id, token, new_node, new_token, device=None):
        self.shared.rooms[room_id][peer_id] = new_node
        self.shared.tokens.pop(token, None)
        self.shared.tokens[new_token] = {"peer": peer_id, "room": room_id, "node": new_node, "device": device}

    async def rotate(self, room_id, peer_id, token, new_token, device=None):
        self.shared.tokens.pop(token, None)
        self.shared.tokens[new_token] = {"peer": peer_id, "room": room_id, "node": self.node_id, "device": device}

    async def leave(self, room_id, peer_id, token):
        room = self.shared.rooms.get(room_id, {})
        if room.get(peer_id) == self.node_id:
            del room[peer_id]
        return dict(room)

    async def members(self, room_id):
        return dict(self.shared.rooms.get(room_id, {}))

    def publish(self, node_id, event, on_failure=None):
        if not self.shared.up:
            raise ClusterUnavailable()
        self.shared.queue.append((node_id, event))

    async def publish_now(self, node_id, event):
        self.publish(node_id, event)
        return 1

    async def node_alive(self, node_id):
        return node_id in self.shared.hubs


class M:
    def __init__(self, pid):
        self.peer_id, self.got = pid, []

    def send(self, message):
        self.got.append(message)

    def close(self, code, reason):
        pass


def run(coroutine_or_value):
    """Drive a coroutine whose awaits are already answered."""
    if not hasattr(coroutine_or_value, "send"):
        return coroutine_or_value
    result = []
    Deferred.fromCoroutine(coroutine_or_value).addBoth(result.append)
    value = result[0]
    if hasattr(value, "raiseException"):
        value.raiseException()
    return value


class Events:
    def emit(self, *a, **k):
        pass


@pytest.fixture
def nodes():
    shared = Store()
    clock = Clock()
    for name in ("n1", "n2", "n3"):
        shared.hubs[name] = ClusterHub(3, clock, hold_limits(grace=10), shared.node(name), spawn, Events(),
                                       lambda timeout: Waiter(clock, timeout))
    shared.clock = clock
    return shared, shared.hubs["n1"], shared.hubs["n2"]


def spawn(coroutine):
    Deferred.fromCoroutine(coroutine)


def test_join_relay_leave_across_hubs(nodes):
    shared, h1, h2 = nodes
    a, b = M("a"), M("b")
    assert run(h1.join(a, "r")) == []
    assert run(h2.join(b, "r")) == ["a"]
    shared.flush()
    assert a.got == [{"type": "new_peer", "peer_id": "b"}]
    h1.relay(a, "b", {"x": 1})
    shared.flush()
    assert b.got == [{"x": 1}]
    h2.leave(b)
    shared.flush()
    assert a.got[-1] == {"type": "peer_left", "peer_id": "b"}
    assert shared.rooms["r"] == {"a": "n1"}


def test_room_limit_across_hubs(nodes):
    shared, h1, h2 = nodes
    run(h1.join(M("a"), "r"))
    run(h1.join(M("b"), "r"))
    run(h1.join(M("b2"), "r"))
    with pytest.raises(Exception) as e:
        run(h2.join(M("c"), "r"))
    assert type(e.value).__name__ == "RoomFull"


def test_events_during_a_join_are_applied_after_it(nodes):
    shared, h1, h2 = nodes
    a, b = M("a"), M("b")
    run(h2.join(b, "r"))
    # a "left" for b arrives at n1 while n1's join of a is under way: it must not be lost
    h1._joining["r"] = []
    h1.on_event({"op": "left", "room": "r", "peer": "b"})
    assert h1._joining["r"] == [{"op": "left", "room": "r", "peer": "b"}]
    del h1._joining["r"]
    run(h1.join(a, "r"))  # the store still lists b (its leave script ran after)
    h1.on_event({"op": "left", "room": "r", "peer": "b"})
    assert a.got == [{"type": "peer_left", "peer_id": "b"}]


def test_reconcile_after_an_outage(nodes):
    shared, h1, h2 = nodes
    a = M("a")
    run(h1.join(a, "r"))
    run(h2.join(M("b"), "r"))
    shared.flush()
    h1.reconcile("r", {"a": "n1", "c": "n2"})  # b went away and c came while events were lost
    assert a.got[-2:] == [{"type": "peer_left", "peer_id": "b"}, {"type": "new_peer", "peer_id": "c"}]


def test_unavailable_store_serves_what_one_node_can_alone(nodes):
    shared, h1, h2 = nodes
    a, b, c, c2 = M("a"), M("b"), M("c"), M("c2")  # rooms of up to 3
    run(h1.join(a, "r"))
    run(h1.join(c, "local"))
    run(h1.join(c2, "local"))
    run(h2.join(b, "r"))
    shared.flush()
    shared.up = False
    with pytest.raises(ClusterUnavailable):  # "r" has a member on another node: not served alone
        h1.join(M("d"), "r")
    with pytest.raises(ClusterUnavailable):
        h1.relay(a, "b", {"x": 1})
    h1.relay(c, "c2", {"x": 2})  # both local: served without the store
    assert c2.got[-1] == {"x": 2}
    e = M("e")
    assert h1.join(e, "local") == ["c", "c2"]  # a room this node serves alone: joined here
    assert c.got[-1] == {"type": "new_peer", "peer_id": "e"}
    assert h1.join(M("f"), "new") == []  # a new room too
    with pytest.raises(RoomFull):  # the room limit holds (3)
        h1.join(M("g"), "local")


def test_resume_on_another_node_keeps_order_and_causes_no_churn(nodes):
    shared, h1, h2 = nodes
    h3 = shared.hubs["n3"]
    host, viewer, third = M("host"), M("viewer"), M("third")
    run(h1.join(viewer, "r"))
    run(h2.join(host, "r"))
    run(h3.join(third, "r"))
    shared.flush()
    token = h1.resume_token(viewer)
    assert h1.detach(viewer)  # the viewer's connection to n1 dropped
    h2.relay(host, "viewer", {"n": 1})
    h3.relay(third, "viewer", {"t": 1})
    shared.flush()  # both reach n1 and are held there
    newer = M("fresh")
    pending = h2.resume(token, newer)  # the viewer comes back on n2
    d = Deferred.fromCoroutine(pending)
    h2.relay(host, "viewer", {"n": 2})  # n2 still routes it through n1: in flight
    shared.flush()  # takeover -> handover (+ forwards, markers)
    result = []
    d.addBoth(result.append)
    resumed = result[0]
    assert resumed.held == [{"n": 1}, {"t": 1}] and sorted(resumed.others) == ["host", "third"]
    h2.relay(host, "viewer", {"n": 3})  # local now, but must wait for n2's marker via n1
    h3.relay(third, "viewer", {"t": 2})
    shared.flush()
    assert newer.peer_id == "viewer"
    assert [m for m in newer.got if "n" in m] == [{"n": 2}, {"n": 3}]
    assert [m for m in newer.got if "t" in m] == [{"t": 2}]
    for member in (host, third):
        assert not [m for m in member.got if m.get("type") in ("peer_left", "new_peer")
                    and m.get("peer_id") == "viewer"]
    assert shared.rooms["r"]["viewer"] == "n2"
    # the token was spent: the store knows only the new one, which n2 handed out
    assert token not in shared.tokens and resumed.token != token
    assert shared.tokens[resumed.token]["node"] == "n2" and h2.resume_token(newer) == resumed.token
    assert h1.room_of(viewer) is None and h1.held_count == 0


def test_a_peer_that_moved_in_is_not_also_remembered_at_its_old_node(nodes):
    shared, h1, h2 = nodes
    h3 = shared.hubs["n3"]
    a, b = M("a"), M("b")
    run(h1.join(a, "r"))
    run(h2.join(b, "r"))
    shared.flush()
    token = h1.resume_token(a)
    h1.detach(a)
    newer = M("a2")
    d = Deferred.fromCoroutine(h2.resume(token, newer))  # a moves to b's node
    shared.flush()
    assert d.called
    # b's node now holds both; when b moves on, its handover must say a is on n2
    token_b = h2.resume_token(b)
    h2.detach(b)
    h3_member = M("b2")
    Deferred.fromCoroutine(h3.resume(token_b, h3_member))
    shared.queue_snapshot = list(shared.queue)
    handovers = []
    while shared.queue:
        node, event = shared.queue.pop(0)
        if event["op"] == "handover":
            handovers.append(event)
        shared.hubs[node].on_event(event)
    assert handovers[-1]["members"] == {"a": "n2"}
    assert h3._moving == {}  # no marker awaited from a node that no longer has anything
