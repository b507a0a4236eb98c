"""The signaling protocol in memory, through the factory ``makeService`` builds.

Every client message type, every error code and close code docs/protocol.md lists that
one node can produce, the limits, and the hot path's border (protocol.py reads whole
single-frame text messages itself and hands everything else to Autobahn). The clock is
the reactor's: timers (auth timeout, auto-ping, resume grace, TURN refresh) fire when
the test advances it. tests/test_wire.py and tests/test_signaling.py prove the same
against the real process over sockets.
"""

from __future__ import annotations

import json

import pytest

from memory import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, frame


KEY = "k" * 32
SECRET = "turn-secret-" + "s" * 20


def ice(to: str, i: int, pad: int = 0) -> dict:
    return {"type": "ice", "to": to, "candidate": f"candidate:{i} 1 udp {'x' * pad}",
            "sdp_mid": "0", "sdp_mline_index": 0}


def ice_bytes(to: str, i: int, pad: int = 0) -> bytes:
    return json.dumps(ice(to, i, pad)).encode()


def candidates(messages: list[dict]) -> list[str]:
    return [m["candidate"].split()[0] for m in messages]


# --- message types


def test_join_answers_peers_with_own_id_and_token(mem):
    a = mem.connect()
    peers = a.join("r")
    assert peers["peers"] == [] and peers["peer_id"].startswith("peer_") and len(peers["resume_token"]) == 32


@pytest.mark.parametrize("kind", ["offer", "answer"])
def test_offer_and_answer_are_relayed_with_from_set_by_the_server(mem, kind):
    a, b, a_id, b_id = mem.pair()
    b.send({"type": kind, "from": "forged", "to": a_id, "sdp": "v=0", "extra": "dropped"})
    assert a.recv() == {"type": kind, "from": b_id, "to": a_id, "sdp": "v=0"}
    assert b.received() == []


def test_ice_is_relayed_with_its_fields_only(mem):
    a, b, a_id, b_id = mem.pair()
    b.send({**ice(a_id, 7), "from": "x", "usernameFragment": "dropped"})
    assert a.recv() == {**ice(a_id, 7), "from": b_id}
    b.send({"type": "ice", "to": a_id, "candidate": "", "sdp_mid": "", "sdp_mline_index": 65535})
    assert a.recv()["candidate"] == ""  # the end-of-candidates mark


def test_join_of_another_room_moves_the_peer(mem):
    a, b, a_id, b_id = mem.pair("one")
    c = mem.connect()
    c_id = c.join("two")["peer_id"]
    moved = b.join("two")
    assert moved["peers"] == [{"id": c_id}] and moved["peer_id"] == b_id
    assert a.recv() == {"type": "peer_left", "peer_id": b_id}
    assert c.recv() == {"type": "new_peer", "peer_id": b_id}
    again = b.join("two")  # the same room: nothing changes, nobody is told
    assert again["peers"] == [{"id": c_id}]
    assert c.received() == []


def test_auth_with_auth_off_is_checked_for_shape_and_answered(mem):
    a = mem.connect()
    a.send(mem.auth("whatever"))
    assert a.recv() == {"type": "auth_success", "message": "authentication is disabled on this server"}
    a.send({"type": "auth", "device_id": "d"})
    assert a.error()["code"] == "bad_message"


def test_auth_on_accepts_a_good_token_and_gates_everything_else(memory_daemon):
    d = memory_daemon(env={"SSCONTROL_API_KEY": KEY})
    a = d.connect()
    a.send({"type": "join", "room_id": "r"})
    assert a.error()["code"] == "auth_required"
    a.send({"type": "nonsense"})
    assert a.error()["code"] == "unknown_type"  # still unknown_type before auth
    message = d.auth(KEY, "host-1", api_key="")
    a.send(message)
    assert a.recv() == {"type": "auth_success", "message": "authenticated"}
    a.join("r")
    b = d.connect()
    b.send(message)  # the same nonce again
    error = b.error()
    assert error["code"] == "auth_failed" and "nonce already used" in error["message"]


