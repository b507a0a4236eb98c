"""The public site's Origin gate (docs/origin-policy.md): a WebSocket upgrade or API
request whose Origin ``allowed_origins`` does not allow gets 403 (JSON) before any
upgrade, and is counted and logged."""

from __future__ import annotations

from prometheus_client import Counter
from twisted.web import http
from twisted.web.resource import Resource

from .domain.origins import OriginPolicy
from .web import error_response, request_address

REFUSED = Counter("sscontrol_origin_refused_total", "WebSocket upgrades and API requests refused by the "
                  "Origin policy (403), by kind (websocket, http) and reason (origin, missing).",
                  ["kind", "reason"])
for _kind in ("websocket", "http"):
    for _reason in ("origin", "missing"):
        REFUSED.labels(_kind, _reason)




GATED = (b"", b"ws", b"api", b"turn")  # what acts; pages (banner, /health, /connection-test) do not


class _Refused(Resource):
    isLeaf = True

    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def render(self, request) -> bytes:
        return error_response(request, http.FORBIDDEN, self.message, "origin_refused")


class OriginGate(Resource):
    """The public site's root: refuses (403, JSON, before any upgrade) a WebSocket
    upgrade or API request whose Origin the policy does not allow; the rest goes on
    to the wrapped root."""

    def __init__(self, root: Resource, node):
        super().__init__()
        self._root = root
        self._node = node
        self._policy: tuple | None = None  # (settings, policy): built again after a reload

    def getChildWithDefault(self, path: bytes, request):
        if path in GATED:
            refused = self._check(path, request)
            if refused is not None:
                return refused
        return self._root.getChildWithDefault(path, request)

    def render(self, request):
        return self._root.render(request)

    def _check(self, path: bytes, request) -> Resource | None:
        settings = self._node.settings
        if self._policy is None or self._policy[0] is not settings:
            self._policy = (settings, OriginPolicy(settings.allowed_origins, settings.require_origin))
        policy = self._policy[1]
        if policy.admits_all:
            return None
        upgrade = b"websocket" in (request.getHeader(b"upgrade") or b"").lower()
        if path in (b"", b"ws") and not upgrade:
            return None  # the banner
        raw = request.getHeader(b"origin")
        origin = None if raw is None else raw.decode("latin-1")
        host = request.getHeader(b"host")
        if policy.allows(origin, None if host is None else host.decode("latin-1")):
            return None
        kind = "websocket" if upgrade else "http"
        reason = "missing" if origin is None else "origin"
        REFUSED.labels(kind, reason).inc()
        address = request_address(request, self._node.trusted_proxies)
        self._node.events.emit("warn", "origin.refused", address=address, kind=kind,
                               origin=(origin or "")[:200] or None, reason=reason)
        if origin is None:
            return _Refused("an Origin header is required (require_origin)")
        return _Refused("origin not allowed (allowed_origins)")
