"""A rolling restart of a three-node cluster loses no session: pairs keep
exchanging numbered messages while every node in turn is stopped (SIGTERM)
and replaced; each client that is told to go (1012) reconnects to a live node
and resumes. At the end every message arrived, in order, none twice."""

from __future__ import annotations

import json
import random
import signal
import threading
import time

from websockets.exceptions import ConnectionClosed

from test_redis import wait_ready
from wsclient import connect



class Endpoint:
    """One peer: sends 0..MESSAGES-1 to its partner and records what it receives,
    reconnecting and resuming whenever its node sends it away."""

    def __init__(self, name, nodes, room, partner_id=None):
        self.name, self.nodes, self.room = name, nodes, room
        self.received: list[int] = []
        self.sent = 0
        self.resumes = 0
        self.partner_id = partner_id
        self.churn: list[dict] = []
        self.error: BaseException | None = None
        self.peer = connect(self.pick().ws)
        joined = self.peer.join(room)
        self.peer_id, self.token = joined["peer_id"], joined["resume_token"]
        if joined["peers"]:
            self.partner_id = joined["peers"][0]["id"]

    def pick(self):
        live = [d for d in self.nodes if d.proc.poll() is None and not getattr(d, "stopping", False)]
        return random.choice(live)

    def reconnect(self):
        deadline = time.monotonic() + 20
        while True:
            try:
                self.peer = connect(self.pick().ws)
                reply = self.peer.request({"type": "resume", "resume_token": self.token})
                assert reply["type"] == "resumed" and reply["peer_id"] == self.peer_id, reply
                self.token = reply["resume_token"]  # a token is spent by its resume: the next one is here
                self.resumes += 1
                return reply
            except (OSError, ConnectionClosed, AssertionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def drain_old_connection(self):
        """Messages that arrived before the close frame are still to be read."""
        try:
            while True:
                self.handle(self.peer.recv(timeout=1))
        except (ConnectionClosed, TimeoutError):
            pass

    def handle(self, message):
        if message.get("type") == "offer":
            self.received.append(json.loads(message["sdp"])["n"])
        elif message.get("type") in ("peer_left", "new_peer"):
            self.churn.append(message)

    def run(self, stop: threading.Event, done: threading.Event):
        """Send a numbered message every few milliseconds until ``stop``; keep
        receiving until ``done`` (the partner has stopped sending too)."""
        try:
            while not done.is_set():
                try:
                    if not stop.is_set() and self.partner_id:
                        self.peer.send({"type": "offer", "to": self.partner_id,
                                        "sdp": json.dumps({"n": self.sent})})
                        self.sent += 1
                    try:
                        while True:
                            self.handle(self.peer.recv(timeout=0.02))
                    except TimeoutError:
                        pass
                except ConnectionClosed:
                    self.drain_old_connection()
                    self.reconnect()
        except BaseException as e:  # reported by the test
            self.error = e


def test_rolling_restart_loses_nothing(daemon_factory, redis_server, tmp_path):
    redis = redis_server()

    def start_node():
        d = daemon_factory("--redis-timeout", "1", "--cluster-lease", "3", "--resume-grace", "15",
                           "--drain-timeout", "8", "--rate-limit-per-second", "1000",
                           env={"SSCONTROL_REDIS_URL": redis.url})
        wait_ready(d, 200)
        return d

    nodes = [start_node() for _ in range(3)]
    nodes_started = list(nodes)
    pairs = []
    for i in range(3):
        a = Endpoint(f"a{i}", nodes, f"room{i}")
        b = Endpoint(f"b{i}", nodes, f"room{i}", partner_id=a.peer_id)
        a.peer.recv()  # new_peer
        a.partner_id = b.peer_id
        pairs.append((a, b))
    endpoints = [e for pair in pairs for e in pair]
    stop, done = threading.Event(), threading.Event()
    threads = [threading.Thread(target=e.run, args=(stop, done), daemon=True) for e in endpoints]
    for t in threads:
        t.start()

    for old in list(nodes):  # replace every node, one at a time
        time.sleep(0.5)
        nodes.append(start_node())
        nodes_started.append(nodes[-1])
        old.stopping = True
        old.signal(signal.SIGTERM)
        assert old.proc.wait(20) in (0, -signal.SIGTERM)
    time.sleep(1)
    stop.set()
    deadline = time.monotonic() + 20
    partner = {e: (b if e is a else a) for a, b in pairs for e in (a, b)}
    while time.monotonic() < deadline and any(len(e.received) < partner[e].sent for e in endpoints):
        time.sleep(0.1)
    done.set()
    for t in threads:
        t.join(10)

    all_nodes = nodes_started
    for e in endpoints:
        if e.received != list(range(partner[e].sent)):
            with open(tmp_path / "rolling-restart.log", "w") as f:  # the nodes' logs, for the diagnosis
                f.write(f"{e.name} {e.peer_id} partner {partner[e].name} {partner[e].peer_id}\n")
                missing = sorted(set(range(partner[e].sent)) - set(e.received))
                f.write(f"missing {missing}\n")
                for d in all_nodes:
                    f.write(f"==== node {d.port}\n" + d.log())
        assert e.error is None, f"{e.name}: {e.error!r}"
        expected = list(range(partner[e].sent))
        assert len(expected) > 100  # the traffic went on through the whole restart
        assert e.received == expected, f"{e.name}: got {len(e.received)} of {len(expected)}"
        assert e.churn == [], f"{e.name} saw {e.churn}"
    assert sum(e.resumes for e in endpoints) >= len(endpoints)  # everyone moved at least once