@pytest.mark.parametrize("change, text", [
    (lambda d: d.auth("wrong-key"), "invalid token"),
    (lambda d: d.auth(KEY, age=301), "too old"),
    (lambda d: d.auth(KEY, age=-31), "in the future"),
])
def test_every_refused_auth_says_why(memory_daemon, change, text):
    d = memory_daemon(env={"SSCONTROL_API_KEY": KEY})
    a = d.connect()
    a.send(change(d))
    error = a.error()
    assert error["code"] == "auth_failed" and text in error["message"]
    assert a.connected


def test_device_allowlist_refuses_other_devices(memory_daemon):
    d = memory_daemon("--device-allowlist", "host-1", env={"SSCONTROL_API_KEY": KEY})
    a = d.connect()
    a.send(d.auth(KEY, "intruder"))
    assert "device not allowed" in a.error()["message"]
    a.send(d.auth(KEY, "host-1"))
    assert a.recv()["type"] == "auth_success"


def test_turn_answers_credentials_and_pushes_a_refresh(memory_daemon):
    d = memory_daemon("--turn-uris", "turn:127.0.0.1:3478", "--turn-ttl", "100", "--turn-allow-anonymous", "true",
                      "--ping-interval", "0",  # this client never answers pings
                      env={"SSCONTROL_TURN_SECRETS": SECRET})
    a = d.connect()
    a.send({"type": "turn", "username": "alice"})
    creds = a.recv()
    assert creds["type"] == "turn_credentials" and creds["username"].endswith(":alice")
    assert creds["ttl"] == 100 and creds["uris"] == ["turn:127.0.0.1:3478"]
    assert creds["iceServers"][0]["credential"] == creds["password"]
    d.advance(74)
    assert a.received() == []  # not before 75 % of the lifetime
    d.advance(12)
    push = a.recv()
    assert push["type"] == "turn_credentials" and push["refresh"] is True


def test_turn_without_a_secret_is_turn_unavailable(mem):
    a = mem.connect()
    a.send({"type": "turn"})
    assert a.error()["code"] == "turn_unavailable"


def test_turn_with_an_invalid_username_is_a_bad_message(memory_daemon):
    d = memory_daemon("--turn-uris", "turn:127.0.0.1:3478", "--turn-allow-anonymous", "true",
                      env={"SSCONTROL_TURN_SECRETS": SECRET})
    a = d.connect()
    a.send({"type": "turn", "username": "a:b"})
    assert a.error()["code"] == "bad_message"


# --- resume


def test_a_dropped_peer_resumes_with_its_held_messages(mem):
    a, b, a_id, b_id = mem.pair()
    token = b.join("room")["resume_token"]  # same room: the answer repeats the token
    b.transport.loseConnection()  # TCP gone, no close frame
    a.send({"type": "offer", "to": b_id, "sdp": "held"})
    assert a.received() == []  # the room hears nothing
    c = mem.connect()
    c.send({"type": "resume", "resume_token": token})
    resumed, held = c.received()
    assert resumed["type"] == "resumed" and resumed["peer_id"] == b_id and resumed["room_id"] == "room"
    assert resumed["resume_token"] != token
    assert held == {"type": "offer", "from": a_id, "to": b_id, "sdp": "held"}
    c.send({"type": "resume", "resume_token": resumed["resume_token"]})
    assert c.error()["code"] == "already_joined"
    d = mem.connect()
    d.send({"type": "resume", "resume_token": token})  # spent
    assert d.error()["code"] == "resume_failed"


def test_a_held_peer_leaves_when_its_grace_ends(mem):
    a, b, a_id, b_id = mem.pair()
    b.transport.loseConnection()
    mem.advance(mem.settings.resume_grace - 0.5)
    assert a.received() == []
    mem.advance(1)
    assert a.recv() == {"type": "peer_left", "peer_id": b_id}


