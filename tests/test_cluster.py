"""Three nodes on one real redis-server behave as one: rooms, relay and peer_left
across nodes, the room limit across nodes, a node killed without a goodbye, and
Redis going away and coming back."""

from __future__ import annotations

import json
import signal
import time

import pytest

from test_redis import wait_degraded, wait_ready
from wsclient import connect


@pytest.fixture
def cluster(daemon_factory, redis_server):
    redis = redis_server()
    nodes = [daemon_factory("--redis-timeout", "0.5", "--cluster-lease", "2", "--resume-grace", "0",
                            env={"SSCONTROL_REDIS_URL": redis.url}) for _ in range(3)]
    for d in nodes:
        wait_ready(d, 200)
    return redis, nodes


def test_join_relay_and_leave_across_nodes(cluster):
    _, (n1, n2, n3) = cluster
    a = connect(n1.ws)
    a_id = a.join("shared")["peer_id"]
    b = connect(n2.ws)
    joined = b.join("shared")
    b_id = joined["peer_id"]
    assert joined["peers"] == [{"id": a_id}]
    assert a.recv() == {"type": "new_peer", "peer_id": b_id}
    c = connect(n3.ws)
    joined = c.join("shared")
    c_id = joined["peer_id"]
    assert sorted(p["id"] for p in joined["peers"]) == sorted([a_id, b_id])
    assert a.recv() == b.recv() == {"type": "new_peer", "peer_id": c_id}
    for i in range(20):  # order kept across nodes
        a.send({"type": "ice", "to": c_id, "candidate": f"c{i}", "sdp_mid": "0", "sdp_mline_index": 0})
    assert [c.recv()["candidate"] for _ in range(20)] == [f"c{i}" for i in range(20)]
    c.send({"type": "answer", "from": "forged", "to": b_id, "sdp": "from n3"})
    assert b.recv() == {"type": "answer", "from": c_id, "to": b_id, "sdp": "from n3"}
    # another room on another node is out of reach, as on one node
    d = connect(n2.ws)
    d_id = d.join("elsewhere")["peer_id"]
    assert a.request({"type": "offer", "to": d_id, "sdp": "x"})["code"] == "unknown_peer"
    b.close()
    assert a.recv() == {"type": "peer_left", "peer_id": b_id}
    assert c.recv() == {"type": "peer_left", "peer_id": b_id}
    assert a.nothing(0.5) and c.nothing(0.1) and d.nothing(0.1)


def test_room_limit_holds_across_nodes(daemon_factory, redis_server):
    redis = redis_server()
    nodes = [daemon_factory("--max-peers-per-room", "2", env={"SSCONTROL_REDIS_URL": redis.url})
             for _ in range(3)]
    for d in nodes:
        wait_ready(d, 200)
    a, b, c = (connect(d.ws) for d in nodes)
    a.join("small")
    b.join("small")
    a.recv()
    assert c.request({"type": "join", "room_id": "small"}) == {
        "type": "error", "message": "room full", "code": "room_full"}
    assert a.nothing(0.3) and b.nothing(0.1)


def test_killed_node_peers_leave_once_within_the_bound(cluster):
    _, (n1, n2, n3) = cluster
    a, b = connect(n1.ws), connect(n3.ws)
    a.join("r")
    b.join("r")
    a.recv()
    doomed = [connect(n2.ws) for _ in range(2)]
    doomed_ids = {p.join("r")["peer_id"] for p in doomed}
    for observer in (a, b):
        assert {observer.recv()["peer_id"] for _ in range(2)} == doomed_ids
    killed = time.monotonic()
    n2.signal(signal.SIGKILL)
    for observer in (a, b):
        got = [observer.recv(timeout=15) for _ in range(2)]
        assert got == [{"type": "peer_left", "peer_id": pid} for pid in doomed_ids] or \
            got == [{"type": "peer_left", "peer_id": pid} for pid in reversed(list(doomed_ids))], (got, doomed_ids)
    assert time.monotonic() - killed < 15
    extra = []
    for observer in (a, b):
        try:
            extra.append(observer.recv(timeout=3))
        except TimeoutError:
            pass
    assert extra == [], (extra, doomed_ids)  # exactly once
    n2.proc.wait()


