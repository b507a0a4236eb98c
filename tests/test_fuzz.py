"""Thousands of random and mutated frames at a live daemon: it stays up, answers
each with an error or a relay, and keeps serving the well-behaved peers beside it."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import http
from wsclient import connect

VALID = [
    {"type": "join", "room_id": "fuzz"},
    {"type": "offer", "from": "x", "to": "PEER", "sdp": "v=0\r\n"},
    {"type": "answer", "to": "PEER", "sdp": "v=0\r\n"},
    {"type": "ice", "to": "PEER", "candidate": "candidate:1", "sdp_mid": "0", "sdp_mline_index": 0},
    {"type": "auth", "device_id": "d", "api_key": "", "timestamp": 1, "nonce": "n", "token": "ab"},
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


@st.composite
def frames(draw):
    choice = draw(st.integers(0, 4))
    if choice == 0:  # raw bytes that may or may not be JSON
        return draw(st.binary(max_size=200)).decode("utf-8", "replace")
    if choice == 1:  # any JSON value
        return json.dumps(draw(json_values))
    base = dict(draw(st.sampled_from(VALID)))
    if choice == 2:  # a valid message with one field replaced or removed
        key = draw(st.sampled_from(sorted(base)))
        if draw(st.booleans()):
            del base[key]
        else:
            base[key] = draw(json_values)
        return json.dumps(base)
    if choice == 3:  # extra fields
        base.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)))
        return json.dumps(base)
    text = json.dumps(base)  # truncated
    return text[: draw(st.integers(0, len(text)))]


def test_random_frames_never_break_the_daemon(daemon_factory):
    d = daemon_factory("--rate-limit-per-second", "100000", "--rate-limit-burst", "100000")
    host = connect(d.ws)
    viewer = connect(d.ws)
    host.join("good")
    viewer_id = viewer.join("good")["peer_id"]
    host.recv()
    fuzzer = connect(d.ws)
    fuzzer_id = fuzzer.join("fuzz")["peer_id"]
    target = connect(d.ws)
    target_id = target.join("fuzz")["peer_id"]
    fuzzer.recv()
    counts = {"error": 0, "relay": 0, "other": 0}
    probes = iter(range(10**9))

    # After each frame a probe (an unknown type with a serial number) follows; its
    # error marks the end of the frame's answers, so a frame that got no answer
    # must have been relayed to the target.
    @settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(frames())
    def frame_then_probe(text):
        text = text.replace("PEER", target_id)
        probe = f"probe-{next(probes)}"
        fuzzer.send(text)
        fuzzer.send({"type": probe})
        answers = []
        while True:
            reply = fuzzer.recv()
            if reply.get("type") == "error" and probe in reply["message"]:
                break
            answers.append(reply)
        assert len(answers) <= 1, answers
        if not answers:
            relayed = target.recv()
            assert relayed["from"] == fuzzer_id and relayed["type"] in ("offer", "answer", "ice"), relayed
            counts["relay"] += 1
            return
        answer = answers[0]
        assert answer.get("type") in ("error", "peers", "auth_success"), answer
        if answer["type"] == "error":
            assert isinstance(answer["message"], str) and answer["message"]
            counts["error"] += 1
        else:
            counts["other"] += 1
        if answer["type"] == "peers":  # the frame was a join: go back to the fuzz room
            fuzzer.join("fuzz")
            while not target.nothing(0.01):
                pass

    frame_then_probe()
    assert counts["error"] > 500 and counts["relay"] > 10, counts
    # the well-behaved pair never saw any of it, and still works
    assert host.nothing(0.1) and viewer.nothing(0.1)
    host.send({"type": "offer", "to": viewer_id, "sdp": "after the storm"})
    assert viewer.recv()["sdp"] == "after the storm"
    assert json.loads(http("GET", d.base + "/health")[2])["status"] == "ok"
