"""Several nodes on one real redis-server: shared replay protection, and what a
node does while Redis is away."""

from __future__ import annotations

import socket
import time


from conftest import http, http_json
from redisserver import RedisServer
from test_admin import scrape, value
from test_lifecycle import NotifySocket
from wsclient import auth_message, connect

KEY = "cluster-test-key-91b2"


def wait_ready(d, want: int, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = http_json("GET", d.admin + "/ready")
        except OSError as e:  # the admin listener may bind a moment after the public one
            status, body = None, {"error": str(e)}
        if status == want and (want != 200 or body["status"] == "ready"):  # 200 and degraded: not yet
            return body
        assert time.monotonic() < deadline, (status, body)
        time.sleep(0.1)


def wait_degraded(d, timeout: float = 10.0) -> dict:
    """/ready once the node has noticed Redis is gone: still 200 (it serves), degraded."""
    body = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = http_json("GET", d.admin + "/ready")
        if status == 200 and body.get("status") == "degraded":
            assert body["degraded"] == ["redis"] and "cannot reach Redis" in body["checks"]["redis"], body
            return body
        time.sleep(0.05)
    raise AssertionError(f"not degraded: {body}")


def test_a_token_replayed_on_another_node_is_refused(daemon_factory, redis_server):
    redis = redis_server()
    env = {"SSCONTROL_API_KEY": KEY, "SSCONTROL_REDIS_URL": redis.url}
    one, two = daemon_factory(env=env), daemon_factory(env=env)
    for d in (one, two):
        wait_ready(d, 200)
    message = auth_message(KEY, "device-r")
    assert connect(one.ws).request(message)["type"] == "auth_success"
    reply = connect(two.ws).request(message)
    assert reply["type"] == "error" and "nonce already used" in reply["message"]
    keys = redis.command("KEYS", "sscontrol:nonce:*").split(b"\r\n")
    assert keys[0] == b"*1" and keys[2].startswith(b"sscontrol:nonce:")  # one nonce, shared
    ttl = int(redis.command("PTTL", keys[2].decode()).strip(b":\r\n"))
    assert 250_000 < ttl <= 330_000  # forgotten once the token is too old anyway


def test_redis_outage_local_service_goes_on_and_ready_comes_back(daemon_factory, redis_server):
    redis = redis_server()
    d = daemon_factory("--redis-timeout", "0.5", env={"SSCONTROL_API_KEY": KEY, "SSCONTROL_REDIS_URL": redis.url})
    assert wait_ready(d, 200)["checks"]["redis"] == "ok"
    a, b = connect(d.ws), connect(d.ws)
    for p in (a, b):
        assert p.request(auth_message(KEY))["type"] == "auth_success"
    a_id = a.join("local")["peer_id"]
    b_id = b.join("local")["peer_id"]
    a.recv()
    assert value(scrape(d), "sscontrol_redis_up") == 1

    redis.kill()
    wait_degraded(d)
    metrics = scrape(d)
    assert value(metrics, "sscontrol_redis_up") == 0 and value(metrics, "sscontrol_cluster_degraded") == 1
    a.send({"type": "offer", "to": b_id, "sdp": "during the outage"})  # both peers local: served
    assert b.recv()["sdp"] == "during the outage"
    # New clients get in (this node's replay cache), and a replay on this node is refused.
    during = auth_message(KEY, "device-during")
    newcomer = connect(d.ws)
    assert newcomer.request(during)["type"] == "auth_success"
    reply = connect(d.ws).request(during)
    assert reply["type"] == "error" and "nonce already used" in reply["message"]
    assert {p["id"] for p in newcomer.join("local")["peers"]} == {a_id, b_id}  # a room served alone

    redis.proc = None
    redis.start()  # same port
    assert wait_ready(d, 200, timeout=15)["checks"]["redis"] == "ok"
    assert value(scrape(d), "sscontrol_cluster_degraded") == 0
    assert connect(d.ws).request(auth_message(KEY))["type"] == "auth_success"
    # What this node let in meanwhile is now in Redis: refused by every node.
    reply = connect(d.ws).request(during)
    assert reply["type"] == "error" and "nonce already used" in reply["message"]
    log = d.log()
    assert "redis.down" in log and "redis.up" in log and "auth.nonces_converged" in log
    assert log.count("cluster.degraded") == 1


def test_ready_waits_for_redis_at_start(daemon_factory, tmp_path):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    redis_port = port.getsockname()[1]
    port.close()
    sink = NotifySocket(tmp_path / "notify")
    d = daemon_factory("--redis-timeout", "0.5",
                       env={"SSCONTROL_REDIS_URL": f"redis://127.0.0.1:{redis_port}", "NOTIFY_SOCKET": sink.path})
    body = wait_ready(d, 503)
    assert body["failing"] == ["redis"]
    assert not [m for m in sink.messages(1.0) if "READY=1" in m]  # not ready without Redis
    server = RedisServer(tmp_path, None)
    server.port = redis_port  # the address the daemon was given, Redis not yet there
    server.start()
    try:
        sink.wait_for("READY=1", timeout=15)
        wait_ready(d, 200)
    finally:
        server.kill()


def test_redis_password_from_a_credential_never_shown(daemon_factory, redis_server, tmp_path):
    redis = redis_server(password="redis-secret-pw-4411")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "redis_password").write_text("redis-secret-pw-4411\n")
    d = daemon_factory(env={"SSCONTROL_REDIS_URL": redis.url, "CREDENTIALS_DIRECTORY": str(creds),
                            "SSCONTROL_API_KEY": KEY})
    wait_ready(d, 200)
    assert connect(d.ws).request(auth_message(KEY))["type"] == "auth_success"
    shown = d.log() + scrape(d) + http("GET", d.admin + "/health")[2].decode()
    assert "redis-secret-pw-4411" not in shown


