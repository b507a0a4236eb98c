"""The admin listener: /health /ready /live /metrics, and counters that move
exactly as the traffic says."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest
from websockets.exceptions import InvalidStatus

from conftest import free_port, http, http_json
from redisserver import RedisServer
from sscontrold.cgroup import read_memory
from wsclient import auth_message, connect

KEY = "admin-test-key-5f3a"


def scrape(d) -> str:
    status, headers, body = http("GET", d.admin + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return body.decode()


def value(text: str, name: str, **labels) -> float:
    """The sample ``name{labels}`` of a scrape (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted(m.group(2).split(","))) if m.group(2) else ""
        if got == want:
            return float(m.group(3))
    return 0.0


def present(text: str, name: str) -> bool:
    """Whether the scrape has at least one sample of ``name`` (value() says 0 for none)."""
    return re.search(rf"^{re.escape(name)}(?:\{{.*\}})? \S+$", text, re.M) is not None


def test_live_ready_health_on_admin_and_public(daemon):
    assert http_json("GET", daemon.admin + "/live") == (200, {"status": "alive"})
    status, ready = http_json("GET", daemon.admin + "/ready")
    assert status == 200 and ready["status"] == "ready"
    assert ready["checks"] == {"listener_public": "ok", "listener_admin": "ok", "draining": "ok"}
    for base in (daemon.admin, daemon.base):
        status, health = http_json("GET", base + "/health")
        assert status == 200 and health["status"] == "ok"
        assert {"version", "uptime", "connections", "rooms", "sessions", "checks"} <= set(health)
    # the admin listener serves only the admin endpoints
    assert http("GET", daemon.admin + "/ws")[0] == 404
    assert http("GET", daemon.base + "/metrics")[0] == 404

    # /ready as metrics, computed at the scrape
    text = scrape(daemon)
    assert value(text, "sscontrol_ready") == 1
    for check in ("listener_public", "listener_admin", "draining"):
        assert value(text, "sscontrol_ready_check", check=check) == 1
    assert len(re.findall(r"^sscontrol_ready_check\{", text, re.M)) == 3
    assert value(text, "sscontrol_draining") == 0 and present(text, "sscontrol_draining")
    # no redis_url: no Redis gauge at all (not a 0 that would read as "Redis down")
    assert not present(text, "sscontrol_redis_up")
    # the cgroup's memory, as this test (the daemon's parent, same cgroup) reads it
    memory = read_memory()
    assert present(text, "sscontrol_memory_usage_bytes") == (memory.usage is not None)
    if memory.usage is not None:
        assert value(text, "sscontrol_memory_usage_bytes") > 0
    assert present(text, "sscontrol_memory_limit_bytes") == (memory.limit is not None)
    if memory.limit is not None:
        assert value(text, "sscontrol_memory_limit_bytes") == memory.limit


def test_ready_metrics_name_the_failing_check(daemon_factory, tmp_path):
    closed = free_port()  # nothing listens there: Redis is unreachable
    d = daemon_factory("--redis-timeout", "0.5", env={"SSCONTROL_REDIS_URL": f"redis://127.0.0.1:{closed}"})
    deadline = time.monotonic() + 10
    while http("GET", d.admin + "/ready")[0] != 503:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    text = scrape(d)
    assert value(text, "sscontrol_ready") == 0 and present(text, "sscontrol_ready")
    assert value(text, "sscontrol_ready_check", check="redis") == 0 and present(text, "sscontrol_ready_check")
    for check in ("listener_public", "listener_admin", "draining"):
        assert value(text, "sscontrol_ready_check", check=check) == 1
    # with redis_url set the gauge is there, at 0 while Redis has never answered
    assert present(text, "sscontrol_redis_up") and value(text, "sscontrol_redis_up") == 0
    # what /ready answers is what the gauges say
    status, body = http_json("GET", d.admin + "/ready")
    assert status == 503 and body["failing"] == ["redis"]

    # Redis comes up on that port: the gauges follow, with nothing polling /ready
    redis = RedisServer(tmp_path, None)
    redis.port = closed
    redis.start()
    try:
        deadline = time.monotonic() + 15
        while value(text := scrape(d), "sscontrol_ready") != 1:
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        assert value(text, "sscontrol_ready_check", check="redis") == 1
        assert value(text, "sscontrol_redis_up") == 1
    finally:
        redis.kill()


