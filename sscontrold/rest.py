"""The REST session API of docs/protocol.md section 2, mounted at /api on the public site:

    POST   /api/session                 create (the host)
    GET    /api/session/{id}            read (the viewer; the host polls it for the answer)
    DELETE /api/session/{id}            delete
    POST   /api/session/{id}/answer     the viewer's answer
    POST   /api/session/{id}/ice        a trickled candidate, role host or client

Every answer is JSON (errors ``{"success": false, "error": "..."}``) with CORS headers
per ``cors_origins``; OPTIONS is a preflight (204). Requests are rate limited per
client address (``session_rate_per_minute``). Limits are read from ``node.settings``
at request time, so a reload applies to the next request.

``SessionAPI(node)`` builds the store, the resource (``.resource``) and the timer
service that sweeps expired sessions every second (``.service``). The store is in
memory (the default), or in Redis with ``SessionAPI(node, redis=link)`` so that any
node serves any step of a session. The in-memory store answers synchronously; the
Redis store's operations return Deferreds, and the request is finished when they
fire (503 while Redis is away).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, cast

from prometheus_client import Counter
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .domain.compare import any_secret
from .domain.limits import TokenBucket
from .domain.sessions import QuotaExceeded, SessionError, SessionStore, StoreFull
from .policies import session_limits
from .redis import RedisUnavailable
from .redis_sessions import RedisSessionStore
from .web import (HTTPError, apply_cors, client_gone, error_response, json_response, parse_json_object,
                  read_body, request_address)

log = Logger(namespace="sscontrold.rest")

SESSION_QUOTA_REFUSED = Counter("sscontrol_session_quota_refused_total",
                                "REST session creations refused: the address holds session_max_per_address.")

TOO_MANY_REQUESTS = 429  # not among twisted.web.http's names
PREFLIGHT_MAX_AGE = b"3600"
DEFAULT_ALLOW_HEADERS = b"Content-Type"
_HEADER_TOKEN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_, ")


class AddressRateLimiter:
    """``per_minute`` requests per minute per client address (bursts of as many), with
    idle addresses forgotten once their bucket would be full again."""

    MAX_ADDRESSES = 100_000

    def __init__(self, clock: Callable[[], float], per_minute: int):
        self._clock = clock
        self.per_minute = per_minute
        # address -> [bucket, last request time, refusing]; least recently seen first
        self._addresses: OrderedDict[str, list] = OrderedDict()

    def __len__(self) -> int:
        return len(self._addresses)

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(60 / self.per_minute))

    def configure(self, per_minute: int) -> None:
        if per_minute != self.per_minute:
            self.per_minute = per_minute
            self._addresses.clear()

    def allow(self, address: str) -> tuple[bool, bool]:
        """(allowed, first refusal of a run) for one request from ``address``."""
        entry = self._addresses.pop(address, None)
        if entry is None:
            entry = [TokenBucket(self.per_minute / 60.0, self.per_minute, 1 << 30, self._clock), 0.0, False]
            while len(self._addresses) >= self.MAX_ADDRESSES:
                self._addresses.popitem(last=False)
        self._addresses[address] = entry
        entry[1] = self._clock()
        allowed = entry[0].take() == "ok"
        first_refusal = not allowed and not entry[2]
        entry[2] = not allowed
        return allowed, first_refusal

    def sweep(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        idle = 60.0  # a bucket refills completely in a minute
        while self._addresses:
            address, entry = next(iter(self._addresses.items()))
            if entry[1] + idle > now:
                break
            del self._addresses[address]


async def _settled(result):
    """A store operation's result: as is (in-memory store), or once its Deferred fires."""
    if isinstance(result, Deferred):
        return await result
    return result


