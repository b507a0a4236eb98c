"""The REST session API (docs/protocol.md section 2) on several nodes sharing one real
redis-server: any node serves any step of a session, with the same answers as one
node (attempts guard, tombstones, conflicts, the count limit), concurrent steps on
different nodes lose nothing, and Redis going away answers 503 until it is back."""

from __future__ import annotations

import itertools
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import Daemon, http_json
from redisserver import RedisServer
from test_redis import wait_degraded, wait_ready
from test_rest_api import CANDIDATE, assert_error, call, offer_body

HOST = "10.0.0.1"
VIEWER = "10.0.0.2"
_ids = (f"rc{i:04d}" for i in itertools.count())
FLAGS = ("--trusted-proxies", "127.0.0.1", "--session-max-attempts", "2", "--session-rate-per-minute", "100000",
         "--redis-timeout", "0.5")


def stop(d: Daemon) -> None:
    d.stop()
    assert "Traceback" not in d.log(), d.log()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three nodes on one redis-server, shared by the tests that keep Redis up."""
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    nodes = []
    try:
        for _ in range(3):
            nodes.append(Daemon(tmp_path_factory.mktemp("node"), list(FLAGS),
                                {"SSCONTROL_REDIS_URL": redis.url}).start())
        for d in nodes:
            wait_ready(d, 200)
        yield redis, nodes
    finally:
        for d in nodes:
            stop(d)
        redis.kill()


def pttl(redis: RedisServer, key: str) -> int:
    return int(redis.command("PTTL", key).strip(b":\r\n"))


def test_every_step_on_another_node(cluster):
    redis, (n1, n2, n3) = cluster
    sid = next(_ids)
    status, _, body = call(n1.base, "POST", "/api/session", offer_body(sid, public_key="pk", pin_hash="ph",
                                                                        ttl=120), HOST)
    assert status == 201 and body["session_id"] == sid
    expires_at = body["expires_at"]
    assert 110_000 < pttl(redis, f"sscontrol:session:{sid}") <= 121_000  # at expires_at (rounded up)
    assert pttl(redis, f"sscontrol:session:{sid}:gone") > 600_000  # the 410 outlives it
    assert_error(call(n2.base, "POST", "/api/session", offer_body(sid), HOST), 409, "already exists")

    status, _, body = call(n2.base, "GET", f"/api/session/{sid}", address=VIEWER)
    assert (status, body) == (200, {"offer": "v=0\r\no=host offer", "candidates": [CANDIDATE], "public_key": "pk",
                                    "expires_at": expires_at, "status": "waiting"})
    answer = {"answer": "v=0\r\no=viewer answer", "candidates": [{"candidate": "candidate:answer"}]}
    assert call(n3.base, "POST", f"/api/session/{sid}/answer", answer, VIEWER)[:3:2] == (200, {"success": True})

    # Both sides trickle candidates on every node at once: none may be lost.
    def add(i: int):
        node = (n1, n2, n3)[i % 3]
        role, address = ("host", HOST) if i % 2 else ("client", VIEWER)
        return call(node.base, "POST", f"/api/session/{sid}/ice",
                    {"role": role, "candidate": {"candidate": f"candidate:{role}:{i}"}}, address)[0]

    with ThreadPoolExecutor(24) as pool:
        assert set(pool.map(add, range(48))) == {200}

    status, _, body = call(n1.base, "GET", f"/api/session/{sid}", address=HOST)
    assert status == 200 and body["status"] == "answered" and body["answer"] == answer["answer"]
    assert body["candidates"][0] == CANDIDATE
    assert sorted(c["candidate"] for c in body["candidates"][1:]) == \
        sorted(f"candidate:host:{i}" for i in range(1, 48, 2))
    assert body["client_candidates"][0] == {"candidate": "candidate:answer"}
    assert sorted(c["candidate"] for c in body["client_candidates"][1:]) == \
        sorted(f"candidate:client:{i}" for i in range(0, 48, 2))
    assert pttl(redis, f"sscontrol:session:{sid}") > 100_000  # updates keep the TTL

    assert call(n2.base, "DELETE", f"/api/session/{sid}", address=HOST)[:3:2] == (200, {"success": True})
    assert_error(call(n3.base, "GET", f"/api/session/{sid}", address=VIEWER), 404, "not found")
    assert_error(call(n1.base, "DELETE", f"/api/session/{sid}"), 404)
    assert redis.command("EXISTS", f"sscontrol:session:{sid}", f"sscontrol:session:{sid}:gone") == b":0\r\n"
    # the id is free again, on any node
    assert call(n3.base, "POST", "/api/session", offer_body(sid), HOST)[0] == 201


def test_attempts_guard_across_nodes(cluster):
    _, (n1, n2, n3) = cluster
    sid = next(_ids)
    assert call(n1.base, "POST", "/api/session", offer_body(sid), HOST)[0] == 201
    for node in (n1, n2, n3):  # the host's own polls never count
        assert call(node.base, "GET", f"/api/session/{sid}", address=HOST)[0] == 200
    # --session-max-attempts 2: two GETs from others (on two nodes), the third is refused
    assert call(n2.base, "GET", f"/api/session/{sid}", address="10.9.0.1")[0] == 200
    assert call(n3.base, "GET", f"/api/session/{sid}", address="10.9.0.2")[0] == 200
    assert_error(call(n1.base, "GET", f"/api/session/{sid}", address="10.9.0.3"), 429, "too many attempts")
    for node in (n1, n2, n3):  # gone for everyone, host included
        assert_error(call(node.base, "GET", f"/api/session/{sid}", address=HOST), 429)
    assert_error(call(n2.base, "POST", f"/api/session/{sid}/answer", {"answer": "a"}), 429)
    assert "session.attempts_exceeded" in n1.log()

    # Concurrent GETs on all nodes: exactly max_attempts of them get the offer.
    sid = next(_ids)
    assert call(n1.base, "POST", "/api/session", offer_body(sid), HOST)[0] == 201

    def guess(i: int):
        return call((n1, n2, n3)[i % 3].base, "GET", f"/api/session/{sid}", address=f"10.8.0.{i + 1}")[0]

    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(guess, range(12)))
    assert sorted(statuses) == [200, 200] + [429] * 10


def test_expiry_by_ttl_answers_410_on_another_node(cluster):
    redis, (n1, n2, n3) = cluster
    sid = next(_ids)
    status, _, body = call(n1.base, "POST", "/api/session", offer_body(sid, ttl=1), HOST)
    assert status == 201
    while time.time() < body["expires_at"] + 0.2:
        time.sleep(0.05)
    assert_error(call(n2.base, "GET", f"/api/session/{sid}", address=VIEWER), 410, "expired")
    assert_error(call(n3.base, "POST", f"/api/session/{sid}/ice",
                      {"role": "host", "candidate": CANDIDATE}), 410, "expired")
    assert_error(call(n1.base, "DELETE", f"/api/session/{sid}"), 410)
    assert redis.command("EXISTS", f"sscontrol:session:{sid}") == b":0\r\n"  # Redis dropped it
    assert call(n2.base, "POST", "/api/session", offer_body(sid), HOST)[0] == 201  # reusable


def test_validation_is_the_same(cluster):
    _, (n1, n2, _) = cluster
    assert_error(call(n1.base, "POST", "/api/session", {"session_id": "x"}), 400, "offer is required")
    assert_error(call(n1.base, "GET", "/api/session/bad.id"), 400)
    assert_error(call(n2.base, "GET", "/api/session/nosuch"), 404, "not found")
    sid = next(_ids)
    assert call(n1.base, "POST", "/api/session", offer_body(sid), HOST)[0] == 201
    assert_error(call(n2.base, "POST", f"/api/session/{sid}/ice", {"role": "x", "candidate": CANDIDATE}), 400,
                 "role")
    assert_error(call(n2.base, "POST", f"/api/session/{sid}/answer", {"candidates": []}), 400, "answer is required")


def test_count_limit_over_all_nodes(daemon_factory, redis_server):
    redis = redis_server()
    n1, n2 = (daemon_factory("--session-max-count", "2", env={"SSCONTROL_REDIS_URL": redis.url})
              for _ in range(2))
    for d in (n1, n2):
        wait_ready(d, 200)
    assert call(n1.base, "POST", "/api/session", offer_body("one"))[0] == 201
    status, _, body = call(n2.base, "POST", "/api/session", offer_body("two", ttl=1))
    assert status == 201
    assert_error(call(n1.base, "POST", "/api/session", offer_body("three")), 503, "too many sessions")
    assert "limit.sessions" in n1.log()
    deadline = time.monotonic() + 5  # health shows the count over all nodes, refreshed every second
    while http_json("GET", n1.base + "/health")[1]["sessions"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    while time.time() < body["expires_at"] + 0.1:  # "two" expires: its place is free again
        time.sleep(0.05)
    assert call(n2.base, "POST", "/api/session", offer_body("three"))[0] == 201
    assert_error(call(n1.base, "POST", "/api/session", offer_body("four")), 503)
    assert call(n1.base, "DELETE", "/api/session/one")[0] == 200
    assert call(n2.base, "POST", "/api/session", offer_body("four"))[0] == 201


def test_redis_outage_answers_503_then_recovers(daemon_factory, redis_server):
    redis = redis_server()
    n1, n2 = (daemon_factory("--redis-timeout", "0.5", env={"SSCONTROL_REDIS_URL": redis.url}) for _ in range(2))
    for d in (n1, n2):
        wait_ready(d, 200)
    assert call(n1.base, "POST", "/api/session", offer_body("before"))[0] == 201
    assert http_json("GET", n1.base + "/health")[0] == 200

    redis.kill()
    for node, args in ((n1, ("GET", "/api/session/before")), (n2, ("POST", "/api/session", offer_body("during"))),
                       (n1, ("POST", "/api/session/before/ice", {"role": "host", "candidate": CANDIDATE})),
                       (n2, ("DELETE", "/api/session/before"))):
        started = time.monotonic()
        result = call(node.base, *args)
        assert_error(result, 503, "temporarily unavailable")
        assert result[1]["retry-after"] == "1" and result[1]["access-control-allow-origin"] == "*"
        assert time.monotonic() - started < 3
    # a client that leaves before the answer is ready: nothing is written to it, nothing breaks
    with socket.create_connection(("127.0.0.1", n1.port)) as s:
        s.sendall(b"GET /api/session/before HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.7)
    # validation needs no Redis
    assert_error(call(n1.base, "POST", "/api/session", {"offer": "x"}), 400)
    wait_degraded(n1)  # /ready stays 200 (degraded): the node still serves what needs no Redis
    assert http_json("GET", n1.base + "/health")[1]["sessions"] is None  # unknown while Redis is away

    redis.proc = None
    redis.start()  # same port, empty (no persistence)
    for d in (n1, n2):
        wait_ready(d, 200, timeout=15)
    assert call(n2.base, "POST", "/api/session", offer_body("after"))[0] == 201
    assert call(n1.base, "GET", "/api/session/after")[0] == 200
