"""The service as operators run it, under the container's real systemd: ready on
start, audit events in the journal and no secret in it, reload with a renewed
certificate without dropping anyone, the watchdog restarting a hung daemon, and
a stop that tells clients and ends within the deadline."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from certs import PKI
from wsclient import RawPeer, auth_message, connect

from . import sysharness
from .sysharness import CREDENTIALS_DIR, UNIT

pytestmark = pytest.mark.system

API_KEY = "systest-api-key-7c1d9e0b"
DROPIN_DIR = "/etc/systemd/system/sscontrol-signaling.service.d"


def ws_url(c, tls=False):
    return f"{'wss' if tls else 'ws'}://127.0.0.1:{c.ports['port']}/ws"


def restart(c):
    c.ctl("daemon-reload")
    c.ctl("restart", UNIT)  # Type=notify: returns once READY=1 came
    assert c.is_active() == "active"


@pytest.fixture
def keyed_service(installed_service):
    """The service with an API key handed in as a systemd credential."""
    c = installed_service
    c.write_file(f"{CREDENTIALS_DIR}/api_keys", API_KEY + "\n", mode=0o600)
    restart(c)
    yield c
    c.path(f"{CREDENTIALS_DIR}/api_keys").unlink(missing_ok=True)
    restart(c)


def test_start_is_ready_and_clients_work_and_the_journal_audits_without_secrets(keyed_service):
    c = keyed_service
    cursor = c.journal_cursor()
    c.ctl("stop", UNIT)
    c.ctl("start", UNIT)
    # systemctl start returned: the daemon is already serving, no retry needed
    assert c.is_active() == "active"
    status, body = c.health(timeout=2)
    assert status == 200 and body["status"] == "ok"
    ready = json.loads(sysharness.http_get(c.url("/ready", admin=True))[2])
    assert ready["status"] == "ready"

    host, viewer = connect(ws_url(c)), connect(ws_url(c))
    host_auth = auth_message(API_KEY, "host-device-1")
    assert host.request(host_auth)["type"] == "auth_success"
    assert viewer.request(auth_message(API_KEY, "viewer-device-2"))["type"] == "auth_success"
    assert viewer.request(auth_message("not-the-key", "intruder-3"))["type"] == "error"
    host.join("systest-room")
    viewer_id = viewer.join("systest-room")["peer_id"]
    host.recv()
    host.send({"type": "offer", "to": viewer_id, "sdp": "v=0"})
    assert viewer.recv()["sdp"] == "v=0"
    host.close()
    viewer.close()

    def audited():
        log = c.journal(cursor=cursor)
        return "connection.close" in log and "room.leave" in log and log

    log = sysharness.wait_for(audited, timeout=10)
    assert "listener.ready" in log and "daemon.ready" in log
    for event in ("auth.accepted", "auth.refused", "connection.open", "room.join", "room.leave",
                  "connection.close"):
        assert event in log, event
    accepted = [line for line in log.splitlines() if "auth.accepted" in line]
    assert any("device_id=host-device-1" in line and "address=127.0.0.1" in line for line in accepted)
    assert any("reason=bad_token" in line and "device_id=intruder-3" in line for line in log.splitlines())
    # journald took the level from each line's <N> prefix
    entries = [json.loads(line) for line in c.journal(UNIT, "-o", "json", cursor=cursor).splitlines()]
    priority = {e["MESSAGE"].split()[1]: e["PRIORITY"] for e in entries
                if isinstance(e.get("MESSAGE"), str) and e["MESSAGE"].startswith(("info ", "warn "))}
    assert priority["auth.refused"] == "4" and priority["auth.accepted"] == "6", priority
    whole_journal = c.run(["journalctl", "--no-pager", "-o", "verbose"]).stdout
    for secret in (API_KEY, host_auth["token"], "not-the-key"):
        assert secret not in whole_journal


@pytest.fixture
def tls_service(installed_service, tmp_path):
    c = installed_service
    pki = PKI(tmp_path / "pki")
    c.run(["install", "-d", "-m", "0750", "-g", "sscontrol-signaling", "/etc/sscontrol/tls"])
    c.set_unit_environment(SSCONTROL_TLS_CERT="/etc/sscontrol/tls/chain.pem",
                           SSCONTROL_TLS_KEY="/etc/sscontrol/tls/key.pem")

    def deploy(label):
        chain, key, leaf = pki.server(label)
        for src, name in ((chain, "chain.pem"), (key, "key.pem")):
            c.write_file(f"/etc/sscontrol/tls/{name}", src.read_text(), mode=0o640)
            c.run(["chgrp", "sscontrol-signaling", f"/etc/sscontrol/tls/{name}"])
        return leaf

    c.deploy_certificate = deploy
    c.pki = pki
    yield c
    env = c._dropin_environment()
    for name in ("SSCONTROL_TLS_CERT", "SSCONTROL_TLS_KEY"):
        env.pop(name, None)
    c.write_file(sysharness.TEST_DROPIN, "[Service]\n" + "".join(f'Environment="{k}={v}"\n' for k, v in env.items()))
    restart(c)
    shutil.rmtree(c.path("/etc/sscontrol/tls"), ignore_errors=True)


def served_serial(c, ctx) -> int:
    import socket

    from cryptography import x509
    with socket.create_connection(("127.0.0.1", c.ports["port"])) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def test_reload_with_a_new_certificate_keeps_connections(tls_service):
    c = tls_service
    first = c.deploy_certificate("first")
    restart(c)
    ctx = c.pki.client_context  # a new context per connection: client threads must not share one
    assert served_serial(c, ctx()) == first.serial_number
    a, b = connect(ws_url(c, tls=True), ssl=ctx()), connect(ws_url(c, tls=True), ssl=ctx())
    a.join("r")
    b_id = b.join("r")["peer_id"]
    a.recv()
    pid = c.main_pid()
    cursor = c.journal_cursor()

    renewed = c.deploy_certificate("renewed")  # what certbot's deploy hook does, then:
    c.ctl("reload", UNIT)
    sysharness.wait_for(lambda: "reload.done" in c.journal(cursor=cursor), timeout=10)
    assert c.main_pid() == pid and c.is_active() == "active"
    assert served_serial(c, ctx()) == renewed.serial_number  # new connections: the new certificate
    a.send({"type": "offer", "to": b_id, "sdp": "still connected"})  # old ones: untouched
    assert b.recv()["sdp"] == "still connected"
    assert b.nothing(0.3) and a.nothing(0.3)


def test_watchdog_restarts_a_hung_daemon(installed_service):
    c = installed_service
    c.write_file(f"{DROPIN_DIR}/60-systest-watchdog.conf", "[Service]\nWatchdogSec=3\nRestartSec=1\n")
    try:
        restart(c)
        hung = c.main_pid()
        cursor = c.journal_cursor()
        c.run(["kill", "-STOP", str(hung)])
        sysharness.wait_for(lambda: c.main_pid() not in (0, hung) and c.is_active() == "active", timeout=30)
        assert c.health()[0] == 200
        log = c.journal(UNIT, cursor=cursor)
        assert "Watchdog timeout" in log, log[-3000:]
    finally:
        c.path(f"{DROPIN_DIR}/60-systest-watchdog.conf").unlink(missing_ok=True)
        restart(c)


def test_stop_tells_clients_and_ends_within_the_deadline(installed_service):
    c = installed_service
    c.write_file(f"{DROPIN_DIR}/60-systest-drain.conf", '[Service]\nEnvironment="SSCONTROL_DRAIN_TIMEOUT=4"\n')
    try:
        restart(c)
        polite = connect(ws_url(c))
        polite.join("r")
        stubborn = RawPeer("127.0.0.1", c.ports["port"])  # never answers the close frame
        stubborn.send_json({"type": "join", "room_id": "r"})
        stubborn.recv_json()
        polite.recv()
        cursor = c.journal_cursor()
        started = time.monotonic()
        c.ctl("stop", UNIT)
        took = time.monotonic() - started
        assert polite.closed_with(timeout=2) == 1012
        assert 3 < took < 10, took  # waited for the stubborn client up to drain_timeout, no longer
        assert c.is_active() == "inactive"
        log = c.journal(cursor=cursor)
        assert "drain.start" in log and "drain.deadline" in log
        assert "Failed with result" not in log  # a clean stop, not a timeout or a kill
    finally:
        c.path(f"{DROPIN_DIR}/60-systest-drain.conf").unlink(missing_ok=True)
        restart(c)
