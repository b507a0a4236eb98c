"""The Autobahn adapter: WebSocket frames <-> the domain's ``Client``.

Thin on purpose: admission at the handshake, bytes in, dicts out, and a guard
around every callback so that nothing a peer sends can raise into Autobahn.

The hot path (see docs/performance.md): a complete, masked, single-frame text
message of at most the configured sizes is read here, straight from the bytes
Twisted hands over; anything else (handshake, control frames, fragments, binary,
partial or oversize frames, any protocol violation) goes to Autobahn, which
keeps its RFC 6455 checks and close codes. Frames to send are built here too,
and held until the read that caused them ends: one write per recipient per read.
What this takes of Autobahn's and Twisted's internals is in sscontrold/shortcuts/ (with
the shortcuts off, every frame goes to Autobahn and every write to ``transport.write``).
"""

from __future__ import annotations

from time import perf_counter

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from prometheus_client import Counter
from twisted.internet import abstract
from twisted.logger import Logger

from .domain.client import CLOSE_POLICY_VIOLATION, RELAYED, Client
from .metrics import ERRORS, LatencyHistogram, LiveGauge, total_of
from .shortcuts import autobahn as ab_shortcuts
from .shortcuts import twisted_tcp
from .web import REQUESTS, client_address, endpoint_label

try:  # a C masker: ~0.4 us for an ICE-sized frame, against ~0.9 us in pure Python
    from wsaccel.xormask import XorMaskerSimple

    def unmask(mask: bytes, payload: bytes) -> bytes:
        return XorMaskerSimple(mask).process(payload)