class SessionResource(Resource):
    """/api and everything below it."""

    isLeaf = True

    def __init__(self, api: "SessionAPI"):
        super().__init__()
        self._api = api

    # --- routing

    def _route(self, postpath: list[bytes]) -> tuple[str, str | None, tuple[str, ...]] | None:
        """(route, raw session id, methods) for the path below /api, or None."""
        parts = list(postpath)
        if parts and parts[-1] == b"" and len(parts) > 1:
            parts.pop()  # one trailing slash is forgiven
        if not parts or parts[0] != b"session":
            return None
        if len(parts) == 1:
            return "collection", None, ("POST", "OPTIONS")
        raw_id = parts[1].decode("utf-8", "replace")
        if len(parts) == 2:
            return "session", raw_id, ("GET", "DELETE", "OPTIONS")
        if len(parts) == 3 and parts[2] in (b"answer", b"ice"):
            return parts[2].decode(), raw_id, ("POST", "OPTIONS")
        return None

    def render(self, request: Request):
        d = Deferred.fromCoroutine(self._render(request))
        d.addErrback(self._internal_error, request)
        if d.called:  # nothing waited (the in-memory store): answer now
            body: list = []
            d.addCallback(body.append)
            return body[0]
        d.addCallback(self._finish, request)
        d.addErrback(lambda f: log.failure("internal error finishing a session request", f))
        return NOT_DONE_YET

    @staticmethod
    def _internal_error(failure, request: Request) -> bytes:
        log.failure("internal error answering {method} {path}", failure,
                    method=request.method.decode("ascii", "replace"),
                    path=request.path.decode("ascii", "replace")[:200])
        return error_response(request, http.INTERNAL_SERVER_ERROR, "internal error")

    @staticmethod
    def _finish(body, request: Request) -> None:
        """Write a body that came later (the store waited on Redis), unless the client left."""
        if body is NOT_DONE_YET or client_gone(request) or request.finished:
            return
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    async def _render(self, request: Request):
        api = self._api
        settings = api.sync()
        self._cors(request, settings)
        route = self._route(cast("list[bytes]", request.postpath))  # set by the resource traversal
        method = request.method.decode("ascii", "replace")
        if route is None:
            return error_response(request, http.NOT_FOUND, "not found")
        name, raw_id, methods = route
        if method == "OPTIONS":
            return self._preflight(request, methods)

        address = api.address(request)
        allowed, first_refusal = api.rate.allow(address)
        if not allowed:
            if first_refusal:
                api.node.events.emit("warn", "limit.rest_rate", address=address,
                                     per_minute=api.rate.per_minute)
            request.setHeader(b"retry-after", str(api.rate.retry_after).encode())
            return error_response(request, TOO_MANY_REQUESTS, "too many requests, slow down", "rate_limited")

        if method not in methods:
            request.setHeader(b"allow", ", ".join(methods).encode())
            return error_response(request, http.NOT_ALLOWED, f"method {method} not allowed")
        if settings.session_auth:
            refusal = self._refusal(request, api.node.authenticator.policy.api_keys)
            if refusal is not None:
                api.node.events.emit("warn", "auth.refused", address=address, reason=refusal, via="rest")
                request.setHeader(b"www-authenticate", b'Bearer realm="sscontrol"')
                return error_response(request, http.UNAUTHORIZED,
                                      "authentication required: 'Authorization: Bearer <api key>'")

        store = api.store
        try:
            if name == "collection":
                session = await _settled(store.create(self._body(request, settings), owner=address))
                api.node.events.emit("info", "session.created", address=address,
                                     expires_at=session.expires_at, sessions=store.count())
                return json_response(request, http.CREATED, {
                    "success": True, "session_id": session.session_id, "expires_at": session.expires_at})
            if name == "session" and method == "GET":
                return json_response(request, http.OK, await _settled(store.get(raw_id, address)))
            if name == "session":  # DELETE
                await _settled(store.delete(raw_id))
                api.node.events.emit("info", "session.deleted", address=address, sessions=store.count())
                return json_response(request, http.OK, {"success": True})
            body = self._body(request, settings)
            if name == "answer":
                await _settled(store.answer(raw_id, body))
                api.node.events.emit("info", "session.answered", address=address)
            else:
                await _settled(store.add_ice(raw_id, body))
            return json_response(request, http.OK, {"success": True})
        except HTTPError as e:
            return error_response(request, e.code, e.message)
        except SessionError as e:
            if e.status == TOO_MANY_REQUESTS:
                api.node.events.emit("warn", "session.attempts_exceeded", address=address)
            elif isinstance(e, StoreFull):
                api.node.events.emit("warn", "limit.sessions", address=address, sessions=store.count())
            if isinstance(e, QuotaExceeded):
                SESSION_QUOTA_REFUSED.inc()
                if api.quota_log.allow(address)[0]:  # one line per address per minute, not per refusal
                    api.node.events.emit("warn", "limit.sessions_per_address", address=address,
                                         limit=api.limits.max_per_owner)
                request.setHeader(b"retry-after", str(e.retry_after).encode())
            return error_response(request, e.status, e.message, e.code)
        except RedisUnavailable:
            request.setHeader(b"retry-after", b"1")
            return error_response(request, http.SERVICE_UNAVAILABLE,
                                  "sessions are temporarily unavailable, retry shortly")

    # --- pieces

    @staticmethod
    def _refusal(request: Request, keys) -> str | None:
        """session_auth: None when the request carries one of the API keys, else the reason."""
        header = request.getHeader(b"authorization")
        if header is None:
            return "missing_credentials"
        scheme, _, value = header.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return "bad_authorization_header"
        return None if any_secret(keys, value.strip()) else "bad_api_key"

    @staticmethod
    def _body(request: Request, settings) -> dict:
        data = read_body(request, settings.session_body_max_bytes)
        if not data.strip():
            raise HTTPError(http.BAD_REQUEST, "a JSON object body is required")
        return parse_json_object(data)

    @staticmethod
    def _cors(request: Request, settings) -> None:
        apply_cors(request, settings.cors_origins)
        request.setHeader(b"access-control-expose-headers", b"Retry-After")

    @staticmethod
    def _preflight(request: Request, methods: tuple[str, ...]):
        request.setResponseCode(http.NO_CONTENT)
        request.setHeader(b"access-control-allow-methods", ", ".join(methods).encode())
        asked = (request.getHeader(b"access-control-request-headers") or b"").strip()
        if asked and len(asked) <= 512 and set(asked) <= _HEADER_TOKEN:
            allow = asked  # any header is fine: no credentials are involved
        else:
            allow = DEFAULT_ALLOW_HEADERS
        request.setHeader(b"access-control-allow-headers", allow)
        request.setHeader(b"access-control-max-age", PREFLIGHT_MAX_AGE)
        request.setHeader(b"allow", ", ".join(methods).encode())
        request.setHeader(b"cache-control", b"no-store")
        request.finish()  # a 204 goes out without Content-Length (RFC 9110 8.6)
        return NOT_DONE_YET


