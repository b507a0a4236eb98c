"""Several processes on one port (reuse_port, SO_REUSEPORT) sharing rooms through Redis:
how one host uses every core."""

from __future__ import annotations

import signal
import subprocess
import time

from conftest import TWISTD, http_json
from test_redis import wait_ready
from wsclient import connect


def test_reuse_port_without_redis_is_a_config_error(tmp_path):
    empty = tmp_path / "empty.conf"
    empty.touch()
    proc = subprocess.run([TWISTD, "-n", "--pidfile=", "sscontrol-signaling", "--config", str(empty),
                           "--reuse-port", "true"], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "reuse_port" in proc.stderr + proc.stdout and "redis_url" in proc.stderr + proc.stdout


def test_processes_share_the_port_and_their_rooms(daemon_factory, redis_server):
    redis = redis_server()
    env = {"SSCONTROL_REDIS_URL": redis.url}
    first = daemon_factory("--reuse-port", "true", "--resume-grace", "0", env=env)
    second = daemon_factory("--reuse-port", "true", "--resume-grace", "0", env=env, port=first.port, wait=False)
    deadline = time.monotonic() + 20  # the port answers already: wait for the second's admin listener
    while "listener.ready listener=admin" not in second.log():
        assert second.proc.poll() is None and time.monotonic() < deadline, second.log()
        time.sleep(0.05)
    for d in (first, second):
        wait_ready(d, 200)

    # The kernel spreads connections over both processes.
    pairs = []
    for i in range(12):
        a, b = connect(first.ws), connect(first.ws)
        a.join(f"room-{i}")
        b_id = b.join(f"room-{i}")["peer_id"]
        assert a.recv() == {"type": "new_peer", "peer_id": b_id}
        pairs.append((a, b, b_id))
    counts = [http_json("GET", d.admin + "/health")[1]["connections"] for d in (first, second)]
    assert sum(counts) == 24 and min(counts) > 0, counts

    # Relay works whichever process each peer landed on.
    for i, (a, b, b_id) in enumerate(pairs):
        a.send({"type": "offer", "to": b_id, "sdp": f"sdp-{i}"})
        assert b.recv()["sdp"] == f"sdp-{i}"

    # One process leaves: the port keeps serving from the other.
    second.signal(signal.SIGTERM)
    second.proc.wait(20)
    for _ in range(10):
        p = connect(first.ws)
        assert p.join("after")["type"] == "peers"
        p.close()