except ImportError:  # pragma: no cover - wsaccel is a pinned dependency
    def unmask(mask: bytes, payload: bytes) -> bytes:
        n = len(payload)
        key = (mask * (n // 4 + 1))[:n]
        return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame (server to client)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload

log = Logger(namespace="sscontrold.protocol")

CLOSE_INTERNAL_ERROR = 1011
RESUMABLE_CLOSE_CODES = frozenset({1012})  # service restart: reconnect and resume

ACTIVE = LiveGauge("sscontrol_active_connections", "Open WebSocket connections.", total_of)
QUEUE_OVERFLOWS = Counter("sscontrol_queue_overflows_total", "WebSocket peers closed (1008) because more than "
                          "max_queued_bytes waited to be sent to them: they did not read.")
RELAY_LATENCY = LatencyHistogram("sscontrol_relay_latency_seconds", "From a relayed message read to its copy "
                                 "written to the recipient's transport.",
                                 buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1))


OPEN = WebSocketServerProtocol.STATE_OPEN
CONNECTING = WebSocketServerProtocol.STATE_CONNECTING


SUBPROTOCOL = "sscontrol"


def select_subprotocol(offered: list[str]) -> str | None:
    """The subprotocol the 101 names: ``sscontrol`` when offered, else the client's
    first offer, else none.

    The daemon speaks one protocol whatever a client calls it. Browsers fail a
    handshake whose answer names none of the subprotocols they offered, so an offer
    is always answered with one of its own names.
    """
    if not offered:
        return None
    return SUBPROTOCOL if SUBPROTOCOL in offered else offered[0]


def decline_compression(offers) -> None:
    """Accept no permessage-deflate offer.

    Signaling messages are small JSON; compressing them would cost a zlib
    context per connection (tens of KiB), CPU on every frame, and a
    decompression bomb to guard against, for little gain.
    """
    return None


def socket_transport(transport):
    """The TCP transport under ``transport`` (under TLS, the one TLS writes to)."""
    while transport is not None and not isinstance(transport, abstract.FileDescriptor):
        transport = getattr(transport, "transport", None)
    return transport


class SignalingProtocol(WebSocketServerProtocol):
    client: Client | None = None
    address: str | None = None
    _counted = False
    _socket = None  # the TCP transport whose write buffer the outgoing budget measures

    # --- reading

    def dataReceived(self, data: bytes) -> None:
        batch = self.factory.batch
        outer = batch.begin()
        try:
            if ab_shortcuts.at_frame_border(self):
                data = self._read_messages(data)
            if data:
                batch.flush_one(self)  # what we owe this peer goes out before anything Autobahn writes
                ab_shortcuts.feed(self, data)
        finally:
            if outer:
                batch.end()

    def _read_messages(self, data: bytes) -> bytes:
        """Handle the whole single-frame text messages at the start of ``data``;
        return the rest, from the first frame Autobahn must see."""
        pos, end, limit = 0, len(data), self.factory.fast_limit
        while end - pos >= 6:
            if data[pos] != 0x81:  # FIN, no RSV bit, text
                break
            length = data[pos + 1] ^ 0x80  # the MASK bit must be set: then length < 128
            if length > 125:
                if length != 126 or end - pos < 8:
                    break  # unmasked, 64-bit length, or header incomplete: Autobahn
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
                if length < 126:
                    break  # not the minimal length encoding: Autobahn fails it
                head = pos + 4
            else:
                head = pos + 2
            start = head + 4
            stop = start + length
            if length > limit or stop > end:
                break  # oversize (Autobahn closes with 1009) or incomplete (Autobahn buffers)
            pos = stop
            self.onMessage(unmask(data[head:start], data[start:stop]), False)
            if self.state != OPEN:
                break
        return data[pos:] if pos else data

    def succeedHandshake(self, res) -> None:
        # Autobahn runs this as a Deferred callback: an exception here (from an
        # option, from onOpen) would be lost and the socket left to hang until the
        # handshake timeout. Log it, and answer 500 or close with 1011.
        try:
            super().succeedHandshake(res)
        except Exception:
            log.failure("internal error completing the WebSocket handshake of {address}",
                        address=self.address)
            ERRORS.labels("internal_error").inc()
            if self.state == CONNECTING:
                self.failHandshake("Internal Server Error", 500)
            elif self.state == OPEN:
                self.close(CLOSE_INTERNAL_ERROR, "internal error")

    def onConnect(self, request):
        # Autobahn answers an exception here with its text in the status line: log
        # it instead, and answer a plain 500.
        try:
            return self._admit(request)
        except ConnectionDeny:
            raise
        except Exception:
            log.failure("internal error admitting the WebSocket of {address}", address=self.address)
            ERRORS.labels("internal_error").inc()
            raise ConnectionDeny(500, "Internal Server Error") from None

    def _admit(self, request):
        """Refuse (ConnectionDeny) or admit the upgrade; return the subprotocol."""
        node = self.factory.node
        endpoint = endpoint_label(request.path.encode())
        if node.draining:
            REQUESTS.labels(endpoint, "503").inc()
            raise ConnectionDeny(503, "Service Unavailable: draining")
        forwarded = request.headers.get("x-forwarded-for")
        self.address = client_address(self.transport.getPeer().host, forwarded, node.trusted_proxies)
        refused = node.connections.try_open(self.address)
        if refused is not None:
            node.events.emit("warn", "limit.connections", address=self.address, scope=refused)
            code = 503 if refused == "total" else 429
            REQUESTS.labels(endpoint, str(code)).inc()
            if refused == "total":
                raise ConnectionDeny(503, "Service Unavailable: too many connections")
            raise ConnectionDeny(429, "Too Many Requests: too many connections from your address")
        self._counted = True
        return select_subprotocol(request.protocols)

    def onOpen(self):
        node = self.factory.node
        self.client = node.new_client(self, self.address)
        self._socket = socket_transport(self.transport)
        self.factory.open_connections.add(self)
        REQUESTS.labels(endpoint_label(self.http_request_path.encode()), "101").inc()
        node.events.emit("info", "connection.open", address=self.address, peer_id=self.client.peer_id)
        # Autobahn keeps the handshake's raw text and headers for the connection's
        # life; nothing reads them once it is open (~1 KiB per idle connection).
        self.http_request_data = self.http_response_data = self.http_status_line = None
        self.http_headers = self.http_request_params = None
        ab_shortcuts.forget_handshake(self)

    def onMessage(self, payload, isBinary):
        client = self.client
        if client is None:
            return
        try:
            outcome = client.receive(payload, isBinary)
        except Exception:
            ERRORS.labels("internal_error").inc()
            log.failure("internal error handling a message from {address}", address=self.address)
            self.close(CLOSE_INTERNAL_ERROR, "internal error")
            return
        if outcome is RELAYED:
            self.factory.batch.relayed += 1

    def onPing(self, payload):
        client = self.client
        if client is None or client.receive_control("ping"):  # over the message rate: no pong
            super().onPing(payload)

    def onPong(self, payload):
        client = self.client
        if client is not None:
            client.receive_control("pong")

    def onClose(self, wasClean, code, reason):
        try:
            node = self.factory.node
            if self._counted:
                self._counted = False
                node.connections.close(self.address)
            self.factory.open_connections.discard(self)
            client = self.client
            if client is not None:
                self.client = None
                client.disconnected(resumable=self._resumable(wasClean))
                node.events.emit("info", "connection.close", address=self.address,
                                 device_id=client.device_id, peer_id=client.peer_id,
                                 code=code, clean=wasClean)
        except Exception:
            log.failure("internal error closing the connection of {address}", address=self.address)

    def _resumable(self, was_clean: bool) -> bool:
        """Whether the peer may come back: its connection dropped, or we asked it to
        reconnect (1012). A close the client chose, or one we forced for a policy
        breach, ends the peer at once."""
        if self.closedByMe:
            return self.localCloseCode in RESUMABLE_CLOSE_CODES
        return not was_clean

    # --- the domain's Connection interface

    def send(self, message: dict) -> None:
        if self.state == OPEN:
            self.factory.batch.write(self, text_frame(orjson.dumps(message)))

    def close(self, code: int, reason: str) -> None:
        # sendClose() only takes 1000 and 3000-4999; policy closes need 1008 etc.
        if self.state == OPEN:
            self.factory.batch.flush_one(self)  # messages sent before the close go first
            ab_shortcuts.send_close(self, code, reason)

    def write_frames(self, data: bytes) -> None:
        """Write to the peer, within its outgoing budget: what it has not read stays
        queued here, so a peer that does not read is closed rather than let grow."""
        if twisted_tcp.write_now(self.transport, data):
            return  # all of it is in the kernel: nothing queued here
        sock = self._socket
        if sock is not None:
            queued = twisted_tcp.queued(sock)
            if queued > self.factory.max_queued_bytes and self.state == OPEN:
                self._over_budget(queued)

    def _over_budget(self, queued: int) -> None:
        QUEUE_OVERFLOWS.inc()
        client = self.client
        self.factory.node.events.emit("warn", "limit.queued_bytes", address=self.address,
                                      peer_id=client.peer_id if client is not None else None, queued=queued)
        # The close frame waits behind what is queued; if the peer never reads it,
        # the close handshake timeout drops the connection.
        if client is not None:
            client.close(CLOSE_POLICY_VIOLATION, "outgoing queue limit exceeded: read your messages")
        else:
            self.close(CLOSE_POLICY_VIOLATION, "outgoing queue limit exceeded: read your messages")


class WriteBatch:
    """Frames for each recipient, held while a read is handled and written in one
    go when it ends: one write per recipient per read, and the relay latency
    observed once they are written."""

    def __init__(self):
        self.active = False
        self.relayed = 0
        self._started = 0.0
        self._pending: dict[SignalingProtocol, list[bytes]] = {}

    def begin(self) -> bool:
        if self.active:
            return False
        self.active = True
        self._started = perf_counter()
        return True

    def write(self, protocol: SignalingProtocol, frame: bytes) -> None:
        if not self.active:
            protocol.write_frames(frame)
            return
        frames = self._pending.get(protocol)
        if frames is None:
            self._pending[protocol] = [frame]
        else:
            frames.append(frame)

    def flush_one(self, protocol: SignalingProtocol) -> None:
        frames = self._pending.pop(protocol, None)
        if frames:
            protocol.write_frames(frames[0] if len(frames) == 1 else b"".join(frames))

    def end(self) -> None:
        self.active = False
        pending, self._pending = self._pending, {}
        for protocol, frames in pending.items():
            if protocol.state == OPEN:
                protocol.write_frames(frames[0] if len(frames) == 1 else b"".join(frames))
        if self.relayed:
            RELAY_LATENCY.observe(perf_counter() - self._started, self.relayed)
            self.relayed = 0


class SignalingFactory(WebSocketServerFactory):
    protocol = SignalingProtocol
    noisy = False

    def __init__(self, node, settings, reactor=None):
        WebSocketServerFactory.__init__(self, server="sscontrol-signaling", reactor=reactor)
        self.node = node
        ACTIVE.add(node.connections)
        self.open_connections: set[SignalingProtocol] = set()
        self.batch = WriteBatch()
        self.fast_limit = 0
        self.max_queued_bytes = 0
        self.apply(settings)

    def apply(self, settings) -> None:
        """Set Autobahn's options from the settings (new connections take them)."""
        self.setProtocolOptions(
            maxFramePayloadSize=settings.max_frame_bytes,
            maxMessagePayloadSize=settings.max_message_bytes,
            autoPingInterval=settings.ping_interval,
            autoPingTimeout=settings.ping_timeout,
            # Liveness is the pong: data frames from a peer prove it sends, not that it
            # reads (one flooding a peer that never answers a ping must time out).
            autoPingRestartOnAnyTraffic=False,
            openHandshakeTimeout=settings.handshake_timeout,
            closeHandshakeTimeout=5,
            failByDrop=False,  # a protocol violation gets a close frame with its code (1007, 1009)
            # setProtocolOptions resets this to False unless given: pages opened from
            # file:// and sandboxed frames send "Origin: null" and must connect too.
            allowNullOrigin=True,
            # permessage-deflate is declined (docs/protocol.md, "Compression"): every
            # client offers it, and the handshake answers 101 without the extension.
            perMessageCompressionAccept=decline_compression,
            # The JSON parser rejects invalid UTF-8 and the client then closes with
            # 1007: Autobahn's own check would cost more than the parse.
            utf8validateIncoming=False,
        )
        self.max_queued_bytes = settings.max_queued_bytes
        # Largest message the hot path reads itself (16-bit lengths only).
        self.fast_limit = min(settings.max_frame_bytes, settings.max_message_bytes, 65535)
        # New connections take the options (open ones keep theirs); with the shortcuts,
        # from a protocol class of this configuration rather than copied one by one.
        self.protocol = ab_shortcuts.protocol_class(self, SignalingProtocol)
