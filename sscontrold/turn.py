"""TURN REST credentials (draft-uberti-behave-turn-rest-00), as coturn checks them
with ``use-auth-secret``: over HTTP at ``/turn`` and over the WebSocket as
``{"type": "turn"}``.

    username = f"{expiry}:{user}"        expiry = now + ttl (Unix seconds)
    password = base64(HMAC-SHA1(key=secret, msg=username))

The first of ``turn_secrets`` signs; coturn lists all of them (rotation). Settings
are read from ``node.settings`` on every request, so a reload's secrets apply at
once. Neither a secret, an API key nor a password is ever logged or echoed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import random
from typing import Any, Iterable, Mapping

from prometheus_client import Counter
from twisted.web import http
from twisted.internet.defer import Deferred
from twisted.web.server import NOT_DONE_YET, Request

from .domain.auth import AuthRefused
from .domain.compare import any_secret
from .domain.client import BadMessage, Client
from .metrics import AUTH
from .web import (HTTPError, JSONResource, apply_cors, client_gone, error_response, json_response,
                  parse_json_object, read_body, request_address)

MAX_USER_LENGTH = 128
TOO_MANY_REQUESTS = 429
NOT_CONFIGURED = "TURN is not configured"

CREDENTIALS_ISSUED = Counter(
    "sscontrol_turn_credentials_issued_total",
    "TURN REST credentials issued, by the way they were asked for.",
    ["via"],
)
for _via in ("http", "websocket", "refresh"):  # both series exist (at 0) from the start
    CREDENTIALS_ISSUED.labels(via=_via)


# --- the pure part


def turn_password(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(key=secret, msg=username)), as coturn's use-auth-secret computes it."""
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def valid_user(user: Any) -> bool:
    """A user part coturn and every client take as is: printable, no ':', 1..128 characters."""
    return (isinstance(user, str) and 0 < len(user) <= MAX_USER_LENGTH
            and user.isprintable() and ":" not in user)


def issue_credentials(secret: str, user: str, ttl: int, uris: Iterable[str], now: float) -> dict:
    """The credentials for ``user``, valid until ``now + ttl``, signed with ``secret``.

    ``ttl`` may be negative (tests make expired credentials that way); the daemon's
    settings keep it at least 60 s.
    """
    username = f"{int(now) + int(ttl)}:{user}"
    password = turn_password(secret, username)
    uris = list(uris)
    return {
        "username": username,
        "password": password,
        "ttl": int(ttl),
        "uris": uris,
        "iceServers": [{"urls": list(uris), "username": username, "credential": password}],
    }


def issue(node, user: str, via: str, **context: Any) -> dict | None:
    """The one issuer, for /turn, the WebSocket and the refresh push alike: credentials for
    ``user`` from the settings of the moment (a reload's secrets, TTL and URIs apply at
    once), counted and logged by ``via`` (``context``: who asked); None when TURN is off."""
    settings = node.settings
    if not settings.turn_secrets:
        return None
    credentials = issue_credentials(settings.turn_secrets[0], user, settings.turn_ttl,
                                    settings.turn_uris, node.clock.seconds())
    CREDENTIALS_ISSUED.labels(via=via).inc()
    node.events.emit("info", "turn.issued", via=via, **context, user=user, ttl=settings.turn_ttl)
    return credentials


def pick_user(settings, device_id: str | None = None, requested: Any = None) -> str:
    """The user part: an authenticated device id, else a valid requested name, else turn_user.

    A requested name that is not valid raises ValueError; an authenticated device id
    that is not a valid user part (too long, a ':') falls back to ``turn_user``.
    """
    if device_id is not None:
        return device_id if valid_user(device_id) else settings.turn_user
    if requested is not None and requested != "":
        if not valid_user(requested):
            raise ValueError(f"username must be printable, without ':', at most {MAX_USER_LENGTH} characters")
        return requested
    return settings.turn_user


# --- HTTP: /turn

_TOKEN_FIELDS = ("device_id", "timestamp", "nonce", "token")


class _NonceCheck(Exception):
    """The token is good but its nonce is still being checked in the shared store."""

    def __init__(self, pending, device_id: str):
        super().__init__()
        self.pending = pending
        self.device_id = device_id


def _request_params(request: Request, max_body: int) -> dict[str, Any]:
    """Query (and form-encoded body) arguments, then JSON body fields on top."""
    params: dict[str, Any] = {}
    args: dict[bytes, list[bytes]] = request.args or {}
    for name, values in args.items():
        if values:
            try:
                params[name.decode("utf-8")] = values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise HTTPError(http.BAD_REQUEST, "arguments must be UTF-8") from None
    if request.method == b"POST":
        body = read_body(request, max_body)
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if body.strip() and (ctype == b"application/json" or body.lstrip()[:1] == b"{"):
            params.update(parse_json_object(body))
    return params


