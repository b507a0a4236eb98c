"""The public HTTP site: the WebSocket endpoint at / and /ws, a text banner for
plain GET /, and /health. Every error is a JSON body; no traceback is ever shown.
"""

from __future__ import annotations

from typing import Callable

import orjson
from prometheus_client import Counter
from autobahn.twisted.resource import WebSocketResource
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from . import __version__
from .domain.origins import OriginPolicy

log = Logger(namespace="sscontrold.web")

REQUESTS = Counter("sscontrol_requests_total", "HTTP requests (WebSocket handshakes included) by endpoint "
                   "and status code.", ["endpoint", "code"])
# Endpoint labels come from this fixed table, never from the raw path.
ENDPOINTS = {"": "/", "ws": "/ws", "health": "/health", "turn": "/turn", "api": "/api/session",
             "ready": "/ready", "live": "/live", "metrics": "/metrics"}


def endpoint_label(path: bytes) -> str:
    first = path.split(b"?", 1)[0].lstrip(b"/").split(b"/", 1)[0].decode("ascii", "replace")
    return ENDPOINTS.get(first, "other")

BANNER = (
    f"sscontrol-signaling {__version__}\n"
    "WebSocket signaling endpoint: upgrade this URL (or /ws) to a WebSocket.\n"
).encode()


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


class WebSocketOrBanner(Resource):
    """A WebSocket upgrade goes to Autobahn; anything else gets the banner."""

    isLeaf = True

    def __init__(self, websocket: WebSocketResource):
        super().__init__()
        self._websocket = websocket

    def render(self, request: Request):
        upgrade = request.getHeader(b"upgrade") or b""
        if b"websocket" in upgrade.lower():
            transport = request.channel.transport
            result = self._websocket.render(request)
            if request.channel.transport is None and transport.connected and not transport.disconnecting:
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


class QuietSite(Site):
    """A Site that never shows tracebacks and whose access log drops query strings
    (a /turn query may carry a key)."""

    displayTracebacks = False
    noisy = False

    def log(self, request: Request) -> None:
        REQUESTS.labels(endpoint_label(request.uri), str(request.code)).inc()
        path = request.uri.split(b"?", 1)[0].decode("ascii", "replace")[:200]
        log.debug("{sscontrol_event}", sscontrol_event="http.request", sscontrol_fields={
            "method": request.method.decode("ascii", "replace"), "path": path, "code": request.code})


def public_site(websocket_factory, health: Callable[[], dict], timeout: float,
                extra: dict[bytes, Resource] | None = None) -> Site:
    root = JSONRoot()
    endpoint = WebSocketOrBanner(WebSocketResource(websocket_factory))
    root.putChild(b"", endpoint)
    root.putChild(b"ws", endpoint)
    root.putChild(b"health", Health(health))
    for name, resource in (extra or {}).items():
        root.putChild(name, resource)
    return QuietSite(root, timeout=timeout)