class SessionExpiry(Service):
    """Sweeps expired sessions (and idle rate-limit entries) every ``interval`` seconds."""

    def __init__(self, api: "SessionAPI", clock, interval: float = 1.0):
        self.setName("session-expiry")  # Service.name, which Twisted leaves unannotated (None)
        self._api = api
        self._clock = clock
        self._interval = interval
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        Service.startService(self)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False)

    def stopService(self):
        Service.stopService(self)
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def _tick(self) -> None:
        try:
            dropped = self._api.store.expire()
            self._api.rate.sweep()
            self._api.quota_log.sweep()
            if dropped:
                self._api.node.events.emit("debug", "session.expired", count=dropped,
                                           sessions=self._api.store.count())
        except Exception:
            log.failure("internal error sweeping expired sessions")


class SessionAPI:
    """The session store with its HTTP resource and its expiry timer."""

    def __init__(self, node, redis=None):
        self.node = node
        self._settings = node.settings
        self.limits = session_limits(node.settings)
        if redis is None:
            self.store = SessionStore(node.clock.seconds, self.limits, node.recorder)
        else:
            self.store = RedisSessionStore(redis, lambda: self.limits, node.recorder)
        self.rate = AddressRateLimiter(node.clock.seconds, node.settings.session_rate_per_minute)
        self.quota_log = AddressRateLimiter(node.clock.seconds, 1)
        self.resource = SessionResource(self)
        self.service = SessionExpiry(self, node.clock)

    def sync(self):
        """The current settings, applied to the store and the rate limiter if they changed."""
        settings = self.node.settings
        if settings is not self._settings:
            self._settings = settings
            self.limits = session_limits(settings)
            if isinstance(self.store, SessionStore):
                self.store.limits = self.limits
            self.rate.configure(settings.session_rate_per_minute)
        return settings

    def address(self, request: Request) -> str:
        return request_address(request, self.node.trusted_proxies)
