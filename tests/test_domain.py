"""Pure unit tests of the domain: no sockets, a fake clock."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from defaults import auth_policy, message_limits
from sscontrold.domain.auth import Authenticator, AuthRefused, MemoryNonceStore, compute_token
from sscontrold.domain.client import Client, Outcome
from sscontrold.domain.limits import ConnectionCounter, TokenBucket
from sscontrold.domain.metrics import MemoryRecorder
from sscontrold.domain.rooms import Hub, NotInRoom, RoomFull, UnknownPeer


class FakeConnection:
    def __init__(self):
        self.sent: list[dict] = []
        self.closed_with: tuple[int, str] | None = None

    def send(self, message):
        self.sent.append(message)

    def close(self, code, reason):
        self.closed_with = (code, reason)


class NullEvents:
    def __init__(self):
        self.events = []

    def emit(self, level, event, **fields):
        self.events.append((level, event, fields))


def make_client(hub, clock, keys=(), limits=None, nonces=None, recorder=None):
    limits = message_limits() if limits is None else limits
    auth = Authenticator(auth_policy(api_keys=tuple(keys)), nonces or MemoryNonceStore(clock.seconds, 1000),
                         clock.seconds)
    conn = FakeConnection()
    return Client(conn, hub, auth, limits, clock, NullEvents(), "192.0.2.1", recorder=recorder), conn


def send(client, message):
    return client.receive(json.dumps(message).encode())


FRAMEWORKS = ("twisted", "autobahn", "prometheus_client")
DOMAIN = Path(__file__).resolve().parent.parent / "sscontrold" / "domain"


def test_domain_imports_neither_twisted_autobahn_nor_prometheus_client():
    for path in DOMAIN.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(FRAMEWORKS), (path.name, name)
            # nor the adapter's modules (sscontrold.metrics imports prometheus_client)
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1 and not (node.module or "").startswith("sscontrold"), (path.name, node.module)


def test_domain_loads_no_framework_even_indirectly():
    modules = ", ".join(f"sscontrold.domain.{p.stem}" for p in sorted(DOMAIN.glob("*.py")) if p.stem != "__init__")
    code = (f"import sys, {modules}\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded


# --- Hub


class M:
    def __init__(self, pid):
        self.peer_id = pid
        self.got = []

    def send(self, message):
        self.got.append(message)


def test_hub_join_leave_relay():
    hub = Hub(max_peers_per_room=2)
    a, b, c = M("a"), M("b"), M("c")
    assert hub.join(a, "r") == []
    assert hub.join(b, "r") == ["a"]
    assert a.got == [{"type": "new_peer", "peer_id": "b"}]
    with pytest.raises(RoomFull):
        hub.join(c, "r")
    hub.join(c, "other")
    with pytest.raises(UnknownPeer):
        hub.relay(a, "c", {"x": 1})
    hub.relay(a, "b", {"x": 1})
    assert b.got == [{"x": 1}]
    assert hub.room_count == 2
    assert hub.leave(b) == "r" and a.got[-1] == {"type": "peer_left", "peer_id": "b"}
    assert hub.leave(b) is None
    hub.leave(a)
    assert hub.room_count == 1  # empty rooms are dropped
    with pytest.raises(NotInRoom):
        hub.relay(a, "c", {})


def test_hub_move_and_rejoin_same_room():
    hub = Hub(4)
    a, b, c = M("a"), M("b"), M("c")
    hub.join(a, "r1")
    hub.join(b, "r1")
    hub.join(c, "r2")
    assert hub.join(b, "r2") == ["c"]
    assert a.got[-1] == {"type": "peer_left", "peer_id": "b"}
    assert c.got[-1] == {"type": "new_peer", "peer_id": "b"}
    before = len(c.got)
    assert hub.join(b, "r2") == ["c"] and len(c.got) == before


def test_full_room_does_not_evict_the_mover():
    hub = Hub(1)
    a, b = M("a"), M("b")
    hub.join(a, "full")
    hub.join(b, "mine")
    with pytest.raises(RoomFull):
        hub.join(b, "full")
    assert hub.room_of(b) == "mine"


# --- auth


def test_authenticator_window_skew_replay_rotation_allowlist():
    clock = Clock()
    clock.advance(1_000_000)
    store = MemoryNonceStore(clock.seconds, 1000)
    auth = Authenticator(auth_policy(api_keys=("k1", "k2"), window=300, clock_skew=30,
                                     device_allowlist=frozenset({"d"})), store, clock.seconds)
    now = int(clock.seconds())

    def verify(key="k1", device="d", ts=now, nonce="n"):
        auth.verify(device, ts, nonce, compute_token(key, device, ts, nonce))

    verify(nonce="a")
    verify(key="k2", nonce="b")
    verify(ts=now + 30, nonce="c")
    verify(ts=now - 300, nonce="d")
    for kwargs, reason in [({"key": "zz", "nonce": "e"}, "bad_token"),
                           ({"ts": now + 31, "nonce": "f"}, "timestamp_future"),
                           ({"ts": now - 301, "nonce": "g"}, "timestamp_expired"), ({"nonce": "a"}, "replay"),
                           ({"device": "x", "nonce": "h"}, "device_not_allowed")]:
        with pytest.raises(AuthRefused) as e:
            verify(**kwargs)
        assert e.value.reason == reason
    # a bad token does not consume its nonce
    verify(nonce="e")
    # uppercase hex is not the token
    with pytest.raises(AuthRefused):
        auth.verify("d", now, "u", compute_token("k1", "d", now, "u").upper())


def test_nonce_store_forgets_after_window_and_is_bounded():
    clock = Clock()
    store = MemoryNonceStore(clock.seconds, max_entries=3)
    assert store.add(b"a", 10) and not store.add(b"a", 10)
    store.add(b"b", 20)
    store.add(b"c", 30)
    with pytest.raises(AuthRefused) as e:
        store.add(b"d", 30)  # full: refuse rather than forget a live nonce
    assert e.value.reason == "nonce_store_full"
    clock.advance(10)
    assert store.add(b"d", 40) and len(store) == 3  # "a" expired and was dropped
    clock.advance(100)
    assert store.add(b"a", 200) and len(store) == 1


# --- limits


def test_token_bucket():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, strikes=2, clock=clock.seconds)
    assert [bucket.take() for _ in range(3)] == ["ok"] * 3
    assert bucket.take() == "refuse"
    assert bucket.take() == "close"
    clock.advance(0.5)
    assert bucket.take() == "ok"
    clock.advance(100)
    assert [bucket.take() for _ in range(4)] == ["ok", "ok", "ok", "refuse"]  # capped at the burst


def test_connection_counter():
    c = ConnectionCounter(max_total=3, max_per_address=2)
    assert c.try_open("a") is None and c.try_open("a") is None
    assert c.try_open("a") == "per_address"
    assert c.try_open("b") is None
    assert c.try_open("c") == "total"
    c.close("a")
    assert c.try_open("c") is None and c.total == 3


# --- client state machine


def test_client_auth_deadline_and_failures():
    clock, hub = Clock(), Hub(4)
    client, conn = make_client(hub, clock, keys=("k",), limits=message_limits(auth_timeout=5))
    clock.advance(4.9)
    assert conn.closed_with is None
    clock.advance(0.2)
    assert conn.closed_with == (1008, "authentication timeout")

    client, conn = make_client(hub, clock, keys=("k",))
    now = int(clock.seconds())
    good = {"type": "auth", "device_id": "d", "timestamp": now, "nonce": "n1",
            "token": compute_token("k", "d", now, "n1")}
    assert send(client, good) is Outcome.HANDLED
    assert conn.sent[-1]["type"] == "auth_success" and client.authenticated
    clock.advance(100)
    assert conn.closed_with is None  # the deadline was cancelled

    client, conn = make_client(hub, clock, keys=("k",))
    for _ in range(5):
        send(client, {**good, "nonce": "other"})
    assert conn.closed_with == (1008, "too many failed authentication attempts")


def test_client_relay_overwrites_from_and_leaves_on_disconnect():
    clock, hub = Clock(), Hub(4)
    a, a_conn = make_client(hub, clock)
    b, b_conn = make_client(hub, clock)
    send(a, {"type": "join", "room_id": "r"})
    send(b, {"type": "join", "room_id": "r"})
    send(a, {"type": "answer", "from": b.peer_id, "to": b.peer_id, "sdp": "s", "extra": 1})
    assert b_conn.sent[-1] == {"type": "answer", "from": a.peer_id, "to": b.peer_id, "sdp": "s"}
    b.disconnected()
    b.disconnected()  # idempotent
    assert a_conn.sent[-1] == {"type": "peer_left", "peer_id": b.peer_id}
    assert [m["type"] for m in a_conn.sent].count("peer_left") == 1


def test_client_sizes_are_measured_in_bytes():
    clock, hub = Clock(), Hub(4)
    a, a_conn = make_client(hub, clock, limits=message_limits(max_sdp_bytes=10))
    b, _ = make_client(hub, clock)
    send(a, {"type": "join", "room_id": "r"})
    send(b, {"type": "join", "room_id": "r"})
    send(a, {"type": "offer", "to": b.peer_id, "sdp": "é" * 6})  # 12 bytes
    assert a_conn.sent[-1]["code"] == "too_long"


def test_receive_says_what_became_of_each_message_and_counts_it():
    clock, recorder = Clock(), MemoryRecorder()
    hub = Hub(4, recorder=recorder)
    a, a_conn = make_client(hub, clock, recorder=recorder)
    b, _ = make_client(hub, clock, recorder=recorder)
    assert send(a, {"type": "ice", "to": b.peer_id, "candidate": "", "sdp_mid": "0",
                    "sdp_mline_index": 0}) is Outcome.REFUSED  # not in a room yet
    assert a_conn.sent[-1]["code"] == "not_in_room"
    assert send(a, {"type": "join", "room_id": "r"}) is Outcome.HANDLED
    assert send(b, {"type": "join", "room_id": "r"}) is Outcome.HANDLED
    assert send(a, {"type": "offer", "to": b.peer_id, "sdp": "s"}) is Outcome.RELAYED
    assert send(b, {"type": "answer", "to": a.peer_id, "sdp": "s"}) is Outcome.RELAYED
    assert send(a, {"type": "ice", "to": b.peer_id, "candidate": "c", "sdp_mid": "0",
                    "sdp_mline_index": 0}) is Outcome.RELAYED
    assert send(a, {"type": "offer", "to": "peer_nobody", "sdp": "s"}) is Outcome.REFUSED
    assert send(a, {"type": "offer", "to": a.peer_id, "sdp": "s"}) is Outcome.REFUSED
    assert send(a, {"type": "nope"}) is Outcome.REFUSED
    assert a.receive(b"{not json") is Outcome.REFUSED
    assert a.receive(b"\xff") is Outcome.REFUSED  # not UTF-8: closed with 1007
    assert a_conn.closed_with == (1007, "invalid UTF-8 in a text message")
    assert send(a, {"type": "join", "room_id": "r"}) is Outcome.REFUSED  # closing: ignored

    assert recorder.messages == {"ice": 2, "join": 2, "offer": 3, "answer": 1, "unknown": 1, "invalid": 2}
    assert recorder.errors == {"not_in_room": 1, "unknown_peer": 1, "self_relay": 1, "unknown_type": 1,
                               "bad_message": 1, "invalid_utf8": 1}
    assert recorder.room_count == 1
    b.disconnected()
    a.disconnected()
    assert recorder.room_count == 0


def test_auth_and_resume_are_recorded():
    clock, recorder = Clock(), MemoryRecorder()
    hub = Hub(4, clock, recorder=recorder)
    client, conn = make_client(hub, clock, keys=("k",), recorder=recorder)
    now = int(clock.seconds())
    send(client, {"type": "auth", "device_id": "d", "timestamp": now, "nonce": "n1", "token": "0" * 64})
    send(client, {"type": "auth", "device_id": "d", "timestamp": now, "nonce": "n2",
                  "token": compute_token("k", "d", now, "n2")})
    assert set(recorder.auths) == {("refused", "bad_token"), ("accepted", "token")}
    assert send(client, {"type": "resume", "resume_token": "nope"}) is Outcome.REFUSED
    assert recorder.resumes == {"unknown_token": 1}
