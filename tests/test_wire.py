"""The WebSocket wire, frame by frame, against the real daemon.

The daemon reads whole single-frame text messages itself and leaves every other
frame to Autobahn (protocol.py); these tests cross that border on purpose: many
frames in one TCP segment, frames cut across reads, fragments, control frames and
protocol violations between valid messages. The sender is a raw socket (it can
write any bytes); the recipient is the websockets library, an independent
implementation that checks the server's frames.
"""

from __future__ import annotations

import json
import time

import pytest

from wsclient import RawPeer, connect

TEXT, CONTINUATION, BINARY, PING, PONG = 0x1, 0x0, 0x2, 0x9, 0xA
frame = RawPeer.frame


def raw_pair(d, room="wire"):
    """A raw sender and a websockets recipient in one room."""
    a = RawPeer("127.0.0.1", d.port)
    a.send_json({"type": "join", "room_id": room})
    a_id = a.recv_json()["peer_id"]
    b = connect(d.ws)
    b_id = b.join(room)["peer_id"]
    assert a.recv_json() == {"type": "new_peer", "peer_id": b_id}
    return a, b, a_id, b_id


def ice(to: str, i: int, pad: int = 0) -> bytes:
    return json.dumps({"type": "ice", "to": to, "candidate": f"candidate:{i} 1 udp {'x' * pad}",
                       "sdp_mid": "0", "sdp_mline_index": 0}).encode()


def received(peer, n: int) -> list[dict]:
    return [peer.recv() for _ in range(n)]


def test_many_messages_in_one_write_arrive_in_order(daemon):
    a, b, a_id, b_id = raw_pair(daemon)
    a.send_raw(b"".join(frame(TEXT, ice(b_id, i)) for i in range(150)))  # under the burst limit
    got = received(b, 150)
    assert [m["candidate"].split()[0] for m in got] == [f"candidate:{i}" for i in range(150)]
    assert {m["from"] for m in got} == {a_id}
    assert b.nothing()


def test_a_message_cut_across_reads(daemon):
    a, b, a_id, b_id = raw_pair(daemon)
    sdp = "v=0\r\n" + "a=x\r\n" * 600  # a 16-bit length
    data = frame(TEXT, json.dumps({"type": "offer", "to": b_id, "sdp": sdp}).encode())
    for cut in (1, 3, 7, 900, len(data)):  # inside the header, the mask, the payload
        a.send_raw(data[:cut])
        data = data[cut:]
        time.sleep(0.05)
    a.send_raw(data)
    assert b.recv() == {"type": "offer", "from": a_id, "to": b_id, "sdp": sdp}


def test_a_complete_and_a_partial_frame_in_one_write(daemon):
    a, b, a_id, b_id = raw_pair(daemon)
    first, second, third = (frame(TEXT, ice(b_id, i)) for i in range(3))
    a.send_raw(first + second[:9])
    time.sleep(0.05)
    a.send_raw(second[9:] + third)
    assert [m["candidate"].split()[0] for m in received(b, 3)] == ["candidate:0", "candidate:1", "candidate:2"]


def test_fragmented_message_between_single_frames(daemon):
    a, b, a_id, b_id = raw_pair(daemon)
    message = ice(b_id, 1, pad=400)
    a.send_raw(frame(TEXT, ice(b_id, 0)) + frame(TEXT, message[:100], fin=False)
               + frame(CONTINUATION, message[100:250], fin=False) + frame(PING, b"mid")
               + frame(CONTINUATION, message[250:]) + frame(TEXT, ice(b_id, 2)))
    got = received(b, 3)
    assert [m["candidate"].split()[0] for m in got] == ["candidate:0", "candidate:1", "candidate:2"]
    assert got[1]["candidate"] == json.loads(message)["candidate"]
    assert a.read_frame() == (PONG, b"mid")


def test_ping_between_messages_gets_its_pong(daemon):
    a, b, a_id, b_id = raw_pair(daemon)
    a.send_raw(frame(TEXT, ice(b_id, 0)) + frame(PING, b"hello") + frame(TEXT, ice(b_id, 1)))
    assert a.read_frame() == (PONG, b"hello")
    assert [m["candidate"].split()[0] for m in received(b, 2)] == ["candidate:0", "candidate:1"]


def test_binary_frame_between_messages_gets_an_error(daemon):
    a, b, a_id, b_id = raw_pair(daemon)
    a.send_raw(frame(TEXT, ice(b_id, 0)) + frame(BINARY, b"\x00\x01") + frame(TEXT, ice(b_id, 1)))
    reply = a.recv_json()
    assert reply["type"] == "error" and "binary" in reply["message"]
    assert [m["candidate"].split()[0] for m in received(b, 2)] == ["candidate:0", "candidate:1"]


VIOLATIONS = {
    "unmasked": frame(TEXT, b'{"type": "x"}', masked=False),
    "non_minimal_length": frame(TEXT, b'{"type": "x"}', long_length=True),
    "rsv_bit": frame(TEXT, b'{"type": "x"}', rsv=4),
    "reserved_opcode": frame(0x3, b"{}"),
    "stray_continuation": frame(CONTINUATION, b"{}"),
    "fragmented_ping": frame(PING, b"p", fin=False),
}