def test_redis_restart_local_service_continues_and_cluster_recovers(cluster):
    redis, (n1, n2, n3) = cluster
    a, b = connect(n1.ws), connect(n2.ws)
    a_id = a.join("r")["peer_id"]
    b_id = b.join("r")["peer_id"]
    a.recv()
    local = connect(n1.ws)
    local_id = local.join("r")["peer_id"]
    assert {a.recv()["peer_id"], b.recv()["peer_id"]} == {local_id}
    redis.kill()
    for d in (n1, n2):
        wait_degraded(d)
    local.send({"type": "offer", "to": a_id, "sdp": "local during the outage"})
    assert a.recv()["sdp"] == "local during the outage"
    reply = a.request({"type": "offer", "to": b_id, "sdp": "remote during the outage"})
    assert (reply["code"], reply["message_type"], reply["to"]) == ("cluster_unavailable", "offer", b_id)
    local.close()  # leaves while Redis is away: its own node says so at once...
    assert a.recv() == {"type": "peer_left", "peer_id": local_id}
    redis.proc = None
    redis.start()  # empty: every node puts its members back
    for d in (n1, n2):
        wait_ready(d, 200, timeout=15)
    deadline = time.monotonic() + 15
    seen_by_b = []
    while True:  # cross-node relay works again once the nodes are back in Redis
        a.send({"type": "offer", "to": b_id, "sdp": "after"})
        try:
            message = b.recv(timeout=0.5)
            seen_by_b.append(message)
            if message.get("sdp") == "after":
                break
        except TimeoutError:
            a.nothing(0.1)  # the refusal, if that is what it got
            assert time.monotonic() < deadline, "the cluster did not recover"
    # ...and the other node hears of the leave once Redis is back, exactly once
    seen_by_b += drain_messages(b, 5)
    left = [m for m in seen_by_b if m.get("type") == "peer_left"]
    assert left == [{"type": "peer_left", "peer_id": local_id}]
    assert "Traceback" not in n1.log()


def drain_messages(peer, seconds: float) -> list[dict]:
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got.append(peer.recv(timeout=max(0.05, deadline - time.monotonic())))
        except TimeoutError:
            break
    return got


def test_a_leave_during_a_redis_stall_reaches_the_other_nodes_after_it(daemon_factory, redis_server):
    redis = redis_server()
    nodes = [daemon_factory("--redis-timeout", "0.5", "--cluster-lease", "6", "--resume-grace", "0",
                            env={"SSCONTROL_REDIS_URL": redis.url}) for _ in range(2)]
    for d in nodes:
        wait_ready(d, 200)
    a, leaver, b = connect(nodes[0].ws), connect(nodes[0].ws), connect(nodes[1].ws)
    a.join("r")
    leaver_id = leaver.join("r")["peer_id"]
    b.join("r")
    drain_messages(a, 0.5)
    drain_messages(b, 0.5)
    redis.proc.send_signal(signal.SIGSTOP)  # Redis hangs but keeps its data
    try:
        wait_degraded(nodes[0])
        leaver.close()
        assert a.recv() == {"type": "peer_left", "peer_id": leaver_id}
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    wait_ready(nodes[0], 200)
    left = [m for m in drain_messages(b, 6) if m.get("type") == "peer_left"]
    assert left == [{"type": "peer_left", "peer_id": leaver_id}]  # no ghost left behind in Redis


def _publishes(redis) -> int:
    info = redis.command("INFO", "commandstats").decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_publish:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


