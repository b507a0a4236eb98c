"""Origin policy (docs/origin-policy.md): allowed_origins and require_origin in front
of the WebSocket upgrade, the REST API and /turn, against the real daemon; the
matcher and the settings in memory."""

from __future__ import annotations

import json
import re

import pytest

from conftest import http
from sscontrold import config
from sscontrold.config import ConfigError
from sscontrold.domain.origins import OriginPolicy, parse_origins
from wsclient import connect

POLICY = "https://app.example.com, *.example.org, https://[::1]:8443"
UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def test_matcher():
    policy = OriginPolicy(parse_origins(POLICY))
    allowed = ["https://app.example.com", "https://a.example.org", "http://b.a.example.org", "https://[::1]:8443"]
    refused = ["http://app.example.com", "https://app.example.com:444", "https://example.org",
               "https://evilexample.org", "https://a.example.org.evil.com", "https://[::1]", "null",
               "https://evil.com", "not an origin", ""]
    assert [o for o in allowed if not policy.allows(o)] == []
    assert [o for o in refused if policy.allows(o)] == []
    assert policy.allows("HTTPS://APP.Example.COM")
    assert policy.allows(None)  # no Origin: a native client, admitted by default
    assert not OriginPolicy(parse_origins(POLICY), require_origin=True).allows(None)
    assert policy.allows("https://signal.example.net", host="signal.example.net")  # the daemon's own page
    assert policy.allows("http://127.0.0.1:8443", host="127.0.0.1:8443")
    assert not policy.allows("http://127.0.0.1:8443", host="127.0.0.1:9999")
    assert OriginPolicy(("*",)).allows("https://anything.example")
    assert OriginPolicy(("null",)).allows("null")


def load(tmp_path, **env):
    empty = tmp_path / "empty.conf"
    empty.touch()
    return config.load(environ={"SSCONTROL_CONFIG": str(empty), **env})


def test_settings(tmp_path):
    s = load(tmp_path)
    assert (s.allowed_origins, s.require_origin, s.cors_origins) == (("*",), False, ("*",))
    s = load(tmp_path, SSCONTROL_ALLOWED_ORIGINS=POLICY, SSCONTROL_REQUIRE_ORIGIN="yes")
    assert s.allowed_origins == ("https://app.example.com", "*.example.org", "https://[::1]:8443")
    assert s.require_origin and s.cors_origins == s.allowed_origins  # one list drives the CORS answer
    for bad, why in (("https://x.example/path", "without a path"), ("ftp://x.example", "http:// or https://"),
                     ("https://a.*.example", "wildcard"), ("https://x.example:0", "bad port")):
        with pytest.raises(ConfigError, match=re.escape("invalid setting allowed_origins from environment "
                                                        "variable SSCONTROL_ALLOWED_ORIGINS")) as e:
            load(tmp_path, SSCONTROL_ALLOWED_ORIGINS=bad)
        assert why in str(e.value)
    # the deprecated alias alone keeps its meaning; both set differently is an error
    assert load(tmp_path, SSCONTROL_CORS_ORIGINS="https://a.example").allowed_origins == ("*",)
    with pytest.raises(ConfigError, match="cors_origins .*deprecated.*keep only allowed_origins"):
        load(tmp_path, SSCONTROL_CORS_ORIGINS="https://a.example", SSCONTROL_ALLOWED_ORIGINS="https://b.example")


def metric(d, kind: str, reason: str) -> float:
    _, _, body = http("GET", d.admin + "/metrics")
    m = re.search(r'^sscontrol_origin_refused_total\{kind="%s",reason="%s"\} (\S+)$' % (kind, reason),
                  body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


def test_websocket_and_api_from_another_origin_get_403_before_the_upgrade(daemon_factory):
    d = daemon_factory(env={"SSCONTROL_ALLOWED_ORIGINS": POLICY})
    beside = connect(d.ws)  # a pair of native clients (no Origin) beside: they lose nothing
    mate = connect(d.ws)
    beside_id = beside.join("room")["peer_id"]
    mate.join("room")
    assert beside.recv()["type"] == "new_peer"

    status, headers, body = http("GET", d.base + "/ws", headers={**UPGRADE, "Origin": "https://evil.com"})
    assert status == 403 and "Sec-WebSocket-Accept" not in headers
    assert json.loads(body) == {"success": False, "error": "origin not allowed (allowed_origins)",
                                "code": "origin_refused"}
    status, _, _ = http("GET", d.base + "/", headers={**UPGRADE, "Origin": "https://a.example.org.evil.com"})
    assert status == 403
    assert metric(d, "websocket", "origin") == 2

    for origin in ("https://app.example.com", "http://x.example.org", f"http://127.0.0.1:{d.port}"):
        p = connect(d.ws, origin=origin)
        assert p.join("room")["type"] == "peers"
        assert beside.recv()["type"] == "new_peer"
        p.close()
        assert beside.recv()["type"] == "peer_left"

    # the REST API and /turn: refused, preflight included; the CORS answer uses the same list
    status, _, body = http("POST", d.base + "/api/session", b"{}", {"Origin": "https://evil.com",
                                                                     "content-type": "application/json"})
    assert status == 403 and json.loads(body)["code"] == "origin_refused"
    status, _, _ = http("OPTIONS", d.base + "/api/session", headers={"Origin": "https://evil.com",
                                                                     "Access-Control-Request-Method": "POST"})
    assert status == 403
    status, _, _ = http("GET", d.base + "/turn", headers={"Origin": "https://evil.com"})
    assert status == 403
    assert metric(d, "http", "origin") == 3
    status, headers, _ = http("OPTIONS", d.base + "/api/session", headers={
        "Origin": "https://deep.sub.example.org", "Access-Control-Request-Method": "POST"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://deep.sub.example.org"
    # pages carry nothing: not gated
    assert http("GET", d.base + "/health", headers={"Origin": "https://evil.com"})[0] == 200
    assert http("GET", d.base + "/", headers={"Origin": "https://evil.com"})[0] == 200
    log = d.log()
    assert "origin.refused" in log and "origin=https://evil.com" in log and "kind=websocket" in log
    mate.send({"type": "offer", "to": beside_id, "sdp": "still here"})
    assert beside.recv()["sdp"] == "still here"
    beside.close()
    mate.close()


def test_require_origin_refuses_clients_without_one(daemon_factory):
    d = daemon_factory("--require-origin", "true")
    status, _, body = http("GET", d.base + "/ws", headers=UPGRADE)
    assert status == 403 and json.loads(body)["error"] == "an Origin header is required (require_origin)"
    assert metric(d, "websocket", "missing") == 1
    assert connect(d.ws, origin="https://anywhere.example").join("r")["type"] == "peers"  # * still


def test_default_admits_every_origin(daemon_factory):
    d = daemon_factory()
    p = connect(d.ws, origin="https://evil.com")
    assert p.join("r")["type"] == "peers"
    status, headers, _ = http("OPTIONS", d.base + "/api/session", headers={"Origin": "https://evil.com"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "*"
    assert metric(d, "websocket", "origin") == 0
