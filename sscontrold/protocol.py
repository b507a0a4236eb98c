"""The Autobahn adapter: WebSocket frames <-> the domain's ``Client``.

Thin on purpose: admission at the handshake, bytes in, dicts out, and a guard
around every callback so that nothing a peer sends can raise into Autobahn.
"""

from __future__ import annotations

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger

from .domain.client import Client

log = Logger(namespace="sscontrold.protocol")

CLOSE_INTERNAL_ERROR = 1011


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
        if node.draining:
            raise ConnectionDeny(503, "Service Unavailable: draining")
        forwarded = request.headers.get("x-forwarded-for")
        self.address = client_address(self.transport.getPeer().host, forwarded, node.trusted_proxies)
        refused = node.connections.try_open(self.address)
        if refused is not None:
            node.events.emit("warn", "limit.connections", address=self.address, scope=refused)
            if refused == "total":
                raise ConnectionDeny(503, "Service Unavailable: too many connections")
            raise ConnectionDeny(429, "Too Many Requests: too many connections from your address")
        self._counted = True
        return None

    def onOpen(self):
        node = self.factory.node
        self.client = node.new_client(self, self.address)
        node.events.emit("info", "connection.open", address=self.address, peer_id=self.client.peer_id)

    def onMessage(self, payload, isBinary):
        client = self.client
        if client is None:
            return
        try:
            client.receive(payload, isBinary)
        except Exception:
            log.failure("internal error handling a message from {address}", address=self.address)
            self.close(CLOSE_INTERNAL_ERROR, "internal error")

    def onClose(self, wasClean, code, reason):
        try:
            node = self.factory.node
            if self._counted:
                self._counted = False
                node.connections.close(self.address)
            client = self.client
            if client is not None:
                self.client = None
                client.disconnected()
                node.events.emit("info", "connection.close", address=self.address,
                                 device_id=client.device_id, peer_id=client.peer_id,
                                 code=code, clean=wasClean)
        except Exception:
            log.failure("internal error closing the connection of {address}", address=self.address)

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

    def __init__(self, node, settings):
        WebSocketServerFactory.__init__(self, server="sscontrol-signaling")
        self.node = node
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