@pytest.mark.parametrize("violation", sorted(VIOLATIONS))
def test_protocol_violation_after_a_message_closes_with_1002(daemon, violation):
    a, b, a_id, b_id = raw_pair(daemon)
    a.send_raw(frame(TEXT, ice(b_id, 0)) + VIOLATIONS[violation] + frame(TEXT, ice(b_id, 1)))
    assert a.close_code() == 1002
    assert b.recv()["candidate"].startswith("candidate:0 ")  # what came before still arrives
    assert b.recv() == {"type": "peer_left", "peer_id": a_id}  # and nothing after it
    assert b.nothing()


@pytest.mark.parametrize("bad", [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80"])
def test_invalid_utf8_after_a_message_closes_with_1007(daemon, bad):
    a, b, a_id, b_id = raw_pair(daemon)
    a.send_raw(frame(TEXT, ice(b_id, 0)) + frame(TEXT, b'{"type": "ice", "candidate": "' + bad + b'"}')
               + frame(TEXT, ice(b_id, 1)))
    assert a.close_code() == 1007
    assert b.recv()["candidate"].startswith("candidate:0 ")
    assert b.recv() == {"type": "peer_left", "peer_id": a_id}


def test_invalid_utf8_in_a_fragmented_message_closes_with_1007(daemon):
    raw = RawPeer("127.0.0.1", daemon.port)
    raw.send_raw(frame(TEXT, b'{"type": "join", "room_id": "', fin=False) + frame(CONTINUATION, b'\xff"}'))
    assert raw.close_code() == 1007


def test_valid_utf8_of_every_width_is_relayed_intact(daemon):
    a, b, a_id, b_id = raw_pair(daemon)
    text = "é ü ß — 中文 ☃ 𝄞 🎉"
    a.send_raw(frame(TEXT, json.dumps({"type": "offer", "to": b_id, "sdp": text}, ensure_ascii=False).encode()))
    assert b.recv()["sdp"] == text


def test_size_limit_holds_at_the_byte(daemon_factory):
    d = daemon_factory("--max-message-bytes", "1024", "--max-frame-bytes", "1024", "--max-sdp-bytes", "1024")
    a, b, a_id, b_id = raw_pair(d)

    def offer(size: int) -> bytes:
        body = {"type": "offer", "to": b_id, "sdp": ""}
        body["sdp"] = "x" * (size - len(json.dumps(body)))
        data = json.dumps(body).encode()
        assert len(data) == size
        return data

    a.send_raw(frame(TEXT, offer(1024)))
    assert len(b.recv()["sdp"]) > 900
    a.send_raw(frame(TEXT, offer(1025)))
    assert a.close_code() == 1009
    assert b.recv() == {"type": "peer_left", "peer_id": a_id}


def test_a_slow_reader_gets_everything_in_order(daemon_factory):
    """The socket takes part of a write, Twisted queues the rest: nothing is lost,
    nothing overtakes (what is sent straight to the socket never jumps the queue).
    The outgoing budget is raised for it: by default ~11 MB unread closes the peer."""
    daemon = daemon_factory("--max-queued-bytes", str(32 * 1024 * 1024))
    slow = RawPeer("127.0.0.1", daemon.port)
    slow.send_json({"type": "join", "room_id": "slow"})
    slow_id = slow.recv_json()["peer_id"]
    fast = connect(daemon.ws)
    fast_id = fast.join("slow")["peer_id"]
    sdp = "a=" + "y" * 59000
    for i in range(190):  # ~11 MB: far more than loopback socket buffers hold while nobody reads
        fast.send({"type": "offer", "to": slow_id, "sdp": f"{i:04d}{sdp}"})
    time.sleep(0.5)
    assert slow.recv_json() == {"type": "new_peer", "peer_id": fast_id}
    got = [slow.recv_json() for _ in range(190)]
    assert [m["sdp"][:4] for m in got] == [f"{i:04d}" for i in range(190)]
    assert all(m["sdp"][4:] == sdp and m["from"] == fast_id for m in got)


def test_reload_sizes_apply_to_new_connections_only(daemon_factory, tmp_path):
    """The WebSocket options belong to the connection from its opening: a reload
    changes them for new connections and leaves open ones as they were."""
    import signal

    from test_lifecycle import wait_log

    conf = tmp_path / "signaling.conf"
    conf.write_text("[limits]\nmax_message_bytes = 65536\nmax_frame_bytes = 65536\n")
    d = daemon_factory("--config", str(conf))
    old, b, old_id, b_id = raw_pair(d)
    conf.write_text("[limits]\nmax_message_bytes = 1024\nmax_frame_bytes = 1024\nmax_sdp_bytes = 1000\n")
    d.signal(signal.SIGHUP)
    wait_log(d, "reload.done")
    sdp = "x" * 900  # under the new sdp limit, but the message is over 1024 bytes with padding
    padded = json.dumps({"type": "offer", "to": b_id, "sdp": sdp, "pad": "p" * 400}).encode()
    old.send_raw(frame(TEXT, padded))
    assert b.recv() == {"type": "offer", "from": old_id, "to": b_id, "sdp": sdp}
    new = RawPeer("127.0.0.1", d.port)
    new.send_json({"type": "join", "room_id": "wire"})
    assert new.recv_json()["type"] == "peers"
    new.send_raw(frame(TEXT, padded))
    assert new.close_code() == 1009
