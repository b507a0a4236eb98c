"""The WebSocket handshake through the service tree ``makeService`` builds, in memory.

``makeService(options, reactor)`` on a ``MemoryReactorClock``: its public site is taken
from the reactor's listeners, and requests are fed to it over a ``StringTransport``. No
port, no process: a broken protocol option (such as the permessage-deflate accept
function, which once became a bound method and hung every browser's handshake) fails
here in milliseconds. docs/protocol.md, "Handshake", is what these tests hold true.
"""

from __future__ import annotations

import pytest

from memory import CHROME_EXTENSIONS, Connection, accept_key
from sscontrold import protocol as protocol_module
from sscontrold.protocol import SignalingProtocol



@pytest.fixture
def start_service(memory_daemon):
    """Build and start the daemon's service tree on a memory reactor; returns its
    public site."""
    return lambda: memory_daemon().site


@pytest.fixture
def site(start_service):
    return start_service()


@pytest.mark.parametrize("extensions", [
    CHROME_EXTENSIONS,  # Chromium, Edge
    "permessage-deflate",  # Firefox
    "permessage-deflate; client_max_window_bits; server_max_window_bits=10",
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
    "x-webkit-deflate-frame",  # old Safari
    None,
])
@pytest.mark.parametrize("path", ["/", "/ws"])
def test_every_offer_gets_101_without_the_extension(site, path, extensions):
    conn = Connection(site)
    status, headers, key = conn.handshake(path, extensions)
    assert status == "HTTP/1.1 101 Switching Protocols", (status, headers)
    assert headers["sec-websocket-accept"] == accept_key(key)
    assert "sec-websocket-extensions" not in headers  # compression is declined
    assert isinstance(conn.protocol, SignalingProtocol)


def test_a_malformed_offer_gets_a_clean_400(site):
    conn = Connection(site)
    status, headers, _ = conn.handshake(extensions="permessage-deflate; client_max_window_bits=99")
    assert status.startswith("HTTP/1.1 400 "), status
    assert not conn.transport.connected


@pytest.mark.parametrize("offer, selected", [
    ("sscontrol", "sscontrol"),
    ("json, sscontrol", "sscontrol"),  # ours, wherever it stands
    ("chat, json", "chat"),  # else the client's first: browsers fail an answer naming none
])
def test_a_subprotocol_offer_is_answered_with_one_of_its_names(site, offer, selected):
    conn = Connection(site)
    status, headers, _ = conn.handshake(protocols=offer)
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert headers["sec-websocket-protocol"] == selected


def test_no_subprotocol_offer_no_subprotocol_named(site):
    status, headers, _ = Connection(site).handshake(protocols=None)
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert "sec-websocket-protocol" not in headers


def test_join_and_relay_over_the_real_factory(site):
    """Two connections through the wiring makeService builds: join, peers, new_peer,
    a relayed offer with ``from`` set by the server, peer_left on close."""
    host, viewer = Connection(site, 40001), Connection(site, 40002)
    for conn in (host, viewer):
        assert conn.handshake()[0].endswith("101 Switching Protocols")
    host.send({"type": "join", "room_id": "r"})
    [peers] = host.received()
    assert peers["type"] == "peers" and peers["peers"] == []
    host_id = peers["peer_id"]
    viewer.send({"type": "join", "room_id": "r"})
    [peers] = viewer.received()
    assert peers["peers"] == [{"id": host_id}]
    viewer_id = peers["peer_id"]
    assert host.received() == [{"type": "new_peer", "peer_id": viewer_id}]
    viewer.send({"type": "offer", "from": "forged", "to": host_id, "sdp": "v=0"})
    assert host.received() == [{"type": "offer", "from": viewer_id, "to": host_id, "sdp": "v=0"}]
    viewer.send({"type": "nonsense"})
    [error] = viewer.received()
    assert error["type"] == "error" and error["code"]
    viewer.close(1001)
    assert viewer.transport.value()[:1] == b"\x88"  # the server answers the close
    assert not viewer.transport.connected
    assert host.received() == [{"type": "peer_left", "peer_id": viewer_id}]


@pytest.fixture
def logged_failures():
    """The failures logged meanwhile (log.failure events)."""
    from twisted.logger import globalLogPublisher

    failures = []

    def observer(event):
        if event.get("log_failure") is not None:
            failures.append(str(event["log_failure"].value))

    globalLogPublisher.addObserver(observer)
    yield failures
    globalLogPublisher.removeObserver(observer)


def test_an_exception_before_the_101_is_logged_and_answered_500(start_service, monkeypatch, logged_failures):
    """Whatever raises while the 101 is built is logged and answered: never swallowed by
    the handshake's Deferred, leaving the client to hang until its timeout."""
    def broken(offers):
        raise RuntimeError("broken accept function")

    monkeypatch.setattr(protocol_module, "decline_compression", broken)
    conn = Connection(start_service())
    status, _, _ = conn.handshake()
    assert status.startswith("HTTP/1.1 500 "), status
    assert not conn.transport.connected
    assert "broken accept function" in logged_failures


def test_an_exception_after_the_101_is_logged_and_closes_1011(site, monkeypatch, logged_failures):
    def broken(self):
        raise RuntimeError("broken onOpen")

    monkeypatch.setattr(SignalingProtocol, "onOpen", broken)
    conn = Connection(site)
    status, _, _ = conn.handshake()
    assert status == "HTTP/1.1 101 Switching Protocols"
    close = conn.transport.value()
    assert close[:1] == b"\x88" and int.from_bytes(close[2:4], "big") == 1011, close
    assert "broken onOpen" in logged_failures


def test_an_exception_while_admitting_is_logged_and_answered_a_plain_500(site, monkeypatch, logged_failures):
    """The exception's text stays in the log, never in the answer."""
    def broken(protocols):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(protocol_module, "select_subprotocol", broken)
    conn = Connection(site)
    status, _, _ = conn.handshake()
    assert status == "HTTP/1.1 500 Internal Server Error", status
    assert not conn.transport.connected
    assert "secret internals" in logged_failures
