"""The WebSocket protocol of docs/protocol.md section 1, against the real daemon."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
from websockets.exceptions import InvalidStatus

from conftest import http
from wsclient import RawPeer, auth_message, connect

KEY = "test-key-0123456789abcdef"


def pair(d, room="r1"):
    a = connect(d.ws)
    a.join(room)
    b = connect(d.ws)
    peers = b.join(room)
    joined = a.recv()
    assert joined == {"type": "new_peer", "peer_id": peers["peer_id"]}
    return a, b, peers["peers"][0]["id"], peers["peer_id"]


# --- HTTP beside the WebSocket


def test_banner_health_and_json_404(daemon):
    status, headers, body = http("GET", daemon.base + "/")
    assert status == 200 and body.startswith(b"sscontrol-signaling ")
    assert headers["Content-Type"].startswith("text/plain")
    status, headers, body = http("GET", daemon.base + "/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok"
    assert {"version", "connections", "rooms"} <= set(health)
    status, headers, body = http("GET", daemon.base + "/no/such/thing")
    assert status == 404 and json.loads(body) == {"success": False, "error": "not found", "code": "not_found"}
    status, _, body = http("POST", daemon.base + "/health", b"{}")
    assert status == 405 and "error" in json.loads(body)


def test_upgrade_on_root_and_ws(daemon):
    for url in (daemon.ws, daemon.ws[: -len("/ws")] + "/"):
        p = connect(url)
        assert p.join("x")["peers"] == []
        p.close()


def test_health_counts_connections_and_rooms(daemon):
    a, b, _, _ = pair(daemon)
    c = connect(daemon.ws)
    c.join("other")
    health = json.loads(http("GET", daemon.base + "/health")[2])
    assert health["connections"] == 3 and health["rooms"] == 2


# --- rooms and relay


def test_join_peers_new_peer_and_unique_unguessable_ids(daemon):
    a = connect(daemon.ws)
    first = a.join("room")
    assert first["peers"] == []
    b = connect(daemon.ws)
    second = b.join("room")
    assert second["peers"] == [{"id": first["peer_id"]}]
    assert a.recv() == {"type": "new_peer", "peer_id": second["peer_id"]}
    port = b.ws.socket.getsockname()[1]
    ids = {first["peer_id"], second["peer_id"]}
    for i in range(20):
        p = connect(daemon.ws)
        ids.add(p.join(f"solo{i}")["peer_id"])
        p.close()
    assert len(ids) == 22
    for pid in ids:
        assert re.fullmatch(r"peer_[A-Za-z0-9_-]{22}", pid), pid
        assert str(port) not in pid


@pytest.mark.parametrize("kind", ["offer", "answer"])
def test_sdp_relay_sets_from(daemon, kind):
    a, b, a_id, b_id = pair(daemon)
    a.send({"type": kind, "from": "someone-else", "to": b_id, "sdp": "v=0\r\n"})
    assert b.recv() == {"type": kind, "from": a_id, "to": b_id, "sdp": "v=0\r\n"}


def test_ice_relay_sets_from_and_keeps_fields(daemon):
    a, b, a_id, b_id = pair(daemon)
    b.send({"type": "ice", "from": a_id, "to": a_id, "candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host",
            "sdp_mid": "0", "sdp_mline_index": 65535})
    assert a.recv() == {"type": "ice", "from": b_id, "to": a_id,
                        "candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdp_mid": "0",
                        "sdp_mline_index": 65535}


def test_relay_only_within_the_room(daemon):
    a, b, a_id, b_id = pair(daemon, "room-a")
    c = connect(daemon.ws)
    c_id = c.join("room-c")["peer_id"]
    err = a.request({"type": "offer", "to": c_id, "sdp": "x"})
    assert err["type"] == "error" and "unknown peer" in err["message"]
    assert c.nothing()
    err = c.request({"type": "offer", "to": a_id, "sdp": "x"})
    assert err["type"] == "error"
    assert a.nothing() and b.nothing()


def test_relay_before_join_is_refused(daemon):
    a = connect(daemon.ws)
    err = a.request({"type": "offer", "to": "peer_x", "sdp": "x"})
    assert err == {"type": "error", "message": "join a room first", "code": "not_in_room"}


def test_second_join_moves(daemon):
    a, b, a_id, b_id = pair(daemon, "old")
    c = connect(daemon.ws)
    c_id = c.join("new")["peer_id"]
    moved = b.join("new")
    assert moved["peers"] == [{"id": c_id}]
    assert a.recv() == {"type": "peer_left", "peer_id": b_id}
    assert c.recv() == {"type": "new_peer", "peer_id": b_id}
    # joining the room one is in changes nothing and tells nobody
    assert b.join("new")["peers"] == [{"id": c_id}]
    assert c.nothing()


def test_peer_left_on_close(daemon):
    a, b, a_id, b_id = pair(daemon)
    b.close()
    assert a.recv() == {"type": "peer_left", "peer_id": b_id}


@pytest.mark.parametrize("grace", [0, 1])
def test_peer_left_when_tcp_dies_without_close_frame(daemon_factory, grace):
    d = daemon_factory("--resume-grace", str(grace))
    a = connect(d.ws)
    a.join("r")
    raw = RawPeer("127.0.0.1", d.port)
    raw.send_json({"type": "join", "room_id": "r"})
    raw_id = raw.recv_json()["peer_id"]
    assert a.recv() == {"type": "new_peer", "peer_id": raw_id}
    dropped = time.monotonic()
    raw.drop()
    # after the resume grace (its place is held that long), exactly once
    assert a.recv() == {"type": "peer_left", "peer_id": raw_id}
    assert grace * 0.8 <= time.monotonic() - dropped < grace + 3
    assert a.nothing(0.5)


# --- auth


@pytest.fixture
def authd(daemon_factory):
    return daemon_factory("--auth-timeout", "3", env={"SSCONTROL_API_KEY": KEY})


def test_auth_required_before_anything_else(authd):
    p = connect(authd.ws)
    for message in ({"type": "join", "room_id": "r"}, {"type": "offer", "to": "x", "sdp": "y"}):
        assert p.request(message) == {"type": "error", "message": "authentication required",
                                      "code": "auth_required"}
    ok = p.request(auth_message(KEY))
    assert ok["type"] == "auth_success" and isinstance(ok["message"], str)
    assert p.join("r")["peers"] == []


def test_auth_refusals(authd):
    p = connect(authd.ws)
    now = int(time.time())
    bad = auth_message(KEY)
    bad["token"] = "0" * 64
    cases = [
        (bad, "invalid token"),
        (auth_message("wrong-key"), "invalid token"),
        (auth_message(KEY, timestamp=now - 400), "too old"),
        (auth_message(KEY, timestamp=now + 120), "future"),
    ]
    for message, words in cases:
        reply = p.request(message)
        assert reply["type"] == "error" and words in reply["message"], reply
    # a timestamp slightly ahead (clock skew) is fine
    assert p.request(auth_message(KEY, timestamp=now + 10))["type"] == "auth_success"


def test_nonce_replay_is_refused(authd):
    message = auth_message(KEY, nonce="n-1")
    assert connect(authd.ws).request(message)["type"] == "auth_success"
    reply = connect(authd.ws).request(message)
    assert reply["type"] == "error" and "nonce already used" in reply["message"]
    # the same nonce with another timestamp is another token: fine
    assert connect(authd.ws).request(auth_message(KEY, nonce="n-1", timestamp=int(time.time()) - 1))[
        "type"] == "auth_success"


def test_several_keys_for_rotation_and_device_allowlist(daemon_factory, tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("old-key\nnew-key\n")
    d = daemon_factory("--api-key-file", str(keyfile), "--device-allowlist", "host-1,viewer-1")
    for key in ("old-key", "new-key"):
        assert connect(d.ws).request(auth_message(key, "host-1"))["type"] == "auth_success"
    reply = connect(d.ws).request(auth_message("new-key", "intruder"))
    assert reply["type"] == "error" and "device not allowed" in reply["message"]
    log = d.log()
    assert "auth.accepted" in log and "auth.refused" in log and "device_not_allowed" in log
    assert "old-key" not in log and "new-key" not in log


def test_auth_deadline_closes_with_1008(authd):
    p = connect(authd.ws)
    started = time.monotonic()
    assert p.closed_with(timeout=10) == 1008
    assert time.monotonic() - started >= 2.5


def test_repeated_auth_failures_close_with_1008(authd):
    p = connect(authd.ws)
    for _ in range(4):
        assert p.request(auth_message("nope"))["type"] == "error"
    p.send(auth_message("nope"))
    assert p.closed_with() == 1008


def test_auth_off_accepts_auth_message(daemon):
    reply = connect(daemon.ws).request(auth_message("anything"))
    assert reply["type"] == "auth_success"


def test_secrets_never_logged(authd):
    p = connect(authd.ws)
    message = auth_message(KEY)
    message["api_key"] = KEY
    assert p.request(message)["type"] == "auth_success"
    p.request(auth_message("another-secret-key"))
    p.close()
    time.sleep(0.2)
    log = authd.log()
    assert "auth.accepted" in log
    assert KEY not in log and "another-secret-key" not in log and message["token"] not in log


# --- bad input: each answered, the connection stays usable


BAD_INPUTS = [
    ("not json", "invalid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('"text"', "must be a JSON object"),
    ("{}", "field 'type'"),
    ('{"type": 5}', "field 'type'"),
    ('{"type": "bogus"}', "unknown message type"),
    ('{"type": "join"}', "field 'room_id'"),
    ('{"type": "join", "room_id": 7}', "field 'room_id'"),
    ('{"type": "join", "room_id": ""}', "must not be empty"),
    ('{"type": "offer", "to": "x"}', "field 'sdp'"),
    ('{"type": "answer", "sdp": "x"}', "field 'to'"),
    ('{"type": "ice", "to": "x", "candidate": "c", "sdp_mid": "0"}', "sdp_mline_index"),
    ('{"type": "ice", "to": "x", "candidate": "c", "sdp_mid": "0", "sdp_mline_index": 70000}', "between"),
    ('{"type": "ice", "to": "x", "candidate": "c", "sdp_mid": "0", "sdp_mline_index": true}', "sdp_mline_index"),
    ('{"type": "ice", "to": "x", "candidate": 1, "sdp_mid": "0", "sdp_mline_index": 0}', "candidate"),
    ('{"type": "auth", "device_id": "d", "timestamp": "1", "nonce": "n", "token": "t"}', "timestamp"),
    ('{"type": "offer", "to": "nobody", "sdp": "x"}', "unknown peer"),
]


def test_bad_input_gets_an_error_and_the_connection_stays(daemon):
    a, b, a_id, b_id = pair(daemon)
    for text, words in BAD_INPUTS:
        reply = a.request(text)
        assert reply["type"] == "error" and words in reply["message"], (text, reply)
    a.ws.send(b"\x00\x01binary")
    reply = a.recv()
    assert reply["type"] == "error" and "binary" in reply["message"]
    a.send({"type": "offer", "to": b_id, "sdp": "still works"})
    assert b.recv()["sdp"] == "still works"
    assert b.nothing()  # none of the bad input reached the other peer


def test_invalid_utf8_closes_with_1007(daemon):
    raw = RawPeer("127.0.0.1", daemon.port)
    raw.send_frame(0x1, b'{"type": "\xff\xfe"}')
    assert raw.close_code() == 1007


# --- limits


def test_oversized_message_closes_with_1009(daemon_factory):
    d = daemon_factory("--max-message-bytes", "4096", "--max-frame-bytes", "4096", "--max-sdp-bytes", "2000")
    a, b, a_id, b_id = pair(d)
    reply = a.request({"type": "offer", "to": b_id, "sdp": "x" * 2500})
    assert reply["type"] == "error" and "too long" in reply["message"]
    a.send({"type": "offer", "to": b_id, "sdp": "x" * 5000})
    assert a.closed_with() == 1009
    assert b.recv() == {"type": "peer_left", "peer_id": a_id}


def test_oversized_fragmented_message_closes_with_1009(daemon_factory):
    d = daemon_factory("--max-message-bytes", "4096", "--max-frame-bytes", "2048", "--max-sdp-bytes", "2000")
    raw = RawPeer("127.0.0.1", d.port)
    raw.send_frame(0x1, b"x" * 2000, fin=False)
    raw.send_frame(0x0, b"x" * 2000, fin=False)
    raw.send_frame(0x0, b"x" * 2000, fin=True)
    assert raw.close_code() == 1009


def test_id_length_limit(daemon_factory):
    d = daemon_factory("--max-id-length", "16")
    p = connect(d.ws)
    reply = p.request({"type": "join", "room_id": "r" * 17})
    assert reply["type"] == "error" and "too long" in reply["message"]
    assert p.join("r" * 16)["peers"] == []


def test_rate_limit_errors_then_closes_1008(daemon_factory):
    d = daemon_factory("--rate-limit-per-second", "1", "--rate-limit-burst", "5", "--rate-limit-strikes", "5")
    p = connect(d.ws)
    for i in range(5):
        assert p.request({"type": "join", "room_id": f"r{i}"})["type"] == "peers"
    for _ in range(4):
        reply = p.request({"type": "join", "room_id": "x"})
        assert reply["type"] == "error" and "rate limit" in reply["message"]
    p.send({"type": "join", "room_id": "x"})
    assert p.closed_with() == 1008
    assert "limit.rate" in d.log()


def test_room_full(daemon_factory):
    d = daemon_factory("--max-peers-per-room", "2")
    a, b, _, _ = pair(d)
    c = connect(d.ws)
    assert c.request({"type": "join", "room_id": "r1"}) == {
        "type": "error", "message": "room full", "code": "room_full"}
    assert a.nothing() and b.nothing()
    assert c.join("elsewhere")["peers"] == []


def test_connection_limits_refuse_at_handshake(daemon_factory):
    d = daemon_factory("--max-connections-per-ip", "2")
    keep = [connect(d.ws), connect(d.ws)]
    with pytest.raises(InvalidStatus) as refused:
        connect(d.ws)
    assert refused.value.response.status_code == 429
    keep[0].close()
    time.sleep(0.2)
    keep.append(connect(d.ws))  # a slot came free
    d2 = daemon_factory("--max-connections", "1")
    first = connect(d2.ws)
    with pytest.raises(InvalidStatus) as refused:
        connect(d2.ws)
    assert refused.value.response.status_code == 503
    assert first.join("r")["peers"] == []


def test_handshake_timeout_drops_slow_clients(daemon_factory):
    d = daemon_factory("--handshake-timeout", "1")
    s = socket.create_connection(("127.0.0.1", d.port))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # never finishes the request
    s.settimeout(10)
    started = time.monotonic()
    while s.recv(4096):  # until the server hangs up
        pass
    assert 0.5 < time.monotonic() - started < 8
    # an upgraded connection is not subject to the HTTP timeout
    p = connect(d.ws)
    p.join("r")
    time.sleep(2)
    assert p.request({"type": "join", "room_id": "r2"})["type"] == "peers"


def test_keepalive_drops_dead_peers(daemon_factory):
    d = daemon_factory("--ping-interval", "1", "--ping-timeout", "2", "--resume-grace", "0")
    a = connect(d.ws)  # the websockets library answers pings: it stays
    a.join("r")
    raw = RawPeer("127.0.0.1", d.port)  # this one never answers a ping
    raw.send_json({"type": "join", "room_id": "r"})
    raw_id = raw.recv_json()["peer_id"]
    assert a.recv() == {"type": "new_peer", "peer_id": raw_id}
    assert a.recv(timeout=10) == {"type": "peer_left", "peer_id": raw_id}
    time.sleep(3)
    assert a.request({"type": "join", "room_id": "r"})["type"] == "peers"


def test_client_address_from_a_trusted_proxy_only(daemon_factory):
    spoof = {"X-Forwarded-For": "203.0.113.9"}
    plain = daemon_factory("--max-connections-per-ip", "1")
    first = connect(plain.ws, additional_headers=spoof)
    with pytest.raises(InvalidStatus):  # the header is not believed: both count as 127.0.0.1
        connect(plain.ws, additional_headers={"X-Forwarded-For": "198.51.100.7"})
    first.close()
    assert "203.0.113.9" not in plain.log()

    proxied = daemon_factory("--trusted-proxies", "127.0.0.1", "--max-connections-per-ip", "1")
    a = connect(proxied.ws, additional_headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9"})
    b = connect(proxied.ws, additional_headers={"X-Forwarded-For": "203.0.113.10"})  # another client
    with pytest.raises(InvalidStatus):
        connect(proxied.ws, additional_headers={"X-Forwarded-For": "203.0.113.10"})  # per-address limit
    a.join("r")
    time.sleep(0.2)
    assert "address=203.0.113.9" in proxied.log()  # the proxy's last hop, not what the client claimed first
    b.close()
