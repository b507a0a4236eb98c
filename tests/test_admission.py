"""Admission control under overload (issue 16): when the reactor falls behind, new
WebSocket upgrades get a fast 503 with Retry-After instead of queueing, counted in
the metrics, while established peers keep relaying.

The lag is real: the daemon process is stopped (SIGSTOP) while clients connect and
send their upgrades, as in a reconnect storm after a stall; when it runs again, its
50 ms timer is overdue by the whole stop and the queued upgrades are judged by it."""

from __future__ import annotations

import json
import re
import signal
import socket
import time

from conftest import http, http_json
from wsclient import connect

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    while length and len(body) < int(length.group(1)):
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def shed_count(d) -> float:
    _, _, text = http("GET", d.admin + "/metrics")
    m = re.search(r'^sscontrol_connections_shed_total\{reason="loop_lag"\} (\S+)$', text.decode(), re.M)
    return float(m.group(1))


def test_upgrades_queued_behind_a_stall_are_refused_fast_and_established_peers_relay(daemon_factory):
    d = daemon_factory("--overload-lag", "0.1", "--overload-retry-after", "3")
    a, b = connect(d.ws), connect(d.ws)
    a.join("room")
    b_id = b.join("room")["peer_id"]
    assert a.recv()["type"] == "new_peer"
    assert shed_count(d) == 0

    d.signal(signal.SIGSTOP)
    try:
        storm = []
        for _ in range(20):  # the kernel accepts them into the backlog; the daemon sees them late
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            s.sendall(UPGRADE)
            storm.append(s)
        a.send({"type": "offer", "to": b_id, "sdp": "during the stall"})
        time.sleep(0.6)
    finally:
        d.signal(signal.SIGCONT)
    resumed = time.monotonic()

    answers = []
    for s in storm:
        with s:
            answers.append((read_response(s), time.monotonic() - resumed))
    for answer, after in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), head
        assert re.search(rb"(?i)\r\nretry-after: 3\r\n", head + b"\r\n"), head
        assert json.loads(body) == {"success": False, "code": "overloaded",
                                    "error": "overloaded: try again after Retry-After seconds"}
        assert after < 2.0  # refused at once, not queued (generous bound for a shared machine)
    # the established peers lost nothing and keep relaying
    assert b.recv()["sdp"] == "during the stall"
    a.send({"type": "offer", "to": b_id, "sdp": "after"})
    assert b.recv()["sdp"] == "after"

    assert shed_count(d) == 20
    assert "overload.shed" in d.log()
    # the node stays ready, and once it has caught up it admits again
    assert http_json("GET", d.admin + "/ready")[0] == 200
    time.sleep(0.2)
    c = connect(d.ws)
    assert c.join("room")["type"] == "peers"


def test_overload_lag_zero_turns_shedding_off(daemon_factory):
    d = daemon_factory("--overload-lag", "0")
    d.signal(signal.SIGSTOP)
    try:
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        s.sendall(UPGRADE)
        time.sleep(0.4)
    finally:
        d.signal(signal.SIGCONT)
    with s:
        assert read_response(s).startswith(b"HTTP/1.1 101 ")
    assert shed_count(d) == 0
