"""The public HTTP site: the WebSocket endpoint at / and /ws, a text banner for
plain GET /, and /health. Every error is a JSON body; no traceback is ever shown.
"""

from __future__ import annotations

from io import BytesIO
from typing import Callable, Protocol, cast

import orjson
from prometheus_client import Counter
from autobahn.twisted.resource import WebSocketResource
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from . import __version__
from .domain.origins import OriginPolicy
from .shortcuts import twisted_web
from .metrics import LiveGauge, total_of

log = Logger(namespace="sscontrold.web")

REQUESTS = Counter("sscontrol_requests_total", "HTTP requests (WebSocket handshakes included) by endpoint "
                   "and status code.", ["endpoint", "code"])
# Endpoint labels come from this fixed table, never from the raw path.
ENDPOINTS = {"": "/", "ws": "/ws", "health": "/health", "turn": "/turn", "api": "/api/session",
             "ready": "/ready", "live": "/live", "metrics": "/metrics"}


HTTP_OPEN = LiveGauge("sscontrol_http_connections", "Connections of the public port not (yet) upgraded to a "
                      "WebSocket, counted from accept.", total_of)
HTTP_REFUSED = Counter("sscontrol_http_connections_refused_total", "Connections of the public port closed at "
                       "accept: max_http_connections (total) or max_http_connections_per_ip (per_address).",
                       ["scope"])
HTTP_STALLS = Counter("sscontrol_http_stalls_total", "Times an HTTP connection stopped being read because its "
                      "client did not read the answers to the requests it pipelined.")


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


def request_address(request: Request, trusted_proxies: frozenset[str]) -> str:
    """The client address of an HTTP request (REST, /turn, the Origin gate) by the rule of
    ``client_address``, every X-Forwarded-For line read in order, as the WebSocket
    handshake reads them (Autobahn joins repeated header lines with commas)."""
    peer = getattr(request.getClientAddress(), "host", None) or "unknown"  # None: not over IP
    lines = request.requestHeaders.getRawHeaders(b"x-forwarded-for")
    forwarded = ", ".join(line.decode("latin-1") for line in lines) if lines else None
    return client_address(peer, forwarded, trusted_proxies)


def endpoint_label(path: bytes) -> str:
    first = path.split(b"?", 1)[0].lstrip(b"/").split(b"/", 1)[0].decode("ascii", "replace")
    return ENDPOINTS.get(first, "other")

BANNER = (
    f"sscontrol-signaling {__version__}\n"
    "WebSocket signaling endpoint: upgrade this URL (or /ws) to a WebSocket.\n"
).encode()


def client_gone(request: Request) -> bool:
    """Whether the client of ``request`` left before its answer was finished
    (Twisted drops a request's channel when its connection is lost)."""
    return request.channel is None and not request.finished


def json_response(request: Request, code: int, body: dict) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return orjson.dumps(body)


# The machine-readable ``code`` of an error body, by HTTP status, where the caller
# names none. 429 is the request rate limit; a session's attempt limit names its own
# code (``too_many_attempts``), which a client must not retry.
ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 410: "gone", 413: "too_large",
               429: "rate_limited", 500: "internal_error", 503: "unavailable"}


def error_response(request: Request, code: int, message: str, error_code: str | None = None) -> bytes:
    """``{"success": false, "error": message, "code": ...}`` with HTTP status ``code``."""
    return json_response(request, code, {"success": False, "error": message,
                                         "code": error_code or ERROR_CODES.get(code, "error")})


