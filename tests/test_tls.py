"""Native TLS: the full chain, TLS 1.2+, AEAD ciphers, ALPN http/1.1 only, and
bad certificate settings refused before binding."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess

import pytest

from certs import PKI
from conftest import TWISTD, ROOT, free_port, http
from wsclient import auth_message, connect


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_daemon(daemon_factory, pki):
    chain, key, leaf = pki.server()
    d = daemon_factory(env={"SSCONTROL_TLS_CERT": str(chain), "SSCONTROL_TLS_KEY": str(key),
                            "SSCONTROL_API_KEY": "k"}, tls=True)
    d.leaf = leaf
    return d


def handshake(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def test_wss_with_full_chain_auth_join_relay(tls_daemon, pki):
    # Each connection gets its own context (trusting only the root: it works only if the
    # chain is sent); the websockets client's reader threads must not share one.
    a = connect(tls_daemon.ws, ssl=pki.client_context())
    b = connect(tls_daemon.ws, ssl=pki.client_context())
    for p in (a, b):
        assert p.request(auth_message("k"))["type"] == "auth_success"
    a.join("r")
    b_id = b.join("r")["peer_id"]
    assert a.recv()["peer_id"] == b_id
    a.send({"type": "offer", "to": b_id, "sdp": "v=0"})
    assert b.recv()["sdp"] == "v=0"
    status, _, body = http("GET", tls_daemon.base + "/health", context=pki.client_context())
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_alpn_offers_http11_only(tls_daemon, pki):
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with handshake(tls_daemon.port, ctx) as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        assert s.getpeercert()["subject"] == ((("commonName", "localhost"),),)


def test_tls12_uses_aead_and_old_versions_are_refused(tls_daemon, pki):
    ctx = pki.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with handshake(tls_daemon.port, ctx) as s:
        assert s.version() == "TLSv1.2"
        assert "GCM" in s.cipher()[0] or "CHACHA20" in s.cipher()[0]
    # a client that offers only CBC suites gets nothing
    ctx = pki.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA")
    with pytest.raises(ssl.SSLError):
        handshake(tls_daemon.port, ctx)
    ctx = pki.client_context()
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        handshake(tls_daemon.port, ctx)
    ctx = pki.client_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with handshake(tls_daemon.port, ctx) as s:
        assert s.version() == "TLSv1.3"


def run_refused(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SSCONTROL_", "SIGNALING_"))}
    full_env.update(env or {})
    full_env.setdefault("SSCONTROL_CONFIG", os.devnull)
    port_flag = [] if "SIGNALING_PORT" in full_env else ["--port", str(port)]
    result = subprocess.run([TWISTD, "--nodaemon", "--pidfile=", "sscontrol-signaling", "--host", "127.0.0.1",
                             *port_flag, "--admin-enabled", "false", *args],
                            capture_output=True, text=True, timeout=30, env=full_env, cwd=str(ROOT))
    # nothing was ever bound on the port
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    return result


def test_bad_certificate_settings_exit_before_binding(pki, tmp_path):
    chain, key, _ = pki.server("a")
    _, other_key, _ = pki.server("b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        ({"SSCONTROL_TLS_CERT": str(chain)}, "tls_cert", "tls_key must be set too"),
        ({"SSCONTROL_TLS_CERT": str(tmp_path / "missing.pem"), "SSCONTROL_TLS_KEY": str(key)}, "tls_cert",
         "cannot read"),
        ({"SSCONTROL_TLS_CERT": str(garbage), "SSCONTROL_TLS_KEY": str(key)}, "tls_cert", "no PEM certificate"),
        ({"SSCONTROL_TLS_CERT": str(chain), "SSCONTROL_TLS_KEY": str(garbage)}, "tls_key", "no readable PEM"),
        ({"SSCONTROL_TLS_CERT": str(chain), "SSCONTROL_TLS_KEY": str(other_key)}, "tls_key", "does not match"),
    ]
    for env, key_name, words in cases:
        result = run_refused(env=env)
        assert result.returncode != 0
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert key_name in lines[0] and words in lines[0], lines[0]
        assert "Traceback" not in lines[0]


# --- session resumption (issue 16): a client that comes back skips the full handshake

def resumed(port: int, ctx: ssl.SSLContext, session=None) -> tuple[bool, ssl.SSLSession]:
    """One connection (a GET /health answered, so a TLS 1.3 ticket has arrived):
    whether it resumed ``session``, and the session to resume next time."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data[:100]
            return s.session_reused, s.session


@pytest.mark.parametrize("version, tickets", [
    (ssl.TLSVersion.TLSv1_3, True),   # TLS 1.3 tickets
    (ssl.TLSVersion.TLSv1_2, True),   # TLS 1.2 session tickets
    (ssl.TLSVersion.TLSv1_2, False),  # TLS 1.2 session ids (a client that refuses tickets)
])
def test_sessions_resume(tls_daemon, pki, version, tickets):
    ctx = pki.client_context()
    ctx.minimum_version = ctx.maximum_version = version
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    reused, session = resumed(tls_daemon.port, ctx)
    assert not reused
    for _ in range(3):  # every reconnect resumes (a TLS 1.3 ticket is single-use: each brings a new one)
        reused, session = resumed(tls_daemon.port, ctx, session)
        assert reused
    # a resumed connection carries the WebSocket signaling as any other
    a = connect(tls_daemon.ws, ssl=ctx)
    assert a.request(auth_message("k"))["type"] == "auth_success"


def test_reload_keeps_tickets_and_a_renewed_certificate_rotates_them(daemon_factory, pki, tmp_path):
    import shutil
    import signal
    import time
    chain, key, _ = pki.server("resume-a")
    chain_b, key_b, _ = pki.server("resume-b")
    live_cert, live_key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(chain, live_cert)
    shutil.copy(key, live_key)
    d = daemon_factory(env={"SSCONTROL_TLS_CERT": str(live_cert), "SSCONTROL_TLS_KEY": str(live_key)}, tls=True)
    ctx = pki.client_context()
    _, session = resumed(d.port, ctx)

    def after_reload(marker: str) -> None:
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while d.log().count(marker) < after_reload.count + 1:
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.05)
        after_reload.count += 1
    after_reload.count = d.log().count("reload.done")

    after_reload("reload.done")  # same files: the context and its ticket keys stay
    reused, session = resumed(d.port, ctx, session)
    assert reused
    shutil.copy(chain_b, live_cert)  # a renewed certificate: a new context, new keys
    shutil.copy(key_b, live_key)
    after_reload("reload.done")
    reused, session = resumed(d.port, ctx, session)
    assert not reused  # the old ticket falls back to a full handshake, not to a failure
    assert resumed(d.port, ctx, session)[0]
