"""Resume: a peer whose connection drops keeps its id and room for the grace
period, and gets the messages sent to it meanwhile, in order (single node)."""

from __future__ import annotations

import signal
import time

import pytest
from twisted.internet.task import Clock

from defaults import auth_policy, hold_limits, message_limits
from sscontrold.domain.auth import Authenticator, MemoryNonceStore
from sscontrold.domain.client import Client
from sscontrold.domain.rooms import Hub, UnknownToken
from test_domain import FakeConnection, NullEvents, send
from wsclient import RawPeer, connect


def raw_join(d, room="r"):
    raw = RawPeer("127.0.0.1", d.port)
    raw.send_json({"type": "join", "room_id": room})
    joined = raw.recv_json()
    return raw, joined["peer_id"], joined["resume_token"]


def test_resume_after_a_drop_keeps_id_room_and_messages(daemon_factory):
    d = daemon_factory("--resume-grace", "5")
    host = connect(d.ws)
    host_peer = host.join("r")["peer_id"]
    raw, viewer_id, token = raw_join(d)
    assert host.recv() == {"type": "new_peer", "peer_id": viewer_id}
    raw.drop()
    time.sleep(0.3)
    for i in range(5):  # sent while the viewer is away
        host.send({"type": "ice", "to": viewer_id, "candidate": f"c{i}", "sdp_mid": "0", "sdp_mline_index": i})
    viewer = connect(d.ws)
    resumed = viewer.request({"type": "resume", "resume_token": token})
    assert resumed["type"] == "resumed" and resumed["peer_id"] == viewer_id and resumed["room_id"] == "r"
    assert resumed["peers"] == [{"id": host_peer}]
    for i in range(5):
        held = viewer.recv()
        assert (held["type"], held["candidate"], held["from"]) == ("ice", f"c{i}", host_peer)
    host.send({"type": "offer", "to": viewer_id, "sdp": "after"})
    assert viewer.recv()["sdp"] == "after"
    viewer.send({"type": "answer", "to": host_peer, "sdp": "back"})
    assert host.recv() == {"type": "answer", "from": viewer_id, "to": host_peer, "sdp": "back"}
    assert host.nothing(0.5)  # no peer_left, no new_peer: no churn at all
    assert "room.resume" in d.log()


def test_grace_expiry_sends_one_peer_left_and_token_dies(daemon_factory):
    d = daemon_factory("--resume-grace", "1")
    host = connect(d.ws)
    host.join("r")
    raw, viewer_id, token = raw_join(d)
    host.recv()
    raw.drop()
    assert host.recv(timeout=5) == {"type": "peer_left", "peer_id": viewer_id}
    assert host.nothing(0.5)
    late = connect(d.ws)
    reply = late.request({"type": "resume", "resume_token": token})
    assert reply["type"] == "error" and reply["code"] == "resume_failed"


def test_clean_close_leaves_at_once(daemon_factory):
    d = daemon_factory("--resume-grace", "30")
    host, viewer = connect(d.ws), connect(d.ws)
    host.join("r")
    viewer_id = viewer.join("r")["peer_id"]
    host.recv()
    viewer.close()
    assert host.recv(timeout=2) == {"type": "peer_left", "peer_id": viewer_id}


def test_resume_while_the_old_connection_looks_alive(daemon_factory):
    d = daemon_factory("--resume-grace", "30")
    host = connect(d.ws)
    host_peer = host.join("r")["peer_id"]
    old = connect(d.ws)
    joined = old.join("r")
    host.recv()
    new = connect(d.ws)
    resumed = new.request({"type": "resume", "resume_token": joined["resume_token"]})
    assert resumed["peer_id"] == joined["peer_id"] and resumed["peers"] == [{"id": host_peer}]
    assert old.closed_with() == 4000  # the old connection is retired quietly
    assert host.nothing(0.5)
    host.send({"type": "offer", "to": joined["peer_id"], "sdp": "to the new one"})
    assert new.recv()["sdp"] == "to the new one"
    new.send({"type": "answer", "to": host_peer, "sdp": "from the new one"})
    assert host.recv()["from"] == joined["peer_id"]


def test_resume_refusals(daemon):
    p = connect(daemon.ws)
    assert p.request({"type": "resume", "resume_token": "nope"})["code"] == "resume_failed"
    assert p.request({"type": "resume"})["code"] == "bad_message"
    token = p.join("r")["resume_token"]
    assert p.request({"type": "resume", "resume_token": token})["code"] == "already_joined"


