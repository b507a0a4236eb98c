"""The WebSocket handshake through the service tree ``makeService`` builds, in memory.

``makeService(options, reactor)`` on a ``MemoryReactorClock``: its public site is taken
from the reactor's listeners, and requests are fed to it over a ``StringTransport``. No
port, no process: a broken protocol option (such as the permessage-deflate accept
function, which once became a bound method and hung every browser's handshake) fails
here in milliseconds. docs/protocol.md, "Handshake", is what these tests hold true.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection

from sscontrold import protocol as protocol_module
from sscontrold import tap
from sscontrold.protocol import SignalingProtocol

CHROME_EXTENSIONS = "permessage-deflate; client_max_window_bits"
MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


@pytest.fixture
def start_service(tmp_path, monkeypatch):
    """Build and start the daemon's service tree on a memory reactor; returns its
    public site. Stopped at the end."""
    for name in list(os.environ):
        if name.startswith(("SSCONTROL_", "SIGNALING_")) and name != "SSCONTROL_SHORTCUTS":
            monkeypatch.delenv(name)
    empty = tmp_path / "empty.conf"
    empty.touch()
    monkeypatch.setenv("SSCONTROL_CONFIG", str(empty))
    started = []

    def start():
        options = tap.Options()
        options.parseOptions(["--host", "127.0.0.1", "--port", "8443", "--admin-port", "9464"])
        reactor = MemoryReactorClock()
        top = tap.makeService(options, reactor=reactor)
        top.startService()
        started.append(top)
        sites = {port: factory for port, factory, _backlog, _interface in reactor.tcpServers}
        assert set(sites) == {8443, 9464}
        return sites[8443]

    yield start
    for top in started:
        top.stopService()


@pytest.fixture
def site(start_service):
    return start_service()


class TCPLikeTransport(StringTransportWithDisconnection):
    """A StringTransport that, like ``tcp.Server`` and the TLS wrapper, lets
    ``unregisterProducer`` be called with no producer registered: Autobahn does so on
    every close."""

    def unregisterProducer(self):
        self.producer = self.streaming = None


class Connection:
    """One HTTP connection to the site, over a StringTransport."""

    def __init__(self, site, port: int = 40000):
        self.transport = TCPLikeTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.channel = site.buildProtocol(self.transport.getPeer())
        self.transport.protocol = self.channel
        self.channel.makeConnection(self.transport)
        self.protocol = None

    def handshake(self, path: str = "/ws", extensions: str | None = CHROME_EXTENSIONS,
                  protocols: str | None = None, extra: str = "") -> tuple[str, dict[str, str], str]:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1:8443", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 "Origin: http://127.0.0.1:8443"]
        if extensions is not None:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        if protocols is not None:
            lines.append(f"Sec-WebSocket-Protocol: {protocols}")
        request = "\r\n".join(lines) + "\r\n" + extra + "\r\n"
        self.channel.dataReceived(request.encode())
        self.protocol = self.transport.protocol  # Autobahn takes the transport over on 101
        head, _, rest = self.transport.value().partition(b"\r\n\r\n")
        status, *header_lines = head.decode().split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.transport.clear()
        self.transport.io.write(rest)  # what followed the head (frames) stays to be read
        return status, headers, key

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """One final, masked client frame."""
        mask = os.urandom(4)
        assert len(payload) < 126
        frame = bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(
            b ^ mask[i % 4] for i, b in enumerate(payload))
        self.protocol.dataReceived(frame)

    def send(self, message: dict) -> None:
        self.send_frame(0x1, json.dumps(message).encode())

    def close(self, code: int = 1000) -> None:
        """A clean close, as a browser closing its tab: close frame, then the server drops TCP."""
        self.send_frame(0x8, code.to_bytes(2, "big"))

    def received(self) -> list[dict]:
        """The text frames written to this connection since the last call."""
        data, messages = self.transport.value(), []
        self.transport.clear()
        while data:
            assert data[0] == 0x81, data  # final, unmasked text frames
            n, head = data[1], 2
            if n == 126:
                n, head = int.from_bytes(data[2:4], "big"), 4
            messages.append(json.loads(data[head:head + n]))
            data = data[head + n:]
        return messages


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + MAGIC).digest()).decode()


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
