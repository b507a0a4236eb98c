"""Hostile clients against the real daemon (issue 12): the held-peer overflow that
crashed a join, resume-token theft, session-store exhaustion, guessing, log
injection, anonymous TURN."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

from conftest import http, http_json
from test_redis import wait_ready
from wsclient import RawPeer, auth_message, connect

KEY = "hostile-test-key-0123456789"


def wait_held(d, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status, body = http_json("GET", d.admin + "/health")
        if body.get("held_peers") == count:
            return
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


# --- 5. a join that overflows a held peer


def test_join_after_a_held_peer_fills_its_buffer(daemon_factory):
    d = daemon_factory("--resume-grace", "30", "--resume-max-messages", "8")
    a, f = connect(d.ws), connect(d.ws)
    a_id = a.join("r")["peer_id"]
    f_id = f.join("r")["peer_id"]
    assert a.recv()["peer_id"] == f_id
    h = RawPeer("127.0.0.1", d.port)
    h.send_json({"type": "join", "room_id": "r"})
    h_id = h.recv_json()["peer_id"]
    assert a.recv()["peer_id"] == h_id and f.recv()["peer_id"] == h_id
    h.drop()  # H's TCP connection drops: its place is held
    wait_held(d, 1)
    for i in range(8):  # exactly resume_max_messages
        f.send({"type": "ice", "to": h_id, "candidate": f"c{i}", "sdp_mid": "0", "sdp_mline_index": 0})
    assert f.nothing(0.3)  # all relayed (into H's hold)
    v = connect(d.ws)
    joined = v.request({"type": "join", "room_id": "r"})
    assert joined["type"] == "peers", joined  # was: closed with 1011
    assert sorted(p["id"] for p in joined["peers"]) == sorted([a_id, f_id])
    v_id = joined["peer_id"]
    for p in (a, f):
        assert p.recv() == {"type": "new_peer", "peer_id": v_id}
        assert p.recv() == {"type": "peer_left", "peer_id": h_id}  # the held peer, evicted
    assert v.nothing(0.5) and a.nothing(0.1) and f.nothing(0.1)
    v.send({"type": "offer", "to": a_id, "sdp": "hello"})  # V is a real member
    assert a.recv() == {"type": "offer", "from": v_id, "to": a_id, "sdp": "hello"}
    v.close()
    assert a.recv() == {"type": "peer_left", "peer_id": v_id}  # no ghost left behind


# --- 7. resume tokens


def authed(d, device: str):
    p = connect(d.ws)
    assert p.request(auth_message(KEY, device))["type"] == "auth_success"
    return p


def test_resume_token_is_bound_single_use_and_rotated(daemon_factory):
    d = daemon_factory("--resume-grace", "30", env={"SSCONTROL_API_KEY": KEY})
    host = authed(d, "host-device")
    host_id = host.join("r")["peer_id"]
    viewer = authed(d, "viewer-device")
    joined = viewer.join("r")
    viewer_id, token = joined["peer_id"], joined["resume_token"]
    assert host.recv()["peer_id"] == viewer_id
    # another authenticated device that got hold of the token cannot take the peer
    thief = authed(d, "thief-device")
    assert thief.request({"type": "resume", "resume_token": token})["code"] == "resume_failed"
    viewer.send({"type": "offer", "to": host_id, "sdp": "still here"})  # the live peer is undisturbed
    assert host.recv()["sdp"] == "still here"
    assert viewer.nothing(0.3)
    # the device itself comes back on a new connection: the answer carries a new token
    again = authed(d, "viewer-device")
    resumed = again.request({"type": "resume", "resume_token": token})
    assert resumed["type"] == "resumed" and resumed["peer_id"] == viewer_id
    fresh = resumed["resume_token"]
    assert fresh and fresh != token
    assert viewer.closed_with() == 4000
    # the spent token is refused, even to the same device
    late = authed(d, "viewer-device")
    assert late.request({"type": "resume", "resume_token": token})["code"] == "resume_failed"
    # a clean leave voids the current one
    again.close()
    assert host.recv() == {"type": "peer_left", "peer_id": viewer_id}
    last = authed(d, "viewer-device")
    assert last.request({"type": "resume", "resume_token": fresh})["code"] == "resume_failed"


def test_resume_token_rotation_across_nodes(daemon_factory, redis_server):
    redis = redis_server()
    env = {"SSCONTROL_REDIS_URL": redis.url, "SSCONTROL_API_KEY": KEY}
    n1, n2 = (daemon_factory("--resume-grace", "30", env=env) for _ in range(2))
    for d in (n1, n2):
        wait_ready(d, 200)
    host = authed(n1, "host-device")
    host_id = host.join("r")["peer_id"]
    viewer = authed(n1, "viewer-device")
    joined = viewer.join("r")
    viewer_id, token = joined["peer_id"], joined["resume_token"]
    assert host.recv()["peer_id"] == viewer_id
    thief = authed(n2, "thief-device")  # another device, another node: refused, peer untouched
    assert thief.request({"type": "resume", "resume_token": token}, timeout=10)["code"] == "resume_failed"
    viewer.send({"type": "offer", "to": host_id, "sdp": "still here"})
    assert host.recv()["sdp"] == "still here"
    moved = authed(n2, "viewer-device")
    resumed = moved.request({"type": "resume", "resume_token": token}, timeout=10)
    assert resumed["type"] == "resumed" and resumed["peer_id"] == viewer_id
    fresh = resumed["resume_token"]
    assert fresh != token
    assert viewer.closed_with() == 4000
    host.send({"type": "offer", "to": viewer_id, "sdp": "to n2"})
    assert moved.recv()["sdp"] == "to n2"
    for node in (n1, n2):  # the spent token is refused on every node
        late = authed(node, "viewer-device")
        assert late.request({"type": "resume", "resume_token": token}, timeout=10)["code"] == "resume_failed"
    assert moved.nothing(0.3)  # and those refusals did not disturb the peer
    back = authed(n1, "viewer-device")  # the new one works, from n2 back to n1
    resumed = back.request({"type": "resume", "resume_token": fresh}, timeout=10)
    assert resumed["type"] == "resumed" and resumed["resume_token"] not in (token, fresh)


# --- 9. log injection

EVIL = "dev\ninfo auth.accepted device_id=admin\r\x1b[31m\x00\x7f\x9b\u2028end"
RAW_CONTROLS = ("\r", "\x1b", "\x00", "\x7f", "\x9b", "\u2028")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_client_strings_are_escaped_in_the_log(daemon_factory, fmt):
    d = daemon_factory("--log-format", fmt, "--trusted-proxies", "127.0.0.1", env={"SSCONTROL_API_KEY": KEY})
    p = connect(d.ws)
    bad = auth_message("wrong-key", device_id=EVIL)
    assert p.request(bad)["code"] == "auth_failed"  # logged: auth.refused with the device id
    # an address a (trusted) proxy forwards, with control characters in it
    s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
              b"X-Forwarded-For: 10.0.0.1\x1b[2J\x7f\x9b\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 101")
    s.close()
    deadline = time.monotonic() + 5
    while "connection.close" not in d.log() or "auth.refused" not in d.log():
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    log = d.log()
    for c in RAW_CONTROLS:
        assert c not in log, (c, log)
    # text lines start with a timestamp (not under journald): what follows it is the line
    lines = [re.sub(r"^\d{4}-\d\d-\d\dT[\d:.]+[+-]\d{4} ", "", line) for line in log.splitlines()]
    assert not [line for line in lines if "device_id=admin" in line and not line.startswith(("warn", "{"))]
    if fmt == "json":
        records = [json.loads(line) for line in lines]  # every line is one whole record
        refused = [r for r in records if r["event"] == "auth.refused"]
        assert refused[0]["device_id"] == ("dev\ninfo auth.accepted device_id=admin\r\x1b[31m\x00"
                                           "\\x7f\\x9b\\u2028end")
        opened = [r for r in records if r["event"] == "connection.open" and r["address"].startswith("10.")]
        assert opened[0]["address"] == "10.0.0.1\x1b[2J\\x7f\\x9b"
    else:
        refused = [line for line in lines if line.startswith("warn auth.refused")]
        assert len(refused) == 1
        assert ('device_id="dev\\ninfo auth.accepted device_id=admin\\r\\x1b[31m\\x00\\x7f\\x9b\\u2028end"'
                in refused[0])
        assert 'address="10.0.0.1\\x1b[2J\\x7f\\x9b"' in log


# --- 10. TURN with auth off


TURN = {"SSCONTROL_TURN_SECRETS": "hostile-turn-secret-5hQ", "SSCONTROL_TURN_URIS": "turn:127.0.0.1:3478"}


def test_turn_secret_with_auth_off_is_refused_at_start_unless_meant(daemon_factory, tmp_path):
    refused = daemon_factory(env=TURN, wait=False)
    assert refused.proc.wait(20) != 0
    out = refused.log()
    assert ("invalid setting turn_secrets from environment variable SSCONTROL_TURN_SECRETS: TURN secrets with "
            "auth off") in out and "api_keys" in out and "turn_allow_anonymous" in out
    assert "hostile-turn-secret-5hQ" not in out
    secret_file = tmp_path / "turn_secrets"
    secret_file.write_text("hostile-turn-secret-5hQ\n")
    conf = tmp_path / "turn.conf"
    conf.write_text(f"[turn]\nturn_secret_file = {secret_file}\nturn_uris = turn:127.0.0.1:3478\n")
    from_file = daemon_factory("--config", str(conf), wait=False)
    assert from_file.proc.wait(20) != 0
    assert f"invalid setting turn_secret_file from {conf} [turn] turn_secret_file: TURN secrets" in from_file.log()
    meant = daemon_factory(env={**TURN, "SSCONTROL_TURN_ALLOW_ANONYMOUS": "true"})
    status, body = http_json("GET", meant.base + "/turn")
    assert status == 200 and body["username"].endswith(":sscontrol")


def test_turn_takes_the_api_key_in_a_header(daemon_factory):
    d = daemon_factory(env={**TURN, "SSCONTROL_API_KEY": KEY})
    for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
        status, _, data = http("GET", d.base + "/turn", headers=headers)
        assert status == 200 and json.loads(data)["password"], data
    status, _, data = http("GET", d.base + "/turn", headers={"X-API-Key": "wrong"})
    assert status == 401 and json.loads(data)["success"] is False


# --- 6. REST session store exhaustion


def create_session(d, sid: str, address: str):
    body = json.dumps({"session_id": sid, "offer": "v=0", "candidates": [], "ttl": 60}).encode()
    status, headers, data = http("POST", d.base + "/api/session", body,
                                 {"content-type": "application/json", "x-forwarded-for": address})
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(data)


def test_sessions_per_address_quota(daemon_factory):
    d = daemon_factory("--trusted-proxies", "127.0.0.1")
    for i in range(20):  # the default quota
        assert create_session(d, f"greedy-{i}", "198.51.100.7")[0] == 201
    status, headers, body = create_session(d, "greedy-20", "198.51.100.7")
    assert status == 429 and body == {"success": False,
                                      "error": "too many live sessions from your address (at most 20)",
                                      "code": "too_many_sessions"}
    assert 1 <= int(headers["retry-after"]) <= 61  # until its first session expires (ttl 60, rounded up)
    assert create_session(d, "bystander", "203.0.113.9")[0] == 201  # everyone else is served
    assert http("DELETE", d.base + "/api/session/greedy-0", headers={"x-forwarded-for": "198.51.100.7"})[0] == 200
    assert create_session(d, "greedy-again", "198.51.100.7")[0] == 201  # a freed place is usable again
    assert d.log().count("limit.sessions_per_address") == 1  # logged once, not per refusal


def test_sessions_per_address_quota_across_nodes(daemon_factory, redis_server):
    redis = redis_server()
    n1, n2 = (daemon_factory("--session-max-per-address", "3", "--trusted-proxies", "127.0.0.1",
                             env={"SSCONTROL_REDIS_URL": redis.url}) for _ in range(2))
    for d in (n1, n2):
        wait_ready(d, 200)
    assert create_session(n1, "a1", "198.51.100.7")[0] == 201
    assert create_session(n2, "a2", "198.51.100.7")[0] == 201
    assert create_session(n1, "a3", "198.51.100.7")[0] == 201
    for node in (n1, n2):
        status, headers, body = create_session(node, "a4", "198.51.100.7")
        assert status == 429 and body["success"] is False and int(headers["retry-after"]) >= 1
    assert create_session(n2, "b1", "203.0.113.9")[0] == 201
    assert http("DELETE", n2.base + "/api/session/a1")[0] == 200  # deleted on the other node
    assert create_session(n2, "a4", "198.51.100.7")[0] == 201


# --- 8. guessing: throttled per address, failure lines within a budget


def test_failed_auth_is_throttled_per_address(daemon_factory):
    d = daemon_factory("--auth-failure-limit", "3", "--auth-failure-window", "60",
                       "--auth-failure-log-per-minute", "2", "--trusted-proxies", "127.0.0.1",
                       env={**TURN, "SSCONTROL_API_KEY": KEY})
    guesser = connect(d.ws, additional_headers={"X-Forwarded-For": "198.51.100.66"})
    for _ in range(3):
        assert guesser.request(auth_message("guess", device_id="g"))["code"] == "auth_failed"
    # from now on the address is refused, even with the right key, before any check
    again = connect(d.ws, additional_headers={"X-Forwarded-For": "198.51.100.66"})
    again.send(auth_message(KEY))
    assert again.closed_with() == 1008
    status, headers, data = http("GET", d.base + "/turn", headers={"X-API-Key": KEY,
                                                                    "X-Forwarded-For": "198.51.100.66"})
    assert status == 429 and json.loads(data)["success"] is False and int(headers["Retry-After"]) >= 1
    # another address is served as usual
    bystander = connect(d.ws, additional_headers={"X-Forwarded-For": "203.0.113.5"})
    assert bystander.request(auth_message(KEY))["type"] == "auth_success"
    assert http("GET", d.base + "/turn", headers={"X-API-Key": KEY, "X-Forwarded-For": "203.0.113.5"})[0] == 200
    # /turn failures count for the same address as WebSocket ones
    for _ in range(3):
        assert http("GET", d.base + "/turn", headers={"X-API-Key": "nope", "X-Forwarded-For": "192.0.2.9"})[0] == 401
    assert http("GET", d.base + "/turn", headers={"X-API-Key": KEY, "X-Forwarded-For": "192.0.2.9"})[0] == 429
    log = d.log()  # 6 failures and 3 throttled attempts: 2 lines in the minute's budget
    assert log.count(" auth.refused ") + log.count(" auth.throttled ") == 2, log
