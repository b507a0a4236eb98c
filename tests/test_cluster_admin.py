"""Cluster-wide administration (docs/cluster-admin.md): rooms, peers, kick, close-room
and drain, through sscontrol-signaling-ctl and the admin listener, on one node and on
two nodes sharing a real redis-server: a kick issued on node A closes a peer on node B."""

from __future__ import annotations

import json

import pytest

from conftest import http
from sscontrold import ctl
from test_redis import wait_ready
from wsclient import RawPeer, connect


def run_ctl(capsys, d, *argv) -> tuple[int, dict | None, str]:
    status = ctl.main([argv[0], "--admin-url", d.admin, *argv[1:]])
    out, err = capsys.readouterr()
    return status, (json.loads(out) if out.strip() else None), err


@pytest.fixture
def two_nodes(daemon_factory, redis_server):
    redis = redis_server()
    nodes = [daemon_factory("--redis-timeout", "0.5", "--cluster-lease", "2", "--resume-grace", "5",
                            env={"SSCONTROL_REDIS_URL": redis.url}) for _ in range(2)]
    for d in nodes:
        wait_ready(d, 200)
    return nodes


def test_kick_on_node_a_closes_a_peer_on_node_b(two_nodes, capsys):
    a_node, b_node = two_nodes
    a = connect(a_node.ws)
    a_id = a.join("desk")["peer_id"]
    b, c = connect(b_node.ws), connect(b_node.ws)
    b_id = b.join("desk")["peer_id"]
    c_id = c.join("desk")["peer_id"]
    other = connect(b_node.ws)
    other.join("elsewhere")
    assert [a.recv()["peer_id"] for _ in range(2)] == [b_id, c_id]
    assert b.recv()["peer_id"] == c_id

    status, listing, _ = run_ctl(capsys, a_node, "rooms")
    assert status == 0 and listing["scope"] == "cluster"
    assert listing["rooms"] == [{"room_id": "desk", "members": 3}, {"room_id": "elsewhere", "members": 1}]
    status, members, _ = run_ctl(capsys, a_node, "peers", "desk")
    assert status == 0
    nodes = {p["peer_id"]: p["node"] for p in members["peers"]}
    assert set(nodes) == {a_id, b_id, c_id} and nodes[b_id] == nodes[c_id] != nodes[a_id]
    assert [p for p in members["peers"] if p["peer_id"] == a_id][0]["state"] == "connected"

    status, answer, _ = run_ctl(capsys, a_node, "kick", b_id, "--reason", "support session over")
    assert status == 0 and answer == {"kicked": b_id, "room_id": "desk", "node": nodes[b_id]}
    assert b.recv() == {"type": "error", "message": "removed by an operator: support session over",
                        "code": "kicked"}
    assert b.closed_with() == 1008
    assert a.recv() == {"type": "peer_left", "peer_id": b_id}
    assert c.recv() == {"type": "peer_left", "peer_id": b_id}
    assert a.nothing(0.5) and c.nothing(0.1) and other.nothing(0.1)  # peer_left once, nothing else
    # the kicked peer is gone for good: no resume of its place
    again = connect(b_node.ws)
    reply = again.request({"type": "resume", "resume_token": "x" * 32})
    assert reply.get("code") == "resume_failed", reply

    status, _, err = run_ctl(capsys, a_node, "kick", "peer_nobody")
    assert status == 1 and "no such peer (HTTP 404)" in err

    # who, what, where: on the node asked and on the node that acted; no secret
    assert "admin.kick actor=\"127.0.0.1:" in a_node.log() and "ctl user=" in a_node.log()
    assert f"peer_id={b_id}" in a_node.log() and "reason=\"support session over\"" in a_node.log()
    assert "admin.applied" in b_node.log() and "action=kick" in b_node.log()

    # close-room, from node B: the member on node A goes too
    status, answer, _ = run_ctl(capsys, b_node, "close-room", "desk", "--reason", "maintenance")
    assert status == 0 and answer["closed"] == 2 and answer["unanswered"] == 0
    assert c.recv() == {"type": "error", "message": "room closed by an operator: maintenance", "code": "room_closed"}
    seen_by_a = [a.recv(), a.recv()]  # c's peer_left may come before or after a's own notice
    assert {"type": "peer_left", "peer_id": c_id} in seen_by_a
    assert {"type": "error", "message": "room closed by an operator: maintenance", "code": "room_closed"} in seen_by_a
    assert a.closed_with() == 1008 and c.closed_with() == 1008
    status, listing, _ = run_ctl(capsys, a_node, "rooms")
    assert listing["rooms"] == [{"room_id": "elsewhere", "members": 1}]
    assert "admin.close_room" in b_node.log() and "admin.applied" in a_node.log()
    assert other.request({"type": "offer", "to": "nobody", "sdp": "x"})["code"] == "unknown_peer"  # still served


def test_single_node_listing_kick_and_drain(daemon_factory, capsys):
    d = daemon_factory("--resume-grace", "0")
    host, viewer = connect(d.ws), connect(d.ws)
    host_id = host.join("r")["peer_id"]
    viewer_id = viewer.join("r")["peer_id"]
    host.recv()
    status, listing, _ = run_ctl(capsys, d, "rooms")
    assert (status, listing) == (0, {"scope": "node", "rooms": [{"room_id": "r", "members": 2}], "truncated": False})
    status, members, _ = run_ctl(capsys, d, "peers", "r")
    assert {p["peer_id"] for p in members["peers"]} == {host_id, viewer_id}
    assert all(p["address"] == "127.0.0.1" for p in members["peers"])
    assert run_ctl(capsys, d, "peers", "none")[0] == 1
    assert run_ctl(capsys, d, "kick", viewer_id)[0] == 0
    assert viewer.recv() == {"type": "error", "message": "removed by an operator", "code": "kicked"}
    assert host.recv() == {"type": "peer_left", "peer_id": viewer_id}

    # a web page cannot act: an Origin, or a body that is not JSON, is refused
    status, _, body = http("POST", d.admin + "/kick", json.dumps({"peer_id": host_id}).encode(),
                           {"Content-Type": "application/json", "Origin": "http://evil.example"})
    assert status == 403 and json.loads(body)["success"] is False
    status, _, _ = http("POST", d.admin + "/kick", b"peer_id=" + host_id.encode(),
                        {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    status, _, _ = http("POST", d.admin + "/kick", json.dumps({"peer_id": host_id, "reason": "x" * 201}).encode(),
                        {"Content-Type": "application/json"})
    assert status == 400

    status, answer, _ = run_ctl(capsys, d, "drain")
    assert status == 0 and answer["draining"] is True
    assert host.closed_with() == 1012
    assert wait_ready(d, 503)["failing"] == ["draining"]
    assert RawPeer("127.0.0.1", d.port).status == 503  # no longer admitting
    assert "admin.drain" in d.log() and "drain.start" in d.log()