def _token_fields(params: Mapping[str, Any], max_id: int) -> tuple[str, int, str, str]:
    device_id, timestamp, nonce, token = (params.get(name) for name in _TOKEN_FIELDS)
    if isinstance(timestamp, str) and timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 16:
        timestamp = int(timestamp)
    if not (isinstance(device_id, str) and 0 < len(device_id) <= max_id
            and isinstance(nonce, str) and 0 < len(nonce) <= max_id
            and isinstance(token, str) and 0 < len(token) <= 128
            and isinstance(timestamp, int) and not isinstance(timestamp, bool) and 0 <= timestamp <= 2**53):
        raise HTTPError(http.BAD_REQUEST, "token auth needs device_id, timestamp (whole seconds), "
                                             "nonce and token")
    return device_id, timestamp, nonce, token


class TurnResource(JSONResource):
    """``/turn``: GET or POST; credentials in the response body (JSON)."""

    def __init__(self, node):
        super().__init__()
        self.node = node

    # --- CORS

    def render_OPTIONS(self, request: Request) -> bytes:
        apply_cors(request, self.node.settings.cors_origins)
        request.setResponseCode(http.NO_CONTENT)
        request.setHeader(b"access-control-allow-methods", b"GET, POST, OPTIONS")
        request.setHeader(b"access-control-allow-headers", b"Authorization, X-API-Key, Content-Type")
        request.setHeader(b"access-control-max-age", b"600")
        return b""

    # --- credentials

    def render_GET(self, request: Request) -> bytes | int:
        return self._issue(request)

    def render_POST(self, request: Request) -> bytes | int:
        return self._issue(request)

    def _issue(self, request: Request) -> bytes | int:  # int: NOT_DONE_YET
        node = self.node
        settings = node.settings  # read per request: a reload applies at once
        apply_cors(request, settings.cors_origins)
        if not settings.turn_secrets:
            return error_response(request, http.NOT_FOUND, NOT_CONFIGURED, "turn_unavailable")
        address = request_address(request, node.trusted_proxies)
        wait = node.failures.throttle.retry_after(address) if node.authenticator.enabled else 0
        if wait > 0:  # too many failures from this address of late: not even checked
            node.failures.throttle.failed(address)
            AUTH.labels("refused", "throttled").inc()
            node.failures.emit(node.events, "warn", "auth.throttled", address=address, via="turn")
            request.setHeader(b"retry-after", str(max(1, math.ceil(wait))).encode())
            return error_response(request, TOO_MANY_REQUESTS, "too many failed attempts, retry later")
        try:
            params = _request_params(request, settings.session_body_max_bytes)
            service = params.get("service")
            if service is not None and service != "turn":
                raise HTTPError(http.BAD_REQUEST, "unsupported service: only 'turn' is served")
            device_id = self._authenticate(request, params, address)
        except HTTPError as e:
            return self._error(request, e)
        except _NonceCheck as check:  # the nonce is checked in Redis: answer when it has
            d = Deferred.fromCoroutine(check.pending)
            d.addCallback(self._accepted_later, request, settings, address, check.device_id, params)
            d.addErrback(self._refused_later, request, address, check.device_id)
            d.addCallback(self._write, request)
            return NOT_DONE_YET
        return self._respond(request, settings, address, device_id, params)

    def _accepted_later(self, _, request: Request, settings, address: str, device_id: str, params) -> bytes:
        AUTH.labels("accepted", "token").inc()
        return self._respond(request, settings, address, device_id, params)

    def _refused_later(self, failure, request: Request, address: str, device_id: str) -> bytes:
        refused = failure.trap(AuthRefused) and failure.value
        self._refused(address, refused.reason, device_id)
        return self._error(request, HTTPError(http.UNAUTHORIZED, refused.message))

    @staticmethod
    def _write(body: bytes, request: Request) -> None:
        if not request.finished and not client_gone(request):
            request.write(body)
            request.finish()

    @staticmethod
    def _error(request: Request, e: HTTPError) -> bytes:
        if e.code == http.UNAUTHORIZED:
            request.setHeader(b"www-authenticate", b'Bearer realm="sscontrol"')
        return error_response(request, e.code, e.message)

    def _respond(self, request: Request, settings, address: str, device_id: str | None, params) -> bytes:
        node = self.node
        try:
            user = pick_user(settings, device_id, params.get("username"))
        except ValueError as e:
            return self._error(request, HTTPError(http.BAD_REQUEST, str(e)))
        credentials = issue(node, user, "http", address=address, device_id=device_id)
        if credentials is None:  # a reload switched TURN off while the nonce was checked
            return error_response(request, http.NOT_FOUND, NOT_CONFIGURED, "turn_unavailable")
        return json_response(request, http.OK, credentials)

    def _authenticate(self, request: Request, params: Mapping[str, Any], address: str) -> str | None:
        """None when the caller is let in without a device (auth off, or an API key);
        the device id when it authenticated with an HMAC token. Raises HTTPError."""
        node = self.node
        authenticator = node.authenticator
        if not authenticator.enabled:
            return None
        keys = authenticator.policy.api_keys
        authorization = _header(request, b"authorization")
        api_key_header = _header(request, b"x-api-key")
        given = None
        if api_key_header is not None:  # a header stays out of proxies' access logs, unlike ?key=
            given = api_key_header.strip()
        elif authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                self._refused(address, "bad_authorization_header")
                raise HTTPError(http.UNAUTHORIZED, "authentication failed: use 'Authorization: Bearer <api key>'")
            given = value.strip()
        else:
            for name in ("key", "api"):
                if params.get(name) not in (None, ""):
                    given = params[name]
                    break
        if given is not None:
            if not isinstance(given, str) or not any_secret(keys, given):
                self._refused(address, "bad_api_key")
                raise HTTPError(http.UNAUTHORIZED, "authentication failed: invalid API key")
            AUTH.labels("accepted", "api_key").inc()
            return None
        if any(name in params for name in _TOKEN_FIELDS):
            device_id, timestamp, nonce, token = _token_fields(params, node.limits.max_id_length)
            try:
                pending = authenticator.verify(device_id, timestamp, nonce, token)
            except AuthRefused as refused:
                self._refused(address, refused.reason, device_id)
                raise HTTPError(http.UNAUTHORIZED, refused.message) from None
            if pending is not None:
                raise _NonceCheck(pending, device_id)
            AUTH.labels("accepted", "token").inc()
            return device_id
        self._refused(address, "missing_credentials")
        raise HTTPError(http.UNAUTHORIZED, "authentication required: an API key (Authorization: Bearer "
                                           "or X-API-Key; key= or api= are legacy) or an HMAC token")

    def _refused(self, address: str, reason: str, device_id: str | None = None) -> None:
        AUTH.labels("refused", reason).inc()
        self.node.failures.throttle.failed(address)
        self.node.failures.emit(self.node.events, "warn", "auth.refused", address=address, device_id=device_id,
                                reason=reason, via="turn")


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


