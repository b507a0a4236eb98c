"""The Autobahn adapter: WebSocket frames <-> the domain's ``Client``.

Thin on purpose: admission at the handshake, bytes in, dicts out, and a guard
around every callback so that nothing a peer sends can raise into Autobahn.
"""

from __future__ import annotations

from time import perf_counter

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from prometheus_client import Gauge, Histogram
from twisted.logger import Logger

from .domain.client import ERRORS, Client
from .web import REQUESTS, endpoint_label

log = Logger(namespace="sscontrold.protocol")

CLOSE_INTERNAL_ERROR = 1011
RELAYED = frozenset({"offer", "answer", "ice"})
RESUMABLE_CLOSE_CODES = frozenset({1012})  # service restart: reconnect and resume

ACTIVE = Gauge("sscontrol_active_connections", "Open WebSocket connections.")
RELAY_LATENCY = Histogram("sscontrol_relay_latency_seconds", "From a relayed message read to its copy "
                          "written to the recipient's transport.",
                          buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1))


def client_address(peer_host: str, forwarded_for: str | None, trusted_proxies: frozenset[str]) -> str:
    """The client's address: the TCP peer, or what a trusted proxy says it forwarded.

    X-Forwarded-For is read right to left, skipping trusted proxies, so a client
    cannot forge its address by sending the header itself.
    """
    if peer_host not in trusted_proxies or not forwarded_for:
        return peer_host
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if hop not in trusted_proxies:
            return hop
    return hops[0] if hops else peer_host


class SignalingProtocol(WebSocketServerProtocol):
    client: Client | None = None
    address: str | None = None
    _counted = False

    def onConnect(self, request):
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
        ACTIVE.inc()
        return None

    def onOpen(self):
        node = self.factory.node
        self.client = node.new_client(self, self.address)
        self.factory.open_connections.add(self)
        REQUESTS.labels(endpoint_label(self.http_request_path.encode()), "101").inc()
        node.events.emit("info", "connection.open", address=self.address, peer_id=self.client.peer_id)

    def onMessage(self, payload, isBinary):
        client = self.client
        if client is None:
            return
        started = perf_counter()
        try:
            kind = client.receive(payload, isBinary)
        except Exception:
            ERRORS.labels("internal_error").inc()
            log.failure("internal error handling a message from {address}", address=self.address)
            self.close(CLOSE_INTERNAL_ERROR, "internal error")
            return
        if kind in RELAYED and client.relayed:
            RELAY_LATENCY.observe(perf_counter() - started)

    def onClose(self, wasClean, code, reason):
        try:
            node = self.factory.node
            if self._counted:
                self._counted = False
                ACTIVE.dec()
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
        if self.state == self.STATE_OPEN:
            self.sendMessage(orjson.dumps(message), isBinary=False)

    def close(self, code: int, reason: str) -> None:
        # sendClose() only takes 1000 and 3000-4999; policy closes need 1008 etc.
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123], isReply=False)


class SignalingFactory(WebSocketServerFactory):
    protocol = SignalingProtocol
    noisy = False

    def __init__(self, node, settings):
        WebSocketServerFactory.__init__(self, server="sscontrol-signaling")
        self.node = node
        self.open_connections: set[SignalingProtocol] = set()
        self.apply(settings)

    def apply(self, settings) -> None:
        """Set Autobahn's options from the settings (new connections take them)."""
        self.setProtocolOptions(
            maxFramePayloadSize=settings.max_frame_bytes,
            maxMessagePayloadSize=settings.max_message_bytes,
            autoPingInterval=settings.ping_interval,
            autoPingTimeout=settings.ping_timeout,
            openHandshakeTimeout=settings.handshake_timeout,
            closeHandshakeTimeout=5,
            failByDrop=False,  # a protocol violation gets a close frame with its code (1007, 1009)
            perMessageCompressionAccept=lambda offers: None,
        )