def test_cross_node_relays_batched_per_read_and_timed_on_the_receiver(cluster):
    """The ice messages of one WebSocket read, to a peer on another node: delivered in
    order, one PUBLISH each in the format every node version reads, written to Redis
    together, and timed on the receiving node like local relays."""
    from test_admin import scrape, value
    from wsclient import RawPeer

    redis, (n1, n2, _) = cluster
    a = RawPeer("127.0.0.1", n1.port)
    a.send_json({"type": "join", "room_id": "batch"})
    a_id = a.recv_json()["peer_id"]
    b = connect(n2.ws)
    b_id = b.join("batch")["peer_id"]
    assert a.recv_json() == {"type": "new_peer", "peer_id": b_id}
    before, timed = _publishes(redis), value(scrape(n2), "sscontrol_relay_latency_seconds_count")
    frames = b"".join(RawPeer.frame(0x1, json.dumps({"type": "ice", "to": b_id, "candidate": f"c{i}",
                                                         "sdp_mid": "0", "sdp_mline_index": 0}).encode())
                      for i in range(40))
    a.send_raw(frames)  # one TCP write: read by the node in one or a few reads
    got = [b.recv() for _ in range(40)]
    assert [m["candidate"] for m in got] == [f"c{i}" for i in range(40)]
    assert all(m["from"] == a_id for m in got)
    assert _publishes(redis) - before >= 40  # one each: a node of an earlier version reads them
    assert value(scrape(n2), "sscontrol_relay_latency_seconds_count") - timed == 40


def test_a_burst_of_relays_across_nodes_is_delivered_in_time_without_errors(daemon_factory, redis_server):
    """Many messages in flight at once to peers on another node: the receiving node
    reads the burst from its subscription in big reads and hands each message on at
    once (a parser that handled one bulk string per reactor turn, copying the rest of
    the read each time, held them past the relay timeout: dropped as late, and each
    sender told relay_failed)."""
    from wsclient import RawPeer

    redis = redis_server()
    # redis_timeout 3 s: a machine busy with other tests can miss a 1 s deadline on its own
    nodes = [daemon_factory("--redis-timeout", "3", "--resume-grace", "0", "--rate-limit-per-second", "1000000",
                            "--rate-limit-burst", "1000000", env={"SSCONTROL_REDIS_URL": redis.url})
             for _ in range(2)]
    for d in nodes:
        wait_ready(d, 200)
    pairs, count = 6, 2000
    senders, receivers = [], []
    for i in range(pairs):
        a, b = RawPeer("127.0.0.1", nodes[0].port), RawPeer("127.0.0.1", nodes[1].port)
        a.send_json({"type": "join", "room_id": f"burst-{i}"})
        a.recv_json()
        b.send_json({"type": "join", "room_id": f"burst-{i}"})
        b_id = b.recv_json()["peer_id"]
        assert a.recv_json() == {"type": "new_peer", "peer_id": b_id}
        senders.append((a, b_id))
        receivers.append(b)
    for a, b_id in senders:  # all in flight at once: one TCP write per sender
        a.send_raw(b"".join(RawPeer.frame(0x1, json.dumps(
            {"type": "ice", "to": b_id, "candidate": f"c{n}", "sdp_mid": "0", "sdp_mline_index": 0}).encode())
            for n in range(count)))
    for b in receivers:
        got = [b.recv_json(timeout=30)["candidate"] for _ in range(count)]
        assert got == [f"c{n}" for n in range(count)]  # every one, in order
    for a, _ in senders:  # and no sender heard of a message not delivered
        with pytest.raises(TimeoutError):
            a.recv_json(timeout=0.2)
    for d in nodes:
        assert "cluster.relay_late" not in d.log() and "cluster.relay_undelivered" not in d.log()
        assert "redis.slow_parser" not in d.log()


def test_redis_replies_are_parsed_by_hiredis():
    """The link and the subscription read replies with hiredis (C), which hands on every
    reply of a read at once; txredisapi's own parser takes a reactor turn per bulk string."""
    import txredisapi

    from sscontrold.redis import _LinkProtocol, _Subscriber, hiredis_parser

    assert hiredis_parser()
    assert issubclass(_LinkProtocol, txredisapi.HiredisProtocol)
    assert issubclass(_Subscriber, txredisapi.HiredisProtocol)
