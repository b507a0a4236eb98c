"""The domain under hostile or unlucky interleavings (issue 12): the hold overflow
that crashed ``Hub._place``, resume tokens (single use, rotated, bound to the
device, void after a leave), and a stateful fuzz of join/leave/drop/resume/relay."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from defaults import hold_limits
from sscontrold.domain.rooms import Hub, NotInRoom, RoomFull, UnknownPeer, UnknownToken
from test_domain_cluster import M as ClusterMember, nodes, run  # noqa: F401  (nodes: a fixture)


class Rec:
    """A member that fails the test if the hub talks to it once it is gone."""

    def __init__(self, pid: str, device: str | None = None):
        self.peer_id = pid
        self.bound_device = device
        self.got: list[dict] = []
        self.closed: int | None = None
        self.gone = False
        self.view: set[str] = set()  # the room as this member was told it

    def send(self, message: dict) -> None:
        assert not self.gone, f"message to departed {self.peer_id}: {message}"
        assert message.get("peer_id") != self.peer_id or message["type"] not in ("new_peer", "peer_left"), message
        self.got.append(message)
        if message["type"] == "new_peer":
            self.view.add(message["peer_id"])
        elif message["type"] == "peer_left":
            self.view.discard(message["peer_id"])

    def close(self, code: int, reason: str) -> None:
        self.closed = code
        self.gone = True


# --- issue 12, attack 5: Hub._place walked a room that a held peer's overflow changed


def test_a_join_that_overflows_a_held_peer_places_the_joiner_and_evicts_only_the_held():
    clock = Clock()
    hub = Hub(16, clock, hold_limits(grace=10, max_messages=4))
    a, f, h = Rec("A"), Rec("F"), Rec("H")
    for m in (a, f, h):
        m.view = set(hub.join(m, "r"))
    assert hub.detach(h)  # H's TCP connection dropped: held
    h.gone = True
    for i in range(4):  # exactly resume_max_messages
        hub.relay(f, "H", {"type": "offer", "n": i})
    v = Rec("V")
    others = hub.join(v, "r")  # used to raise RuntimeError (dict changed size during iteration)
    assert sorted(others) == ["A", "F"]  # no ghost in the joiner's peers
    for m in (a, f):
        assert m.got[-2:] == [{"type": "new_peer", "peer_id": "V"}, {"type": "peer_left", "peer_id": "H"}]
    assert v.got == []  # V never heard of H
    assert sorted(hub.members("r")) == ["A", "F", "V"] and hub.held_count == 0


def test_a_relay_that_overflows_the_held_peer_evicts_it_after_the_send():
    clock = Clock()
    hub = Hub(16, clock, hold_limits(grace=10, max_messages=2))
    a, b, c = Rec("a"), Rec("b"), Rec("c")
    for m in (a, b, c):
        hub.join(m, "r")
    token = hub.resume_token(b)
    hub.detach(b)
    b.gone = True
    for i in range(3):
        hub.relay(a, "b", {"type": "ice", "n": i})
    assert c.got[-1] == {"type": "peer_left", "peer_id": "b"}
    with pytest.raises(UnknownToken):
        hub.resume(token, Rec("b2"))


# --- issue 12, attack 7: resume tokens


def test_resume_tokens_are_single_use_and_rotated():
    hub = Hub(4, Clock(), hold_limits(grace=10))
    a, b = Rec("a"), Rec("b")
    hub.join(a, "r")
    hub.join(b, "r")
    first = hub.resume_token(b)
    hub.detach(b)
    b2 = Rec("fresh")
    resumed = hub.resume(first, b2)
    assert resumed.token and resumed.token != first and hub.resume_token(b2) == resumed.token
    with pytest.raises(UnknownToken):  # spent, even while the peer is live again
        hub.resume(first, Rec("thief"))
    assert b2.closed is None and hub.room_of(b2) == "r"
    hub.detach(b2)
    b3 = Rec("again")
    assert hub.resume(resumed.token, b3).room_id == "r"


def test_a_token_is_bound_to_the_device_and_a_refusal_leaves_the_live_peer_alone():
    hub = Hub(4, Clock(), hold_limits(grace=10))
    a, b = Rec("a", device="dev-a"), Rec("b", device="dev-b")
    hub.join(a, "r")
    hub.join(b, "r")
    token = hub.resume_token(b)
    with pytest.raises(UnknownToken):  # another authenticated device holding b's token
        hub.resume(token, Rec("x", device="dev-a"))
    with pytest.raises(UnknownToken):
        hub.resume(token, Rec("y", device=None))
    assert b.closed is None and hub.room_of(b) == "r"  # the live peer was not disturbed
    hub.relay(a, "b", {"type": "offer"})
    assert b.got[-1] == {"type": "offer"}
    same = Rec("z", device="dev-b")  # the device itself, on a new connection
    assert hub.resume(token, same).room_id == "r" and b.closed == 4000


def test_a_clean_leave_voids_the_token():
    hub = Hub(4, Clock(), hold_limits(grace=10))
    a, b = Rec("a"), Rec("b")
    hub.join(a, "r")
    hub.join(b, "r")
    token = hub.resume_token(b)
    hub.leave(b)
    with pytest.raises(UnknownToken):
        hub.resume(token, Rec("b2"))
    moved = Rec("m")
    hub.join(moved, "r")
    old = hub.resume_token(moved)
    hub.join(moved, "other")  # moving to another room is a leave too
    with pytest.raises(UnknownToken):
        hub.resume(old, Rec("m2"))


def test_cluster_takeover_checks_token_and_device_at_the_node_that_holds_the_peer(nodes):  # noqa: F811
    shared, h1, h2 = nodes
    host, viewer = ClusterMember("host"), ClusterMember("viewer")
    viewer.bound_device = "dev-v"
    closed = []
    viewer.close = lambda code, reason: closed.append(code)
    run(h1.join(viewer, "r"))
    run(h2.join(host, "r"))
    shared.flush()
    token = h1.resume_token(viewer)
    # another device holding the token, on another node: refused by n1; the peer stays
    thief = ClusterMember("thief")
    thief.bound_device = "dev-x"
    refused = []
    Deferred.fromCoroutine(h2.resume(token, thief)).addErrback(lambda f: refused.append(f.trap(UnknownToken)))
    shared.flush()
    assert refused == [UnknownToken] and closed == [] and h1.room_of(viewer) == "r"
    # the device itself resumes on n2: the token is spent, the answer carries a new one
    owner = ClusterMember("owner")
    owner.bound_device = "dev-v"
    result = []
    Deferred.fromCoroutine(h2.resume(token, owner)).addCallback(result.append)
    shared.flush()
    assert result and result[0].token not in ("", token) and owner.peer_id == "viewer"
    assert h2.resume_token(owner) == result[0].token and token not in shared.tokens
    again = []
    Deferred.fromCoroutine(h1.resume(token, ClusterMember("late"))).addErrback(
        lambda f: again.append(f.trap(UnknownToken)))
    shared.flush()
    assert again == [UnknownToken]
    # a local resume on n2 rotates in the store too
    h2.detach(owner)
    local = ClusterMember("local")
    local.bound_device = "dev-v"
    resumed = h2.resume(result[0].token, local)
    shared.flush()
    assert resumed.token != result[0].token and result[0].token not in shared.tokens
    assert shared.tokens[resumed.token]["node"] == "n2"


# --- a stateful fuzz of the hub: join, leave, drop, resume, relay, time


class HubMachine(RuleBasedStateMachine):
    ROOMS = ("r1", "r2")

    @initialize()
    def start(self):
        self.clock = Clock()
        self.hub = Hub(3, self.clock, hold_limits(grace=5, max_messages=3, max_bytes=10_000))
        self.live: list[Rec] = []  # members whose connection is up
        self.tokens: list[str] = []  # every token handed out
        self.spent: set[str] = set()
        self.count = 0

    def _new(self) -> Rec:
        self.count += 1
        rec = Rec(f"p{self.count}")
        self.live.append(rec)
        return rec

    def _gone(self, rec: Rec) -> None:
        rec.gone = True
        self.live.remove(rec)

    def _closed_by_hub(self) -> None:
        for rec in [r for r in self.live if r.gone]:
            self.live.remove(rec)

    @rule(room=st.sampled_from(ROOMS))
    def connect_and_join(self, room):
        rec = self._new()
        try:
            rec.view = set(self.hub.join(rec, room))
        except RoomFull:
            return
        self.tokens.append(self.hub.resume_token(rec))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), room=st.sampled_from(ROOMS))
    def move(self, data, room):
        rec = data.draw(st.sampled_from(self.live))
        before = self.hub.room_of(rec)
        try:
            others = self.hub.join(rec, room)
        except RoomFull:
            return
        if before != room:
            rec.view = set(others)
            self.tokens.append(self.hub.resume_token(rec))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def leave(self, data):
        rec = data.draw(st.sampled_from(self.live))
        self._gone(rec)
        self.hub.leave(rec)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def drop(self, data):
        rec = data.draw(st.sampled_from(self.live))
        self._gone(rec)
        if not self.hub.detach(rec):
            self.hub.leave(rec)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def resume(self, data):
        token = data.draw(st.sampled_from(self.tokens))
        rec = self._new()
        try:
            resumed = self.hub.resume(token, rec)
        except UnknownToken:
            self._gone(rec)
            return
        assert token not in self.spent, "a spent token was accepted"
        self.spent.add(token)
        self.tokens.append(resumed.token)
        rec.view = set(resumed.others)
        self._closed_by_hub()  # a live connection it replaced was closed (4000)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def relay(self, data):
        sender = data.draw(st.sampled_from(self.live))
        room = self.hub.room_of(sender)
        targets = self.hub.members(room) if room else ["nobody"]
        to = data.draw(st.sampled_from(targets))
        try:
            self.hub.relay(sender, to, {"type": "offer", "from": sender.peer_id, "to": to})
        except (NotInRoom, UnknownPeer):
            assert room is None or to == "nobody"

    @rule(seconds=st.sampled_from([0.5, 2.0, 6.0]))
    def time_passes(self, seconds):
        self.clock.advance(seconds)

    @invariant()
    def membership_is_consistent(self):
        hub = self.hub
        for room_id, room in hub._rooms.items():
            assert room, "an empty room is kept"
            assert len(room) <= hub.max_peers_per_room
            for pid, member in room.items():
                assert member.peer_id == pid and hub._room_of[pid] == room_id
        assert all(pid in hub._rooms[r] for pid, r in hub._room_of.items())
        assert {t: p for p, t in hub._token_of.items()} == hub._peer_of
        assert set(hub._token_of) <= set(hub._room_of)

    @invariant()
    def every_live_member_knows_its_room(self):
        for rec in self.live:
            room = self.hub.room_of(rec)
            if room is not None:
                assert rec.view == set(self.hub.members(room)) - {rec.peer_id}, rec.peer_id


HubMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
test_hub_interleavings = HubMachine.TestCase


# --- issue 12, attack 8: failure throttle and log budget


def test_failure_throttle_backs_off_and_decays():
    from sscontrold.domain.limits import FailureThrottle
    clock = Clock()
    throttle = FailureThrottle(clock.seconds, limit=3, window=30)
    for _ in range(3):
        assert throttle.retry_after("a") == 0
        throttle.failed("a")
    assert throttle.retry_after("a") == pytest.approx(10)  # one failure leaks away every 10 s
    assert throttle.retry_after("b") == 0  # per address
    throttle.failed("a")  # guessing on pushes the wait out
    assert throttle.retry_after("a") == pytest.approx(20)
    clock.advance(20.5)
    assert throttle.retry_after("a") == 0
    clock.advance(60)
    assert throttle.retry_after("a") == 0 and len(throttle) == 0  # forgotten once decayed
    for _ in range(100):
        throttle.failed("c")
    clock.advance(1)
    assert throttle.retry_after("c") <= 60  # the backoff is bounded (twice the limit)


def test_log_budget_counts_what_it_left_out():
    from sscontrold.domain.limits import LogBudget
    clock = Clock()
    budget = LogBudget(clock.seconds, per_minute=2)
    assert [budget.take() for _ in range(5)] == [0, 0, None, None, None]
    clock.advance(60)
    assert budget.take() == 3 and budget.take() == 0 and budget.take() is None


def test_one_secret_comparison():
    from sscontrold.domain.compare import same_secret
    assert same_secret("k", "k") and not same_secret("k", "k2") and not same_secret("k", None)
    assert same_secret(None, None) and same_secret(b"x", "x")
    import pathlib, re  # noqa: E401
    root = pathlib.Path(__file__).resolve().parent.parent / "sscontrold"
    for path in root.rglob("*.py"):  # compare_digest only in the helper
        text = path.read_text()
        if path.name != "compare.py":
            assert "compare_digest" not in text, path
            assert not re.search(r"(key|token|secret|password)\w*\s*[!=]=\s*\w*(key|token|secret|password)", text), path