def test_admin_listener_can_be_turned_off(daemon_factory):
    d = daemon_factory("--admin-enabled", "false")
    with pytest.raises(OSError):
        http("GET", d.admin + "/live", timeout=1)
    assert http_json("GET", d.base + "/health")[1]["checks"] == {"listener_public": "ok", "draining": "ok"}


def test_counters_move_exactly_with_the_traffic(daemon_factory, tmp_path):
    d = daemon_factory(env={"SSCONTROL_API_KEY": KEY})
    before = scrape(d)
    a, b = connect(d.ws), connect(d.ws)
    for p in (a, b):
        assert p.request(auth_message(KEY))["type"] == "auth_success"
    assert a.request(auth_message("wrong"))["type"] == "error"
    a.join("room-secret-name")
    b_id = b.join("room-secret-name")["peer_id"]
    a.recv()
    for i in range(7):
        a.send({"type": "ice", "to": b_id, "candidate": f"c{i}", "sdp_mid": "0", "sdp_mline_index": 0})
        b.recv()
    a.send({"type": "offer", "to": b_id, "sdp": "v=0"})
    b.recv()
    assert a.request("garbage")["type"] == "error"
    assert a.request({"type": "offer", "to": "nobody", "sdp": "x"})["code"] == "unknown_peer"
    for _ in range(3):
        http("GET", d.base + "/health")
    http("GET", d.base + "/nowhere")
    during = scrape(d)  # under traffic: two connections open, one room

    def delta(name, **labels):
        return value(during, name, **labels) - value(before, name, **labels)

    assert value(during, "sscontrol_active_connections") == 2
    assert value(during, "sscontrol_rooms") == 1
    assert delta("sscontrol_messages_total", type="ice") == 7
    assert delta("sscontrol_messages_total", type="offer") == 2
    assert delta("sscontrol_messages_total", type="auth") == 3
    assert delta("sscontrol_messages_total", type="join") == 2
    assert delta("sscontrol_messages_total", type="invalid") == 1
    assert delta("sscontrol_auth_total", result="accepted", reason="token") == 2
    assert delta("sscontrol_auth_total", result="refused", reason="bad_token") == 1
    assert delta("sscontrol_errors_total", reason="auth_failed") == 1
    assert delta("sscontrol_errors_total", reason="bad_message") == 1
    assert delta("sscontrol_errors_total", reason="unknown_peer") == 1
    assert delta("sscontrol_relay_latency_seconds_count") == 8
    assert delta("sscontrol_requests_total", endpoint="/health", code="200") == 3
    assert delta("sscontrol_requests_total", endpoint="other", code="404") == 1
    assert delta("sscontrol_requests_total", endpoint="/ws", code="101") == 2
    assert value(during, "sscontrol_build_info", version=json.loads(http("GET", d.base + "/health")[2])["version"]) == 1
    assert value(during, "process_resident_memory_bytes") > 0
    # low cardinality, and no secret, peer, room or address anywhere
    for secret_or_id in (KEY, b_id, "room-secret-name", "127.0.0.1"):
        assert secret_or_id not in during
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=during, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    else:
        pytest.fail("promtool is missing: `make test` installs the Debian package prometheus")
    a.close()
    b.close()


def test_handshake_refusals_are_counted(daemon_factory):
    d = daemon_factory("--max-connections-per-ip", "1")
    before = scrape(d)
    keep = connect(d.ws)
    with pytest.raises(InvalidStatus):
        connect(d.ws)
    after = scrape(d)
    assert value(after, "sscontrol_requests_total", endpoint="/ws", code="429") - value(
        before, "sscontrol_requests_total", endpoint="/ws", code="429") == 1
    keep.close()