# --- WebSocket: {"type": "turn"}, and the refresh pushed before expiry (docs/turn-refresh.md)

REFRESH_AT = 0.8  # of the TTL: a fresh set is pushed when this much of the old one's life is gone
REFRESH_JITTER = 0.05  # of the TTL, either way: a node's clients do not all renew at once
REFRESH_TIMER = "turn.refresh"


def refresh_delay(ttl: float, rand=random.random) -> float:
    """Seconds from issuing credentials of lifetime ``ttl`` to pushing the next ones:
    75 % to 85 % of the TTL, uniformly."""
    return ttl * (REFRESH_AT + REFRESH_JITTER * (2 * rand() - 1))


def websocket_turn(node):
    """The ``node.extensions["turn"]`` handler: answers ``{"type": "turn_credentials", ...}``,
    and from then on pushes the connection a fresh ``turn_credentials`` (with
    ``"refresh": true``) at about 80 % of each set's lifetime, signed with the secret
    of the moment (a reload's rotation applies to the next push). A client that never
    asks gets no push.

    The Client only lets it run once the connection is authenticated (when auth is on).
    """

    def issue_and_schedule(client: Client, user: str, via: str) -> dict | None:
        credentials = issue(node, user, via, address=client.address, device_id=client.device_id,
                            peer_id=client.peer_id)
        if credentials is not None:
            client.schedule(REFRESH_TIMER, refresh_delay(credentials["ttl"]), lambda: push(client, user))
        return credentials

    def push(client: Client, user: str) -> None:
        credentials = issue_and_schedule(client, user, "refresh")
        if credentials is None:  # TURN switched off by a reload: nothing more to push
            node.events.emit("warn", "turn.refresh_stopped", address=client.address,
                             peer_id=client.peer_id, reason="turn_unavailable")
            return
        client.send({"type": "turn_credentials", **credentials, "refresh": True})

    def handle_turn(client: Client, message: dict) -> None:
        settings = node.settings
        if not settings.turn_secrets:
            raise BadMessage(NOT_CONFIGURED, "turn_unavailable")
        device_id = client.device_id if node.authenticator.enabled else None
        try:
            user = pick_user(settings, device_id, message.get("username"))
        except ValueError as e:
            raise BadMessage(str(e)) from None
        credentials = issue_and_schedule(client, user, "websocket")
        if credentials is None:  # not reached: checked above, on the same settings
            raise BadMessage(NOT_CONFIGURED, "turn_unavailable")
        client.send({"type": "turn_credentials", **credentials})

    return handle_turn