class HTTPError(Exception):
    """A request refused with ``code`` and a JSON error ``message``."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (by Content-Length or
    by what actually came)."""
    length = request.getHeader(b"content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise HTTPError(http.REQUEST_ENTITY_TOO_LARGE, f"body larger than {limit} bytes")
    content = getattr(request, "content", None)
    if content is None:
        return b""
    content.seek(0)
    data = content.read(limit + 1)
    if len(data) > limit:
        raise HTTPError(http.REQUEST_ENTITY_TOO_LARGE, f"body larger than {limit} bytes")
    return data


def parse_json_object(data: bytes) -> dict:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise HTTPError(http.BAD_REQUEST, "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPError(http.BAD_REQUEST, "body must be a JSON object")
    return body


def apply_cors(request: Request, origins) -> None:
    """Access-Control-Allow-Origin for ``origins`` ("*", or origins and wildcard
    patterns as allowed_origins takes them: docs/origin-policy.md)."""
    if "*" in origins:
        request.setHeader(b"access-control-allow-origin", b"*")
        return
    request.setHeader(b"vary", b"Origin")
    origin = request.getHeader(b"origin")
    if origin is not None and OriginPolicy(tuple(origins)).allows(origin.decode("latin-1")):
        request.setHeader(b"access-control-allow-origin", origin)


class JSONResource(Resource):
    """A leaf that answers JSON, 405 (JSON) for methods it lacks, and HEAD like GET."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, "render_" + method, None)
        if handler is None and method == "HEAD":
            handler = getattr(self, "render_GET", None)
        if handler is None:
            allowed = sorted(m[7:] for m in dir(self) if m.startswith("render_") and m[7:].isupper())
            request.setHeader(b"allow", ", ".join(allowed).encode())
            return error_response(request, http.NOT_ALLOWED, f"method {method} not allowed")
        return handler(request)


class NotFound(JSONResource):
    def render(self, request: Request) -> bytes:
        return error_response(request, http.NOT_FOUND, "not found")


class JSONRoot(Resource):
    """A resource whose unknown children answer a JSON 404."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFound()

    def render(self, request: Request) -> bytes:
        return error_response(request, http.NOT_FOUND, "not found")


class Health(JSONResource):
    def __init__(self, summary: Callable[[], dict]):
        super().__init__()
        self._summary = summary

    def render_GET(self, request: Request) -> bytes:
        # 200 whenever the process answers: load balancers should use /ready.
        return json_response(request, http.OK, self._summary())


class _OpenTransport(Protocol):
    """What ``WebSocketOrBanner`` uses of a connection's transport (TCP, or TLS over it)."""

    connected: int
    disconnecting: bool

    def unregisterProducer(self) -> None: ...


class WebSocketOrBanner(Resource):
    """A WebSocket upgrade goes to Autobahn; anything else gets the banner."""

    isLeaf = True

    def __init__(self, websocket: WebSocketResource, admission=None):
        super().__init__()
        self._websocket = websocket
        self._admission = admission  # admission.LoopLag: sheds upgrades when the reactor falls behind

    def render(self, request: Request):
        upgrade = request.getHeader(b"upgrade") or b""
        if b"websocket" in upgrade.lower():
            if self._admission is not None and self._admission.shed():
                return self._overloaded(request)
            channel = cast(GuardedChannel, request.channel)  # QuietSite's: a connection being served
            transport = cast(_OpenTransport, channel.transport)  # open: it carries this request
            result = self._websocket.render(request)
            if channel.transport is None:  # Autobahn took the connection over
                channel.upgraded()  # the WebSocket protocol counts it from here
            if channel.transport is None and transport.connected and not transport.disconnecting:
                # Autobahn took the connection over and opened it. The HTTP channel
                # stays registered as the transport's producer, keeping itself and
                # this Request (headers, buffers) alive for as long as the WebSocket
                # lives: ~2 KiB per idle connection. Let them go. (A refused
                # handshake is already closing: nothing to let go of.)
                transport.unregisterProducer()
            return result
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return error_response(request, http.NOT_ALLOWED, "use GET, or upgrade to a WebSocket")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return BANNER

    def _overloaded(self, request: Request) -> bytes:
        """503 now, before any handshake work; the connection closes after it."""
        request.setHeader(b"retry-after", b"%d" % self._admission.retry_after)
        request.setHeader(b"connection", b"close")
        request.channel.persistent = False
        return error_response(request, http.SERVICE_UNAVAILABLE, "overloaded: try again after Retry-After seconds",
                              "overloaded")


LINGER_SECONDS = 2.0  # after a refusal, how long what the client still sends is read and dropped


class BoundedRequest(Request):
    """A request whose body is kept in memory, never spooled to a temporary file
    (twisted.web does past 100 KB, and for every chunked body): the channel refuses
    a body larger than the site's limit, by its Content-Length before reading it,
    chunked when it gets there."""

    # QuietSite's requestFactory: its channels are GuardedChannels (None once the request is done,
    # which Twisted's own annotation leaves out too).
    channel: GuardedChannel

    def gotLength(self, length):
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if channel is None or channel.refused:
            return
        limit = channel.site.max_body_bytes
        content = cast(BytesIO, self.content)  # gotLength() made it (Twisted types it None)
        if content.tell() + len(data) > limit:
            channel.refuse(http.REQUEST_ENTITY_TOO_LARGE, f"body larger than {limit} bytes")
            return
        content.write(data)


class GuardedChannel(HTTPChannel):
    """An HTTP connection that a hostile client cannot hold or grow:

    - one deadline (the site's timeout) for a whole request, from its first byte (or
      the accept), not reset by each byte: a client trickling bytes is cut (408);
    - a body judged by its Content-Length before it is read (413 at once), a chunked
      one cut at the limit;
    - answers the client does not read stop the parsing of its pipelined requests and
      the reading of its socket until it reads them: what it makes us hold is bounded
      by a socket buffer, not by how much it sends.
    """

    site: QuietSite  # the factory sets it on each channel it builds
    refused = False
    _deadline = None
    _deadline_seconds = None
    _stalled = False  # a response waits for the client to read: the rest waits unparsed
    _counted: str | None = None  # the address counted in the node's http_connections

    def connectionMade(self):
        super().connectionMade()
        self._deadline_seconds = self.timeOut
        self._start_deadline()

    def _start_deadline(self) -> None:
        if self._deadline_seconds:
            self._deadline = self.callLater(self._deadline_seconds, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.refuse(http.REQUEST_TIMEOUT, "request not received in time")

    def dataReceived(self, data):
        if self.refused:
            return
        if self._deadline is None and not twisted_web.handling_request(self):
            self._start_deadline()  # the first bytes of the next request
        super().dataReceived(data)

    def rawDataReceived(self, data):
        if not self.refused:
            super().rawDataReceived(data)

    def allHeadersReceived(self):
        limit = self.site.max_body_bytes
        if self.length is not None and self.length > limit:
            self.refuse(http.REQUEST_ENTITY_TOO_LARGE, f"body larger than {limit} bytes")
            return
        super().allHeadersReceived()

    def allContentReceived(self):
        if self.refused:
            return
        self._cancel_deadline()
        super().allContentReceived()

    def requestDone(self, request):
        if twisted_web.hold_pipelined(self, request):
            # The client does not read what we answer: what it sent next stays bytes
            # and its socket is not read, until the transport drains (resumeProducing).
            self._stalled = True
            HTTP_STALLS.inc()
            return
        super().requestDone(request)

    def resumeProducing(self):
        super().resumeProducing()
        if self._stalled and twisted_web.release_pipelined(self):
            self._stalled = False

    def refuse(self, code: int, message: str) -> None:
        """Answer ``code`` with a JSON error now, whatever state the request is in,
        and close: nothing more is read."""
        if self.refused or self.transport is None:
            return
        self.refused = True
        self._cancel_deadline()
        REQUESTS.labels(endpoint_label(twisted_web.current_path(self)), str(code)).inc()
        body = orjson.dumps({"success": False, "error": message, "code": ERROR_CODES.get(code, "error")})
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (code, http.RESPONSES[code], len(body), body))
        self.setTimeout(None)
        twisted_web.stop_reading_as_producer(self)
        # A lingering close: stop writing but keep reading (and dropping) what the
        # client still sends for a moment; closed with unread data, the socket would
        # answer it with a reset that can destroy the answer before the client reads it.
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is not None and not self.isSecure():
            twisted_web.abort_later(self, LINGER_SECONDS)
            half_close()
        else:
            twisted_web.abort_later(self, self.abortTimeout)
            self.transport.loseConnection()

    def upgraded(self) -> None:
        """The WebSocket protocol owns the transport now: it counts it from here."""
        self._cancel_deadline()
        self.setTimeout(None)
        self._uncount()

    def _uncount(self) -> None:
        address, self._counted = self._counted, None
        if address is not None:
            self.site.node.http_connections.close(address)

    def connectionLost(self, reason):
        self._cancel_deadline()
        self._uncount()
        super().connectionLost(reason)


class QuietSite(Site):
    """A Site that never shows tracebacks and whose access log drops query strings
    (a /turn query may carry a key); its connections are GuardedChannels. With a
    ``node``, connections are counted from accept, and refused past its limits."""

    displayTracebacks = False
    noisy = False
    # Twisted types this as its own HTTP/2-negotiating wrapper; any HTTPChannel factory is what it calls.
    protocol = GuardedChannel  # type: ignore[assignment]
    requestFactory = BoundedRequest

    def __init__(self, resource, timeout: float, max_body_bytes: int, node=None, reactor=None):
        super().__init__(resource, timeout=timeout, reactor=reactor)  # its channels' timers
        self.max_body_bytes = max_body_bytes
        self.node = node
        if node is not None:
            HTTP_OPEN.add(node.http_connections)
        self._refusals = 0  # since the last warning line
        self._warned_at = float("-inf")

    def apply(self, settings) -> None:
        """New settings: new connections take the timeout; every body the size limit."""
        self.timeOut = settings.handshake_timeout
        self.max_body_bytes = settings.session_body_max_bytes

    def buildProtocol(self, addr):
        node = self.node
        host = getattr(addr, "host", None)
        if node is not None and host is not None:
            refused = node.http_connections.try_open(host, per_address=host not in node.trusted_proxies)
            if refused is not None:
                self._refused(refused, host)
                return None  # closed before a byte is read: the limit is what reading would cost
        channel = super().buildProtocol(addr)
        if node is not None and host is not None:
            channel._counted = host
        return channel

    def _refused(self, scope: str, host: str) -> None:
        HTTP_REFUSED.labels(scope).inc()
        # One line a second at most: a flood of sockets must not become a flood of lines.
        self._refusals += 1
        now = self.node.clock.seconds()
        if now - self._warned_at >= 1.0:
            self.node.events.emit("warn", "limit.http_connections", address=host, scope=scope,
                                  refused=self._refusals)
            self._refusals, self._warned_at = 0, now

    def log(self, request: http.Request) -> None:
        REQUESTS.labels(endpoint_label(request.uri), str(request.code)).inc()
        path = request.uri.split(b"?", 1)[0].decode("ascii", "replace")[:200]
        log.debug("{sscontrol_event}", sscontrol_event="http.request", sscontrol_fields={
            "method": request.method.decode("ascii", "replace"), "path": path, "code": request.code})


def public_site(websocket_factory, health: Callable[[], dict], timeout: float, max_body_bytes: int,
                extra: dict[bytes, Resource] | None = None, admission=None, reactor=None) -> QuietSite:
    root = JSONRoot()
    endpoint = WebSocketOrBanner(WebSocketResource(websocket_factory), admission)
    root.putChild(b"", endpoint)
    root.putChild(b"ws", endpoint)
    root.putChild(b"health", Health(health))
    for name, resource in (extra or {}).items():
        root.putChild(name, resource)
    return QuietSite(root, timeout, max_body_bytes, node=websocket_factory.node, reactor=reactor)