def test_redis_password_rotates_through_reload(daemon_factory, redis_server, tmp_path):
    import signal

    from test_lifecycle import wait_log

    redis = redis_server(password="old-redis-pw-5521")
    secret = tmp_path / "redis_password"
    secret.write_text("old-redis-pw-5521\n")
    conf = tmp_path / "signaling.conf"
    conf.write_text(f"[redis]\nredis_password_file = {secret}\n")
    d = daemon_factory("--config", str(conf), env={"SSCONTROL_REDIS_URL": redis.url})
    wait_ready(d, 200)
    a = connect(d.ws)
    a.join("rotation")

    # A wrong new password: refused, the running connection stays.
    secret.write_text("not-the-redis-pw-7730\n")
    d.signal(signal.SIGHUP)
    wait_log(d, "redis.password_refused")
    assert wait_ready(d, 200)["status"] == "ready"

    # Redis accepts both, the daemon switches, Redis forgets the old one.
    assert redis.command("ACL", "SETUSER", "default", ">new-redis-pw-9034").startswith(b"+OK")
    secret.write_text("new-redis-pw-9034\n")
    d.signal(signal.SIGHUP)
    wait_log(d, "redis.password_changed")
    assert redis.command("ACL", "SETUSER", "default", "<old-redis-pw-5521").startswith(b"+OK")
    redis.password = "new-redis-pw-9034"
    # Every connection Redis holds is cut: the daemon comes back with the new password only.
    redis.command("CLIENT", "KILL", "TYPE", "normal")
    redis.command("CLIENT", "KILL", "TYPE", "pubsub")
    wait_ready(d, 200)
    b = connect(d.ws)
    b_id = b.join("rotation")["peer_id"]
    assert a.recv() == {"type": "new_peer", "peer_id": b_id}  # the first client never noticed
    a.send({"type": "offer", "to": b_id, "sdp": "after rotation"})
    assert b.recv()["sdp"] == "after rotation"
    shown = d.log() + scrape(d)
    assert not any(pw in shown for pw in ("old-redis-pw-5521", "new-redis-pw-9034", "not-the-redis-pw-7730"))


def test_a_failing_connection_set_up_is_logged_once_per_outage(daemon_factory, redis_server, tmp_path):
    redis = redis_server(password="right-redis-pw-3307")
    d = daemon_factory(env={"SSCONTROL_REDIS_URL": redis.url, "SSCONTROL_REDIS_PASSWORD": "wrong-redis-pw-8812"})
    wait_ready(d, 503)
    # AUTH fails on every attempt: at least 4 more of them, each by both connections
    deadline = time.monotonic() + 15
    while value(scrape(d), "sscontrol_redis_reconnect_attempts_total", connection="link") < 5:
        assert time.monotonic() < deadline, scrape(d)
        time.sleep(0.2)
    log = d.log()
    assert log.count("redis.setup_failed") == 2, log  # once for the link, once for the subscriber
    assert "connection=link" in log and "connection=subscriber" in log and "WRONGPASS" in log
    # the libraries' line per attempt is left to debug
    assert "Scheduling retry" not in log and log.count("could not auth") == 2, log
    # Redis learns the password the node has: it gets in, and says how many attempts failed
    assert redis.command("ACL", "SETUSER", "default", ">wrong-redis-pw-8812").startswith(b"+OK")
    wait_ready(d, 200, timeout=15)
    assert "redis.setup_recovered" in d.log()
    assert "wrong-redis-pw-8812" not in d.log() + scrape(d)
