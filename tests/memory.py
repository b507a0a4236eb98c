"""The daemon in memory: ``makeService(options)`` on a ``MemoryReactorClock``.

No port, no process, no wall clock. The public and admin sites are taken from the
reactor's listeners; each connection is a ``StringTransport`` fed bytes by the test,
and time moves only when the test advances the clock. Autobahn's timers (handshake
and close timeouts, auto-ping) go through txaio's loop, which the harness points at
the same clock, so they fire on ``advance`` too.

What stays for the process tests: the outgoing budget (``max_queued_bytes``) measures
a real TCP socket's write buffer, and a StringTransport has none; TLS, Redis, systemd
and signals are real-process matters as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import time
import uuid

import pytest
import txaio
import txaio.tx
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection

from sscontrold import tap

from wsclient import RawPeer

TEXT, CONTINUATION, BINARY, CLOSE, PING, PONG = 0x1, 0x0, 0x2, 0x8, 0x9, 0xA
CHROME_EXTENSIONS = "permessage-deflate; client_max_window_bits"
MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


frame = RawPeer.frame  # a client frame as bytes: the socket client's own


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Server frames (unmasked, final) as (opcode, payload)."""
    frames = []
    while data:
        assert data[0] & 0x80 and not data[0] & 0x70, data[:2]  # final, no RSV bit
        assert not data[1] & 0x80, "a server frame must not be masked"
        n, head = data[1] & 0x7F, 2
        if n == 126:
            n, head = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, head = int.from_bytes(data[2:10], "big"), 10
        assert len(data) >= head + n, "truncated frame"
        frames.append((data[0] & 0x0F, data[head:head + n]))
        data = data[head + n:]
    return frames


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + MAGIC).digest()).decode()


def auth_message(key: str, device_id: str = "dev-1", timestamp: int | None = None,
                 nonce: str | None = None, **extra) -> dict:
    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or uuid.uuid4().hex
    token = hmac.new(key.encode(), f"{device_id}:{timestamp}:{nonce}".encode(), hashlib.sha256).hexdigest()
    return {"type": "auth", "device_id": device_id, "timestamp": timestamp, "nonce": nonce,
            "token": token, **extra}


class TCPLikeTransport(StringTransportWithDisconnection):
    """A StringTransport that, like ``tcp.Server`` and the TLS wrapper, lets
    ``unregisterProducer`` be called with no producer registered: Autobahn does so on
    every close."""

    def unregisterProducer(self):
        self.producer = self.streaming = None


