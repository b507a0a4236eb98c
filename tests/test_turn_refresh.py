"""TURN credentials pushed over signaling before they expire (docs/turn-refresh.md):
in memory with a fake clock, then against the real daemon, a reload's secret rotation
and a real coturn. The browser proof (a call that outlives its first credentials,
ICE restart included) is tests/browser/test_turn_refresh_call.py."""

from __future__ import annotations

import signal
import time

from twisted.internet.task import Clock

from coturn import allocate
from sscontrold.logging import Events
from sscontrold.node import SignalingNode
from sscontrold.turn import REFRESH_TIMER, refresh_delay, turn_password, websocket_turn
from test_turn import issued, settings_from
from wsclient import connect

URIS = "turn:127.0.0.1:3478?transport=udp"


class Pipe:
    """The domain's Connection: what the client was sent, and whether it was closed."""

    def __init__(self):
        self.sent: list[dict] = []
        self.closed = None

    def send(self, message: dict) -> None:
        self.sent.append(message)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def memory_node(tmp_path, secrets="first", ttl=100):
    clock = Clock()
    clock.advance(1_800_000_000)
    node = SignalingNode(settings_from(tmp_path, SSCONTROL_TURN_URIS=URIS, SSCONTROL_TURN_SECRETS=secrets,
                                       SSCONTROL_TURN_TTL=str(ttl), SSCONTROL_TURN_ALLOW_ANONYMOUS="true"),
                         clock, Events())
    node.extensions["turn"] = websocket_turn(node)
    return node, clock


def test_refresh_delay_is_80_percent_with_jitter():
    assert refresh_delay(100, rand=lambda: 0.5) == 80
    assert refresh_delay(100, rand=lambda: 0.0) == 75
    assert abs(refresh_delay(100, rand=lambda: 1.0) - 85) < 1e-9
    spread = {round(refresh_delay(1000), 3) for _ in range(50)}
    assert len(spread) > 40 and all(750 <= d <= 850 for d in spread)


def test_a_client_that_asked_gets_fresh_credentials_before_expiry_and_a_rotation_applies(tmp_path):
    node, clock = memory_node(tmp_path, ttl=100)
    asked, silent = Pipe(), Pipe()
    client = node.new_client(asked, "192.0.2.1")
    node.new_client(silent, "192.0.2.2")
    client.receive(b'{"type": "turn", "username": "viewer"}')
    [first] = asked.sent
    assert first["type"] == "turn_credentials" and "refresh" not in first
    assert first["username"] == "1800000100:viewer"

    clock.advance(74.9)
    assert len(asked.sent) == 1  # not before 75 % of the TTL
    before = issued("refresh")
    clock.advance(10.2)  # 85 %: the jittered push is due by now, once
    assert len(asked.sent) == 2
    pushed = asked.sent[1]
    assert pushed["type"] == "turn_credentials" and pushed["refresh"] is True
    expiry = int(pushed["username"].split(":")[0])
    assert 1800000175 <= expiry <= 1800000186 and pushed["username"].endswith(":viewer")
    assert pushed["password"] == turn_password("first", pushed["username"])
    assert pushed["iceServers"] == [{"urls": [URIS], "username": pushed["username"],
                                     "credential": pushed["password"]}]
    assert issued("refresh") == before + 1

    # systemctl reload with a new first secret and a new TTL: the next push uses both
    node.apply(settings_from(tmp_path, SSCONTROL_TURN_URIS=URIS, SSCONTROL_TURN_SECRETS="second first",
                             SSCONTROL_TURN_TTL="200", SSCONTROL_TURN_ALLOW_ANONYMOUS="true"))
    clock.advance(85)
    assert len(asked.sent) == 3
    rotated = asked.sent[2]
    assert rotated["password"] == turn_password("second", rotated["username"]) and rotated["ttl"] == 200
    clock.advance(150)  # 75 % of the new TTL at least
    assert len(asked.sent) == 3
    clock.advance(25)
    assert len(asked.sent) == 4
    assert silent.sent == []  # never asked: never pushed to


def test_asking_again_restarts_the_timer_and_a_closed_connection_holds_none(tmp_path):
    node, clock = memory_node(tmp_path, ttl=100)
    pipe = Pipe()
    client = node.new_client(pipe, "192.0.2.1")
    client.receive(b'{"type": "turn"}')
    clock.advance(70)
    client.receive(b'{"type": "turn"}')  # one timer, from this answer on
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(70)
    assert len(pipe.sent) == 2
    clock.advance(20)
    assert len(pipe.sent) == 3 and pipe.sent[2]["refresh"] is True
    client.disconnected()
    assert clock.getDelayedCalls() == []  # the closed connection holds no timer
    clock.advance(1000)
    assert len(pipe.sent) == 3
    assert REFRESH_TIMER not in client._timers


def test_turn_switched_off_by_a_reload_stops_the_pushes(tmp_path):
    node, clock = memory_node(tmp_path, ttl=100)
    pipe = Pipe()
    client = node.new_client(pipe, "192.0.2.1")
    client.receive(b'{"type": "turn"}')
    node.apply(settings_from(tmp_path))
    clock.advance(100)
    assert len(pipe.sent) == 1 and clock.getDelayedCalls() == []
    assert pipe.closed is None  # the connection itself goes on


def test_daemon_pushes_with_the_rotated_secret_and_coturn_accepts_them(daemon_factory, coturn_factory, tmp_path):
    turn = coturn_factory("rotated-secret-2", "old-secret-1")
    secret_file = tmp_path / "turn_secrets"
    secret_file.write_text("old-secret-1\n")
    d = daemon_factory("--turn-ttl", "10", env={"SSCONTROL_TURN_URIS": turn.uri,
                                                "SSCONTROL_TURN_SECRET_FILE": str(secret_file),
                                                "SSCONTROL_TURN_ALLOW_ANONYMOUS": "true"})
    asked, silent = connect(d.ws), connect(d.ws)
    asked_at = time.monotonic()
    first = asked.request({"type": "turn"})
    assert first["ttl"] == 10 and first["password"] == turn_password("old-secret-1", first["username"])
    secret_file.write_text("rotated-secret-2\nold-secret-1\n")
    d.signal(signal.SIGHUP)  # systemctl reload
    pushed = asked.recv(timeout=12)
    waited = time.monotonic() - asked_at
    assert 7 <= waited <= 10, waited  # at 75-85 % of the 10 s TTL, before the first set expired
    assert pushed["type"] == "turn_credentials" and pushed["refresh"] is True
    assert pushed["password"] == turn_password("rotated-secret-2", pushed["username"])
    assert int(pushed["username"].split(":")[0]) > int(first["username"].split(":")[0])
    assert silent.nothing(0.2)  # the client that never asked got nothing new
    assert allocate(turn, pushed["username"], pushed["password"]).ok
    assert "rotated-secret-2" not in d.log() and "old-secret-1" not in d.log()
    asked.close()
    silent.close()