def test_resume_while_the_old_connection_looks_open_closes_it_with_4000(mem):
    a, b, a_id, b_id = mem.pair()
    token = b.join("room")["resume_token"]
    c = mem.connect()
    c.send({"type": "resume", "resume_token": token})
    assert c.recv()["type"] == "resumed"
    assert b.close_code() == 4000


# --- errors


@pytest.mark.parametrize("payload, text", [
    (b"not json", "invalid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"room_id": "r"}', "type"),
    (b'{"type": 5}', "type"),
    (b'{"type": "join"}', "room_id"),
    (b'{"type": "join", "room_id": ""}', "room_id"),
    (b'{"type": "join", "room_id": 5}', "room_id"),
    (b'{"type": "ice", "to": "p", "candidate": "", "sdp_mid": null, "sdp_mline_index": 0}', "sdp_mid"),
    (b'{"type": "ice", "to": "p", "candidate": "", "sdp_mid": "0", "sdp_mline_index": 65536}', "between 0 and 65535"),
    (b'{"type": "ice", "to": "p", "candidate": "", "sdp_mid": "0", "sdp_mline_index": 1.0}', "sdp_mline_index"),
    (b'{"type": "ice", "to": "p", "candidate": "", "sdp_mid": "0", "sdp_mline_index": true}', "sdp_mline_index"),
    (b'{"type": "auth", "device_id": "d", "timestamp": 1, "nonce": "n", "token": "t", "api_key": 5}', "api_key"),
])
def test_bad_messages_are_answered_bad_message_and_the_connection_stays(mem, payload, text):
    a = mem.connect()
    a.send_frame(TEXT, payload)
    error = a.error()
    assert error["code"] == "bad_message" and text in error["message"], error
    a.join("still-usable")


def test_binary_frame_is_a_bad_message(mem):
    a = mem.connect()
    a.send_frame(BINARY, b"\x00\x01")
    error = a.error()
    assert error["code"] == "bad_message" and "binary" in error["message"]


def test_unknown_type_is_named_cut_at_32_characters(mem):
    a = mem.connect()
    a.send({"type": "x" * 100})
    error = a.error()
    assert error["code"] == "unknown_type" and "x" * 32 in error["message"] and "x" * 33 not in error["message"]


@pytest.mark.parametrize("message", [
    lambda to: {"type": "join", "room_id": "r" * 129},
    lambda to: {"type": "offer", "to": to, "sdp": "s" * 60001},
    lambda to: {**ice(to, 0), "candidate": "c" * 2049},
    lambda to: {**ice(to, 0), "sdp_mid": "m" * 129},
    lambda to: {"type": "resume", "resume_token": "t" * 129},
])
def test_fields_over_their_limits_are_too_long(mem, message):
    a, b, a_id, b_id = mem.pair()
    a.send(message(b_id))
    assert a.error()["code"] == "too_long"
    assert b.received() == []


def test_relay_errors(mem):
    a = mem.connect()
    a.send({"type": "offer", "to": "peer_x", "sdp": "v=0"})
    assert a.error()["code"] == "not_in_room"
    a_id = a.join("r")["peer_id"]
    a.send({"type": "offer", "to": "peer_nobody", "sdp": "v=0"})
    assert a.error()["code"] == "unknown_peer"
    a.send({"type": "answer", "to": a_id, "sdp": "v=0"})
    assert a.error()["code"] == "self_relay"
    other = mem.connect()
    other_id = other.join("elsewhere")["peer_id"]
    a.send(ice(other_id, 0))  # relay only within one room
    assert a.error()["code"] == "unknown_peer"
    assert other.received() == []


def test_room_full_at_max_peers_per_room(memory_daemon):
    d = memory_daemon("--max-peers-per-room", "2")
    a, b, a_id, b_id = d.pair()
    c = d.connect()
    c.send({"type": "join", "room_id": "room"})
    assert c.error()["code"] == "room_full"
    assert a.received() == [] and b.received() == []
    b.close()
    assert a.recv() == {"type": "peer_left", "peer_id": b_id}
    assert c.join("room")["peers"] == [{"id": a_id}]


# --- close codes


def test_rate_limit_errors_then_closes_1008_while_a_neighbour_loses_nothing(memory_daemon):
    d = memory_daemon("--rate-limit-burst", "5", "--rate-limit-strikes", "3")
    a, b, a_id, b_id = d.pair()
    c = d.connect()
    c.join("room")  # took one token: 4 left
    assert a.recv()["type"] == "new_peer" and b.recv()["type"] == "new_peer"
    c.send_raw(b"".join(frame(TEXT, ice_bytes(a_id, i)) for i in range(4)))
    c.send(ice(a_id, 4))
    assert c.error()["code"] == "rate_limited"
    c.send(ice(a_id, 5))
    assert c.error()["code"] == "rate_limited"
    c.send(ice(a_id, 6))
    assert c.close_code() == 1008 and c.closed_with[1] == "message rate limit exceeded"
    assert candidates(a.received()) == [f"candidate:{i}" for i in range(4)]
    b.send(ice(a_id, 99))  # the well-behaved neighbour is untouched
    assert candidates(a.received()) == ["candidate:99"]


def test_rate_refills_with_time(memory_daemon):
    d = memory_daemon("--rate-limit-burst", "2", "--rate-limit-per-second", "10")
    a = d.connect()
    a.join("r")
    a.join("r")
    a.send({"type": "join", "room_id": "r"})
    assert a.error()["code"] == "rate_limited"
    d.advance(0.2)
    a.join("r")


def test_auth_timeout_closes_1008_on_the_clock(memory_daemon):
    d = memory_daemon("--auth-timeout", "3", env={"SSCONTROL_API_KEY": KEY})
    slow, good = d.connect(), d.connect()
    good.send(d.auth(KEY))
    assert good.recv()["type"] == "auth_success"
    d.advance(2.9)
    assert slow.close_code() is None
    d.advance(0.2)
    assert slow.close_code() == 1008 and slow.closed_with[1] == "authentication timeout"
    assert good.close_code() is None


def test_fifth_failed_auth_closes_1008(memory_daemon):
    d = memory_daemon(env={"SSCONTROL_API_KEY": KEY})
    a = d.connect()
    for _ in range(4):
        a.send(d.auth("bad"))
        assert a.error()["code"] == "auth_failed"
    a.send(d.auth("bad"))
    messages = a.received()
    assert messages[0]["code"] == "auth_failed"
    assert a.closed_with == (1008, "too many failed authentication attempts")


def test_failures_from_one_address_close_its_next_auth(memory_daemon):
    d = memory_daemon("--auth-failure-limit", "3", env={"SSCONTROL_API_KEY": KEY})
    for _ in range(3):
        a = d.connect(host="10.0.0.1")
        a.send(d.auth("bad"))
        assert a.error()["code"] == "auth_failed"
    late = d.connect(host="10.0.0.1")
    late.send(d.auth(KEY))  # even a good one is not checked
    assert late.close_code() == 1008
    assert late.closed_with[1] == "too many failed authentication attempts from your address"
    other = d.connect(host="10.0.0.2")
    other.send(d.auth(KEY))
    assert other.recv()["type"] == "auth_success"


def test_invalid_utf8_closes_1007(mem):
    a = mem.connect()
    a.send_frame(TEXT, b'{"type": "join", "room_id": "\xff"}')
    assert a.close_code() == 1007 and a.closed_with[1] == "invalid UTF-8 in a text message"


def test_a_bug_while_handling_a_message_closes_1011(mem, monkeypatch):
    from sscontrold.domain import client

    def broken(self, message):
        raise RuntimeError("bug")

    monkeypatch.setitem(client._HANDLERS, "join", broken)  # the dispatch table the client reads
    a, b = mem.connect(), mem.connect()
    a.send({"type": "join", "room_id": "r"})
    assert a.close_code() == 1011 and a.closed_with[1] == "internal error"
    monkeypatch.undo()
    b.join("r")  # the other connections go on


def test_drain_closes_1012_with_a_reconnect_hint_and_holds_the_peer(mem):
    a, b, a_id, b_id = mem.pair()
    stopped = mem.stop()
    for conn in (a, b):
        code, reason = conn.close_code(), conn.closed_with[1]
        assert code == 1012 and reason.startswith("server restarting; reconnect_in_ms=")
        # 2 connections at the default 2000 a second: back within a millisecond
        assert 0 <= int(reason.rsplit("=", 1)[1]) <= 1
    assert mem.node.draining
    late = mem.site.buildProtocol(None)
    assert late is not None  # refused at the handshake (503 draining), see test_handshake_memory
    for conn in (a, b):
        conn.send_frame(CLOSE, (1012).to_bytes(2, "big"))  # the clients answer the close
    done = []
    stopped.addBoth(done.append)
    mem.advance(1)
    assert len(done) == 1 and all(ok for ok, _ in done[0])  # drained before the deadline


def _drain_hints(daemon, clients: int) -> list[int]:
    conns = [daemon.connect() for _ in range(clients)]
    daemon.stop()
    hints = []
    for conn in conns:
        code, reason = conn.close_code(), conn.closed_with[1]
        assert code == 1012, (code, reason)
        hints.append(int(reason.rsplit("reconnect_in_ms=", 1)[1]))
    return hints


def test_drain_spreads_reconnects_to_the_configured_rate(memory_daemon):
    # 20 connections at 10 a second: hints over 0-2 s, not all alike
    hints = _drain_hints(memory_daemon("--drain-reconnect-rate", "10"), 20)
    assert all(0 <= h <= 2000 for h in hints) and len(set(hints)) > 1, hints
    # 0: every client may come back at once
    assert _drain_hints(memory_daemon("--drain-reconnect-rate", "0"), 5) == [0] * 5


def test_drain_reconnect_spread_is_bounded():
    from sscontrold.lifecycle import MAX_RECONNECT_SPREAD, reconnect_spread

    assert reconnect_spread(10_000, 2000) == 5.0
    assert reconnect_spread(10_000_000, 1) == MAX_RECONNECT_SPREAD
    assert reconnect_spread(10, 0) == 0.0


def test_draining_refuses_new_upgrades_503(mem):
    from memory import Connection

    mem.stop()
    status, _, _ = Connection(mem.site, 41000).handshake()
    assert status.startswith("HTTP/1.1 503 ") and "draining" in status


def test_close_code_1002_for_protocol_violations(mem):
    a = mem.connect()
    a.send_raw(frame(TEXT, b'{"type": "x"}', masked=False))
    assert a.close_code() == 1002


def test_a_client_close_ends_the_peer_at_once(mem):
    a, b, a_id, b_id = mem.pair()
    b.close(1000)
    assert b.close_code() == 1000  # the server answers the close
    assert not b.connected
    assert a.recv() == {"type": "peer_left", "peer_id": b_id}


def test_a_client_not_answering_the_close_is_dropped_after_5_seconds(mem):
    a = mem.connect()
    a.send_frame(TEXT, b"\xff")
    assert a.close_code() == 1007 and a.connected
    mem.advance(5.5)
    assert not a.connected


# --- handshake limits


def test_connections_per_address_429_and_total_503(memory_daemon):
    from memory import Connection

    d = memory_daemon("--max-connections-per-ip", "2", "--max-connections", "3")
    d.connect(host="10.0.0.1"), d.connect(host="10.0.0.1")
    status, _, _ = Connection(d.site, 41001, "10.0.0.1").handshake()
    assert status.startswith("HTTP/1.1 429 ")
    d.connect(host="10.0.0.2")
    status, _, _ = Connection(d.site, 41002, "10.0.0.3").handshake()
    assert status.startswith("HTTP/1.1 503 ")


def test_an_unfinished_handshake_is_closed_at_handshake_timeout(memory_daemon):
    from memory import Connection

    d = memory_daemon("--handshake-timeout", "2")
    conn = Connection(d.site, 41003)
    conn.channel.dataReceived(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
    d.advance(1.5)
    assert conn.connected
    d.advance(1)
    assert not conn.connected


# --- liveness: Autobahn's auto-ping on the memory clock


def test_the_server_pings_and_drops_a_peer_that_does_not_pong(memory_daemon):
    d = memory_daemon("--ping-interval", "5", "--ping-timeout", "3", "--resume-grace", "5")
    a, b, a_id, b_id = d.pair()
    d.advance(6)  # Autobahn's timers fire in 0.2 s buckets
    pings = [(op, p) for op, p in a.frames() if op == PING]
    assert len(pings) == 1
    a.send_frame(PONG, pings[0][1])  # a answers
    [(_, ping)] = [(op, p) for op, p in b.frames() if op == PING]  # b never does
    d.advance(4)
    assert not b.connected and b.closed_with is None  # dropped, no close frame
    assert a.connected
    assert a.received() == []  # b is held for a resume...
    got = []
    for _ in range(6):
        d.advance(1)
        for op, payload in a.frames():
            if op == PING:
                a.send_frame(PONG, payload)
            elif op == TEXT:
                got.append(json.loads(payload))
    assert got == [{"type": "peer_left", "peer_id": b_id}]  # ...until resume_grace ends
    assert a.connected


def test_messages_do_not_keep_a_peer_alive_only_pongs_do(memory_daemon):
    d = memory_daemon("--ping-interval", "5", "--ping-timeout", "3")
    a, b, a_id, b_id = d.pair()
    d.advance(6)
    assert any(op == PING for op, _ in a.frames())
    for _ in range(4):
        a.send(ice(b_id, 0))
        d.advance(1)
    assert not a.connected


# --- the hot path's border (tests/test_wire.py against the process)


def test_many_messages_in_one_write_arrive_in_order(mem):
    a, b, a_id, b_id = mem.pair()
    a.send_raw(b"".join(frame(TEXT, ice_bytes(b_id, i)) for i in range(150)))
    got = b.received()
    assert candidates(got) == [f"candidate:{i}" for i in range(150)]
    assert {m["from"] for m in got} == {a_id}


def test_one_write_per_recipient_per_read(mem):
    a, b, a_id, b_id = mem.pair()
    writes = []
    original = b.transport.write
    b.transport.write = lambda data: (writes.append(data), original(data))
    a.send_raw(b"".join(frame(TEXT, ice_bytes(b_id, i)) for i in range(20)))
    assert len(writes) == 1 and len(b.received()) == 20


@pytest.mark.parametrize("cuts", [(1,), (3,), (7,), (1, 3, 7, 900)])
def test_a_message_cut_inside_header_mask_or_payload(mem, cuts):
    a, b, a_id, b_id = mem.pair()
    sdp = "v=0\r\n" + "a=x\r\n" * 600  # a 16-bit length
    data = frame(TEXT, json.dumps({"type": "offer", "to": b_id, "sdp": sdp}).encode())
    for cut in cuts:
        a.send_raw(data[:cut])
        data = data[cut:]
        assert b.received() == []
    a.send_raw(data)
    assert b.recv() == {"type": "offer", "from": a_id, "to": b_id, "sdp": sdp}


@pytest.mark.parametrize("cut", range(1, 14))
def test_a_complete_and_a_partial_frame_in_one_write(mem, cut):
    a, b, a_id, b_id = mem.pair()
    first, second, third = (frame(TEXT, ice_bytes(b_id, i)) for i in range(3))
    a.send_raw(first + second[:cut])
    assert candidates(b.received()) == ["candidate:0"]
    a.send_raw(second[cut:] + third)
    assert candidates(b.received()) == ["candidate:1", "candidate:2"]


def test_fragments_and_a_ping_between_single_frames(mem):
    a, b, a_id, b_id = mem.pair()
    message = ice_bytes(b_id, 1, pad=400)
    a.send_raw(frame(TEXT, ice_bytes(b_id, 0)) + frame(TEXT, message[:100], fin=False)
               + frame(CONTINUATION, message[100:250], fin=False) + frame(PING, b"mid")
               + frame(CONTINUATION, message[250:]) + frame(TEXT, ice_bytes(b_id, 2)))
    got = b.received()
    assert candidates(got) == ["candidate:0", "candidate:1", "candidate:2"]
    assert got[1]["candidate"] == json.loads(message)["candidate"]
    assert (PONG, b"mid") in a.frames()


def test_ping_between_messages_gets_its_pong(mem):
    a, b, a_id, b_id = mem.pair()
    a.send_raw(frame(TEXT, ice_bytes(b_id, 0)) + frame(PING, b"hello") + frame(TEXT, ice_bytes(b_id, 1)))
    assert a.frames() == [(PONG, b"hello")]
    assert candidates(b.received()) == ["candidate:0", "candidate:1"]


def test_a_64_bit_length_goes_to_autobahn_and_is_relayed(memory_daemon):
    d = memory_daemon("--max-message-bytes", "200000", "--max-frame-bytes", "200000")
    a, b, a_id, b_id = d.pair()
    sdp = "y" * 70000
    a.send_raw(frame(TEXT, json.dumps({"type": "offer", "to": b_id, "sdp": sdp}).encode()))
    # over the hot path's 16-bit lengths: Autobahn reads it; over max_sdp_bytes: too_long
    assert a.error()["code"] == "too_long"
    assert b.received() == []
    a.send_raw(frame(TEXT, json.dumps({"type": "offer", "to": b_id, "sdp": "z" * 100, "pad": sdp}).encode()))
    assert b.recv() == {"type": "offer", "from": a_id, "to": b_id, "sdp": "z" * 100}


def test_binary_frame_between_messages_gets_an_error(mem):
    a, b, a_id, b_id = mem.pair()
    a.send_raw(frame(TEXT, ice_bytes(b_id, 0)) + frame(BINARY, b"\x00\x01") + frame(TEXT, ice_bytes(b_id, 1)))
    assert "binary" in a.error()["message"]
    assert candidates(b.received()) == ["candidate:0", "candidate:1"]


VIOLATIONS = {
    "unmasked": frame(TEXT, b'{"type": "x"}', masked=False),
    "non_minimal_length": frame(TEXT, b'{"type": "x"}', long_length=True),
    "rsv_bit": frame(TEXT, b'{"type": "x"}', rsv=4),
    "reserved_opcode": frame(0x3, b"{}"),
    "stray_continuation": frame(CONTINUATION, b"{}"),
    "fragmented_ping": frame(PING, b"p", fin=False),
}


@pytest.mark.parametrize("violation", sorted(VIOLATIONS))
def test_protocol_violation_after_a_message_closes_1002(mem, violation):
    a, b, a_id, b_id = mem.pair()
    a.send_raw(frame(TEXT, ice_bytes(b_id, 0)) + VIOLATIONS[violation] + frame(TEXT, ice_bytes(b_id, 1)))
    assert a.close_code() == 1002
    assert candidates(b.received()) == ["candidate:0"]  # what came before arrives, nothing after
    a.send_frame(CLOSE, (1002).to_bytes(2, "big"))
    assert b.recv() == {"type": "peer_left", "peer_id": a_id}


@pytest.mark.parametrize("bad", [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80"])
def test_invalid_utf8_after_a_message_closes_1007(mem, bad):
    a, b, a_id, b_id = mem.pair()
    a.send_raw(frame(TEXT, ice_bytes(b_id, 0)) + frame(TEXT, b'{"type": "ice", "candidate": "' + bad + b'"}')
               + frame(TEXT, ice_bytes(b_id, 1)))
    assert a.close_code() == 1007
    assert candidates(b.received()) == ["candidate:0"]
    mem.advance(6)  # the client never answers the close: dropped after 5 s, not held
    assert b.recv() == {"type": "peer_left", "peer_id": a_id}


def test_invalid_utf8_in_a_fragmented_message_closes_1007(mem):
    a = mem.connect()
    a.send_raw(frame(TEXT, b'{"type": "join", "room_id": "', fin=False) + frame(CONTINUATION, b'\xff"}'))
    assert a.close_code() == 1007


def test_valid_utf8_of_every_width_is_relayed_intact(mem):
    a, b, a_id, b_id = mem.pair()
    text = "é ü ß — 中文 ☃ 𝄞 🎉"
    a.send_raw(frame(TEXT, json.dumps({"type": "offer", "to": b_id, "sdp": text}, ensure_ascii=False).encode()))
    assert b.recv()["sdp"] == text


@pytest.mark.parametrize("fragmented", [False, True])
def test_size_limit_holds_at_the_byte_1009(memory_daemon, fragmented):
    d = memory_daemon("--max-message-bytes", "1024", "--max-frame-bytes", "1024", "--max-sdp-bytes", "1024")
    a, b, a_id, b_id = d.pair()

    def offer(size: int) -> bytes:
        body = {"type": "offer", "to": b_id, "sdp": ""}
        body["sdp"] = "x" * (size - len(json.dumps(body)))
        data = json.dumps(body).encode()
        assert len(data) == size
        return data

    def send(data: bytes) -> None:
        if fragmented:  # the message limit counts the whole message
            a.send_raw(frame(TEXT, data[:600], fin=False) + frame(CONTINUATION, data[600:]))
        else:
            a.send_raw(frame(TEXT, data))

    send(offer(1024))
    assert len(b.recv()["sdp"]) > 900
    send(offer(1025))
    assert a.close_code() == 1009
    assert "exceeds payload limit of 1024 octets" in a.closed_with[1]
    d.advance(6)
    assert b.recv() == {"type": "peer_left", "peer_id": a_id}


def test_reload_sizes_apply_to_new_connections_only(memory_daemon, tmp_path):
    conf = tmp_path / "signaling.conf"
    conf.write_text("[limits]\nmax_message_bytes = 65536\nmax_frame_bytes = 65536\n")
    d = memory_daemon("--config", str(conf))
    old, b, old_id, b_id = d.pair()
    conf.write_text("[limits]\nmax_message_bytes = 1024\nmax_frame_bytes = 1024\nmax_sdp_bytes = 1000\n")
    d.top.reloader.reload()
    padded = json.dumps({"type": "offer", "to": b_id, "sdp": "x" * 900, "pad": "p" * 400}).encode()
    old.send_raw(frame(TEXT, padded))
    assert b.recv()["sdp"] == "x" * 900
    new = d.connect()
    new.join("room")
    new.send_raw(frame(TEXT, padded))
    assert new.close_code() == 1009


def test_per_address_limits_count_the_address_a_trusted_proxy_forwarded(memory_daemon):
    from memory import Connection

    d = memory_daemon("--trusted-proxies", "127.0.0.1", "--max-connections-per-ip", "1")

    def through_proxy(forwarded: str, port: int) -> str:
        status, _, _ = Connection(d.site, port).handshake(extra=f"X-Forwarded-For: {forwarded}\r\n")
        return status

    assert through_proxy("10.9.9.9, 10.0.0.1", 41010).endswith("101 Switching Protocols")
    assert through_proxy("10.0.0.1", 41011).startswith("HTTP/1.1 429 ")  # the same client
    assert through_proxy("10.0.0.2, 127.0.0.1", 41012).endswith("101 Switching Protocols")  # proxies skipped