class Connection:
    """One HTTP connection to a site, over a StringTransport."""

    def __init__(self, site, port: int = 40000, host: str = "127.0.0.1"):
        self.transport = TCPLikeTransport(peerAddress=IPv4Address("TCP", host, port))
        self.channel = site.buildProtocol(self.transport.getPeer())
        self.transport.protocol = self.channel
        self.channel.makeConnection(self.transport)
        self.protocol = None
        self.closed_with: tuple[int, str] | None = None

    # --- HTTP

    def request(self, raw: bytes) -> bytes:
        self.channel.dataReceived(raw)
        data = self.transport.value()
        self.transport.clear()
        return data

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

    # --- WebSocket, client side

    def send_raw(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.send_raw(frame(opcode, payload, fin))

    def send(self, message: dict) -> None:
        self.send_frame(TEXT, json.dumps(message).encode())

    def close(self, code: int = 1000) -> None:
        """A clean close, as a browser closing its tab: close frame, then the server drops TCP."""
        self.send_frame(CLOSE, code.to_bytes(2, "big"))

    def frames(self) -> list[tuple[int, bytes]]:
        """Every frame written to this connection since the last call; a close frame is
        remembered in ``closed_with``."""
        data = self.transport.value()
        self.transport.clear()
        frames = parse_frames(data)
        for opcode, payload in frames:
            if opcode == CLOSE:
                self.closed_with = (int.from_bytes(payload[:2], "big"), payload[2:].decode())
        return frames

    def received(self) -> list[dict]:
        """The text messages written to this connection since the last call (control
        frames are dropped; a close frame is remembered in ``closed_with``)."""
        return [json.loads(p) for op, p in self.frames() if op == TEXT]

    def recv(self) -> dict:
        """Exactly one message is waiting: it."""
        messages = self.received()
        assert len(messages) == 1, messages
        return messages[0]

    def error(self) -> dict:
        """Exactly one message is waiting and it is an error."""
        message = self.recv()
        assert message["type"] == "error", message
        return message

    def close_code(self) -> int | None:
        self.frames()
        return self.closed_with[0] if self.closed_with else None

    @property
    def connected(self) -> bool:
        return self.transport.connected

    def join(self, room: str = "room") -> dict:
        self.send({"type": "join", "room_id": room})
        peers = self.recv()
        assert peers["type"] == "peers", peers
        return peers


class MemoryDaemon:
    """``makeService(options)`` built and started on a memory reactor."""

    def __init__(self, args: list[str], reactor: MemoryReactorClock):
        options = tap.Options()
        options.parseOptions(["--host", "127.0.0.1", "--port", "8443", "--admin-port", "9464", *args])
        self.options = options
        self.settings = options.settings
        self.reactor = reactor
        self.top = tap.makeService(options, reactor=reactor)
        self.top.startService()
        self.sites = {port: factory for port, factory, _backlog, _interface in reactor.tcpServers}
        self.site = self.sites[self.settings.port]
        self.node = self.top.node
        self._ports = iter(range(40000, 60000))

    @property
    def admin_site(self):
        return self.sites[self.settings.admin_port]

    def connect(self, host: str = "127.0.0.1", **handshake) -> Connection:
        """An open WebSocket connection (the 101 checked)."""
        conn = Connection(self.site, next(self._ports), host)
        status, _, _ = conn.handshake(**handshake)
        assert status == "HTTP/1.1 101 Switching Protocols", status
        return conn

    def pair(self, room: str = "room") -> tuple[Connection, Connection, str, str]:
        """Two peers joined to one room, the first told of the second."""
        a, b = self.connect(), self.connect()
        a_id = a.join(room)["peer_id"]
        b_id = b.join(room)["peer_id"]
        assert a.recv() == {"type": "new_peer", "peer_id": b_id}
        return a, b, a_id, b_id

    def auth(self, key: str, device_id: str = "dev-1", age: float = 0, **extra) -> dict:
        """An auth message signed with ``key``, its timestamp ``age`` seconds old by
        this daemon's clock."""
        return auth_message(key, device_id, int(self.reactor.seconds() - age), **extra)

    def stop(self):
        """Stop the service tree (it drains first); returns its Deferred."""
        return self.top.stopService()

    def advance(self, seconds: float, step: float = 0.1) -> None:
        """Move the clock on in small steps (timers that schedule timers fire too)."""
        while seconds > 1e-9:
            dt = min(step, seconds)
            self.reactor.advance(dt)
            seconds -= dt


@pytest.fixture
def memory_daemon(tmp_path, monkeypatch):
    """Start daemons in memory with the given flags and environment (the machine's own
    SSCONTROL_*/SIGNALING_* variables and configuration file are ignored); each is
    stopped at the end."""
    for name in list(os.environ):
        if name.startswith(("SSCONTROL_", "SIGNALING_", "TURN_PASSWORD")) and name != "SSCONTROL_SHORTCUTS":
            monkeypatch.delenv(name)
    empty = tmp_path / "empty.conf"
    empty.touch()
    monkeypatch.setenv("SSCONTROL_CONFIG", str(empty))
    started: list[MemoryDaemon] = []

    def start(*args: str, env: dict[str, str] | None = None) -> MemoryDaemon:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        reactor = MemoryReactorClock()
        reactor.advance(time.time())  # auth timestamps are Unix seconds
        monkeypatch.setattr(txaio.tx.config, "loop", reactor)  # Autobahn's timers on this clock
        daemon = MemoryDaemon(list(args), reactor)
        started.append(daemon)
        return daemon

    # Stopping drains, and the drain sets SIGTERM/SIGINT handlers of its own: keep pytest's.
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield start
        for daemon in started:
            if daemon.top.running:
                daemon.top.stopService()
                daemon.advance(daemon.settings.drain_timeout + 6, step=1)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@pytest.fixture
def mem(memory_daemon) -> MemoryDaemon:
    """A daemon in memory with auth off (the development default)."""
    return memory_daemon()