def test_drain_close_is_resumable(daemon_factory):
    d = daemon_factory("--resume-grace", "30", "--drain-timeout", "2")
    host = connect(d.ws)
    host.join("r")
    viewer = connect(d.ws)
    viewer.join("r")
    host.recv()
    d.signal(signal.SIGTERM)
    for p in (host, viewer):
        assert p.closed_with() == 1012
    # the node drained: no peer_left was sent to anyone before it went
    assert "room.detach" in d.log() and "room.leave" not in d.log()


def test_policy_close_is_not_resumable(daemon_factory):
    d = daemon_factory("--resume-grace", "30", "--max-message-bytes", "2048", "--max-frame-bytes", "2048",
                       "--max-sdp-bytes", "1000")
    host, bad = connect(d.ws), connect(d.ws)
    host.join("r")
    bad_id = bad.join("r")["peer_id"]
    host.recv()
    bad.send("x" * 4000)
    assert bad.closed_with() == 1009
    assert host.recv(timeout=3) == {"type": "peer_left", "peer_id": bad_id}


# --- domain


class M:
    def __init__(self, pid):
        self.peer_id = pid
        self.got, self.closed = [], None

    def send(self, message):
        self.got.append(message)

    def close(self, code, reason):
        self.closed = code


def test_hub_hold_overflow_ends_with_peer_left():
    clock = Clock()
    hub = Hub(4, clock, hold_limits(grace=10, max_messages=3, max_bytes=10_000))
    a, b = M("a"), M("b")
    hub.join(a, "r")
    hub.join(b, "r")
    token = hub.resume_token(b)
    assert hub.detach(b) and hub.held_count == 1
    for i in range(3):
        hub.relay(a, "b", {"n": i})
    assert a.got[-1] == {"type": "new_peer", "peer_id": "b"}
    hub.relay(a, "b", {"n": 3})  # one too many
    assert a.got[-1] == {"type": "peer_left", "peer_id": "b"}
    with pytest.raises(UnknownToken):
        hub.resume(token, M("new"))
    clock.advance(20)
    assert [m for m in a.got if m["type"] == "peer_left"] == [{"type": "peer_left", "peer_id": "b"}]


def test_hub_resume_then_old_member_cannot_leave():
    clock = Clock()
    hub = Hub(4, clock, hold_limits(grace=10))
    a, b = M("a"), M("b")
    hub.join(a, "r")
    hub.join(b, "r")
    token = hub.resume_token(b)
    hub.detach(b)
    hub.relay(a, "b", {"n": 1})
    newer = M("fresh")
    resumed = hub.resume(token, newer)
    assert newer.peer_id == "b" and resumed.held == [{"n": 1}] and resumed.others == ["a"]
    assert hub.leave(b) is None  # the stale member object no longer owns the place
    clock.advance(20)  # the grace timer was cancelled
    assert a.got == [{"type": "new_peer", "peer_id": "b"}]
    hub.relay(a, "b", {"n": 2})
    assert newer.got == [{"n": 2}]


def test_messages_during_the_drain_close_handshake_are_held():
    clock = Clock()
    hub = Hub(4, clock, hold_limits(grace=10))

    auth = Authenticator(auth_policy(api_keys=()), MemoryNonceStore(clock.seconds, 100), clock.seconds)
    a_conn, b_conn = FakeConnection(), FakeConnection()
    a = Client(a_conn, hub, auth, message_limits(), clock, NullEvents(), "x")
    b = Client(b_conn, hub, auth, message_limits(), clock, NullEvents(), "y")
    send(a, {"type": "join", "room_id": "r"})
    send(b, {"type": "join", "room_id": "r"})
    token = b_conn.sent[-1]["resume_token"]
    b.release(1012, "restart")
    assert b_conn.closed_with == (1012, "restart")
    send(a, {"type": "offer", "to": b.peer_id, "sdp": "sent during the close handshake"})
    send(b, {"type": "answer", "to": a.peer_id, "sdp": "b's last words"})  # still relayed
    assert a_conn.sent[-1]["sdp"] == "b's last words"
    b.disconnected(resumable=True)  # the close handshake ends
    newer = FakeConnection()
    c = Client(newer, hub, auth, message_limits(), clock, NullEvents(), "z")
    send(c, {"type": "resume", "resume_token": token})
    assert [m["type"] for m in newer.sent] == ["resumed", "offer"]
    assert newer.sent[1]["sdp"] == "sent during the close handshake"
    assert not [m for m in a_conn.sent if m["type"] == "peer_left"]
