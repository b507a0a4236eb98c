"""sd_notify, reload without drops, and the graceful drain, against the real
daemon (a datagram socket of the test's own stands in for systemd's)."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time

import pytest
from websockets.exceptions import InvalidStatus

from certs import PKI
from conftest import http_json
from sscontrold.systemd import Notifier, watchdog_interval
from test_admin import scrape, value
from wsclient import RawPeer, auth_message, connect


# twistd ends by re-raising the SIGTERM it got; systemd counts that as a clean exit.
STOPPED_CLEANLY = (0, -signal.SIGTERM)


class NotifySocket:
    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def messages(self, wait: float) -> list[str]:
        """Every datagram that arrives within ``wait`` seconds."""
        got, deadline = [], time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        return got

    def wait_for(self, needle: str, timeout: float = 10.0) -> list[str]:
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(deadline - time.monotonic())
            try:
                seen.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
            if needle in seen[-1]:
                return seen
        raise AssertionError(f"{needle!r} not notified; got {seen}")


# --- unit level: the notifier against a socket the test owns


def test_notifier_sends_to_the_given_socket(tmp_path):
    sink = NotifySocket(tmp_path / "notify")
    n = Notifier(sink.path)
    n.ready("serving: 0 connections")
    n.watchdog()
    n.reloading()
    n.stopping()
    got = sink.messages(0.2)
    assert got[0] == "READY=1\nSTATUS=serving: 0 connections"
    assert got[1] == "WATCHDOG=1"
    assert got[2].startswith("RELOADING=1\nMONOTONIC_USEC=") and got[2].endswith("STATUS=reloading")
    assert got[3] == "STOPPING=1\nSTATUS=draining"


def test_notifier_abstract_socket_and_disabled():
    name = f"@sscontrol-test-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    Notifier(name).ready("x")
    sock.settimeout(2)
    assert sock.recv(100) == b"READY=1\nSTATUS=x"
    disabled = Notifier("")
    assert not disabled.enabled
    disabled.ready("nothing happens")


def test_watchdog_interval_honours_pid():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}, pid=5) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "5"}, pid=5) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "6"}, pid=5) is None


# --- the daemon's notifications


def test_ready_status_watchdog_reload_stopping(daemon_factory, tmp_path):
    sink = NotifySocket(tmp_path / "notify")
    d = daemon_factory(env={"NOTIFY_SOCKET": sink.path, "WATCHDOG_USEC": "1000000"}, wait=False)
    seen = sink.wait_for("READY=1")
    d.wait_listening(1)  # READY=1 came after the listener was bound
    assert http_json("GET", d.admin + "/ready")[0] == 200
    ready = [m for m in seen if "READY=1" in m][0]
    assert "STATUS=serving: 0 connections, 0 rooms" in ready
    pings = [m for m in sink.messages(2.2) if m == "WATCHDOG=1"]
    assert len(pings) >= 3  # every 0.5 s: half of WATCHDOG_USEC
    d.signal(signal.SIGSTOP)  # a blocked process stops pinging
    try:
        assert [m for m in sink.messages(1.5) if m == "WATCHDOG=1"] == []
    finally:
        d.signal(signal.SIGCONT)
    assert "WATCHDOG=1" in sink.wait_for("WATCHDOG=1", 3)[-1]
    d.signal(signal.SIGHUP)
    seen = sink.wait_for("READY=1")
    assert any(m.startswith("RELOADING=1") for m in seen)
    d.signal(signal.SIGTERM)
    assert any(m.startswith("STOPPING=1") for m in sink.wait_for("STOPPING=1"))
    assert d.proc.wait(10) in STOPPED_CLEANLY


def test_watchdog_for_another_pid_is_not_pinged(daemon_factory, tmp_path):
    sink = NotifySocket(tmp_path / "notify")
    daemon_factory(env={"NOTIFY_SOCKET": sink.path, "WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, wait=False)
    sink.wait_for("READY=1")
    assert "WATCHDOG=1" not in sink.messages(1.0)


# --- reload


def leaf_serial(port: int, ctx: ssl.SSLContext) -> int:
    from cryptography import x509
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def wait_log(d, needle: str, count: int = 1, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while d.log().count(needle) < count:
        assert time.monotonic() < deadline, f"{needle!r} not logged:\n{d.log()}"
        time.sleep(0.05)


def test_reload_swaps_certificate_and_keys_without_dropping(daemon_factory, tmp_path):
    pki = PKI(tmp_path / "pki")
    chain_a, key_a, leaf_a = pki.server("a")
    chain_b, key_b, leaf_b = pki.server("b")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(chain_a.read_bytes())
    key.write_bytes(key_a.read_bytes())
    keys = tmp_path / "keys"
    keys.write_text("old-key\n")
    d = daemon_factory("--api-key-file", str(keys),
                       env={"SSCONTROL_TLS_CERT": str(cert), "SSCONTROL_TLS_KEY": str(key)}, tls=True)
    ctx = pki.client_context  # a new context per connection: client threads must not share one
    assert leaf_serial(d.port, ctx()) == leaf_a.serial_number
    a, b = connect(d.ws, ssl=ctx()), connect(d.ws, ssl=ctx())
    for p in (a, b):
        assert p.request(auth_message("old-key"))["type"] == "auth_success"
    a.join("r")
    b_id = b.join("r")["peer_id"]
    a.recv()

    # certbot renewed the certificate and the key was rotated: systemctl reload
    cert.write_bytes(chain_b.read_bytes())
    key.write_bytes(key_b.read_bytes())
    keys.write_text("new-key\n")
    d.signal(signal.SIGHUP)
    wait_log(d, "reload.done")
    assert leaf_serial(d.port, ctx()) == leaf_b.serial_number
    a.send({"type": "offer", "to": b_id, "sdp": "over the old connection"})
    assert b.recv()["sdp"] == "over the old connection"  # nothing was dropped
    c = connect(d.ws, ssl=ctx())
    assert c.request(auth_message("old-key"))["type"] == "error"
    assert c.request(auth_message("new-key"))["type"] == "auth_success"

    # a broken new configuration keeps the running one
    cert.write_text("garbage")
    d.signal(signal.SIGHUP)
    wait_log(d, "reload.failed")
    assert "tls_cert" in d.log().split("reload.failed", 1)[1].splitlines()[0]
    assert leaf_serial(d.port, ctx()) == leaf_b.serial_number
    a.send({"type": "offer", "to": b_id, "sdp": "still here"})
    assert b.recv()["sdp"] == "still here"
    assert "new-key" not in d.log() and "old-key" not in d.log()


def test_reload_applies_limits_and_keeps_connections(daemon_factory, tmp_path):
    conf = tmp_path / "signaling.conf"
    conf.write_text("[limits]\nmax_peers_per_room = 5\n")
    d = daemon_factory("--config", str(conf))
    a, b = connect(d.ws), connect(d.ws)
    a.join("r")
    b.join("r")
    a.recv()  # new_peer
    conf.write_text("[limits]\nmax_peers_per_room = 2\n")
    d.signal(signal.SIGHUP)
    wait_log(d, "reload.done")
    assert connect(d.ws).request({"type": "join", "room_id": "r"})["code"] == "room_full"
    conf.write_text("[limits]\nmax_peers_per_room = lots\n")
    d.signal(signal.SIGHUP)
    wait_log(d, "reload.failed")
    assert "max_peers_per_room" in d.log().split("reload.failed", 1)[1].splitlines()[0]
    assert connect(d.ws).request({"type": "join", "room_id": "r"})["code"] == "room_full"
    assert a.request({"type": "join", "room_id": "r"})["type"] == "peers"


def test_reload_of_a_restart_only_setting_warns_naming_it(daemon_factory, tmp_path):
    conf = tmp_path / "signaling.conf"
    conf.write_text("[auth]\nnonce_store_max = 5000\n[limits]\nmax_peers_per_room = 5\n")
    d = daemon_factory("--config", str(conf))
    # A reloadable setting changes quietly; restart-only ones are named, each reload until the restart.
    conf.write_text("[auth]\nnonce_store_max = 6000\n[limits]\nmax_peers_per_room = 4\n"
                    "[redis]\nredis_prefix = other:\n")
    for reloads in (1, 2):
        d.signal(signal.SIGHUP)
        wait_log(d, "reload.done", count=reloads)
    warned = [line for line in d.log().splitlines() if "reload.restart_needed" in line]
    assert len(warned) == 4, d.log()
    assert sum("setting=nonce_store_max" in line for line in warned) == 2
    assert sum("setting=redis_prefix" in line for line in warned) == 2
    assert all("takes effect on restart" in line for line in warned)
    assert "max_peers_per_room" not in "".join(warned)
    # log_format is reloadable: the lines after the reload are JSON
    conf.write_text("[log]\nlog_format = json\n")
    d.signal(signal.SIGHUP)
    wait_log(d, '"event":"reload.done"')
    assert json.loads(d.log().splitlines()[-1])["event"] == "reload.done"


# --- drain


def test_sigterm_drains_with_1012_and_exits_within_deadline(daemon_factory):
    # 2 connections at 1 a second: hints spread over 0-2 s
    d = daemon_factory("--drain-timeout", "3", "--drain-reconnect-rate", "1")
    polite = connect(d.ws)
    polite.join("r")
    stubborn = RawPeer("127.0.0.1", d.port)  # ignores the close frame: keeps the drain waiting
    stubborn.send_json({"type": "join", "room_id": "r"})
    stubborn.recv_json()
    polite.recv()
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    code = None
    try:
        polite.ws.recv(timeout=5)
    except Exception as e:  # ConnectionClosed
        code, reason = e.rcvd.code, e.rcvd.reason
    assert code == 1012 and "reconnect_in_ms=" in reason
    hint = int(reason.split("reconnect_in_ms=")[1])
    assert 0 <= hint <= 2000
    # while draining: not ready, and new connections are refused
    status, body = http_json("GET", d.admin + "/ready")
    assert status == 503 and body["failing"] == ["draining"]
    text = scrape(d)
    assert value(text, "sscontrol_draining") == 1
    assert value(text, "sscontrol_ready") == 0 and value(text, "sscontrol_ready_check", check="draining") == 0
    with pytest.raises(InvalidStatus) as refused:
        connect(d.ws)
    assert refused.value.response.status_code == 503
    assert d.proc.wait(10) in STOPPED_CLEANLY
    elapsed = time.monotonic() - started
    assert 2.5 < elapsed < 6, elapsed  # waited for the stubborn client up to the deadline only
    assert "drain.deadline" in d.log()


def test_drain_ends_early_when_clients_leave(daemon_factory):
    d = daemon_factory("--drain-timeout", "20")
    peers = [connect(d.ws) for _ in range(3)]
    for p in peers:
        p.join("r")
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.proc.wait(10) in STOPPED_CLEANLY
    assert time.monotonic() - started < 5
    assert "drain.done" in d.log()


# --- log lines


def test_json_log_lines_and_levels(daemon_factory):
    d = daemon_factory("--log-format", "json", "--log-level", "warn", env={"SSCONTROL_API_KEY": "k"})
    p = connect(d.ws)
    assert p.request(auth_message("k", "dev-json"))["type"] == "auth_success"
    assert p.request(auth_message("wrong", "dev-json"))["type"] == "error"
    p.close()
    time.sleep(0.3)
    records = [json.loads(line) for line in d.log().splitlines() if line.strip()]  # every line is JSON
    assert records and all({"level", "event"} <= set(r) for r in records)
    refused = [r for r in records if r["event"] == "auth.refused"]
    assert refused and refused[0]["level"] == "warn" and refused[0]["device_id"] == "dev-json"
    assert refused[0]["reason"] == "bad_token" and refused[0]["address"] == "127.0.0.1"
    # warn and above only: the accepted auth (info) is not logged
    assert not [r for r in records if r["event"] in ("auth.accepted", "connection.open")]
