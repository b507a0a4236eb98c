"""The REST session API of docs/protocol.md section 2, over real HTTP against the real daemon.

Client addresses are simulated with X-Forwarded-For from a trusted proxy (127.0.0.1),
so that the host and the viewer are different addresses as they are in real life.
"""

from __future__ import annotations

import http.client as httpclient
import itertools
import json
import re
import signal
import time

import pytest

from conftest import Daemon, http

HOST = "10.0.0.1"
VIEWER = "10.0.0.2"
_addresses = (f"10.1.{i // 250}.{i % 250 + 1}" for i in itertools.count())
_ids = (f"sess{i:04d}" for i in itertools.count())

CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 192.168.1.2 50000 typ host", "sdpMid": "0",
             "sdpMLineIndex": 0}


def call(base, method, path, payload=None, address=None, raw: bytes | None = None,
         headers: dict | None = None):
    """(status, lower-cased headers, decoded JSON or None)."""
    headers = dict(headers or {})
    body = raw
    if payload is not None:
        body = json.dumps(payload).encode()
    if body is not None:
        headers.setdefault("content-type", "application/json")
    if address is not None:
        headers["x-forwarded-for"] = address
    status, got, data = http(method, base + path, body, headers)
    got = {k.lower(): v for k, v in got.items()}
    return status, got, (json.loads(data) if data else None)


def offer_body(session_id, **kw):
    body = {"session_id": session_id, "offer": "v=0\r\no=host offer", "candidates": [CANDIDATE]}
    body.update(kw)
    return body


def assert_error(result, status, message=None):
    code, headers, body = result
    assert code == status, (code, body)
    assert headers["content-type"] == "application/json"
    assert body["success"] is False and isinstance(body["error"], str) and body["error"]
    assert isinstance(body["code"], str) and body["code"], body  # docs/protocol.md: REST errors
    if message is not None:
        assert re.search(message, body["error"]), body["error"]
    return body


def start(tmp_path_factory, *args):
    d = Daemon(tmp_path_factory.mktemp("rest"), list(args), {})
    try:
        d.start()
    except Exception:
        d.stop()
        raise
    return d


def stop(d):
    d.stop()
    assert "Traceback" not in d.log(), d.log()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    d = start(tmp_path_factory, "--trusted-proxies", "127.0.0.1", "--session-max-attempts", "2",
              "--session-rate-per-minute", "100000", "--session-body-max-bytes", "8192")
    yield d.base
    stop(d)


# --- the whole flow


def test_full_flow(api):
    sid = next(_ids)
    before = time.time()
    status, headers, body = call(api, "POST", "/api/session", offer_body(
        sid, public_key="host-public-key", pin_hash="pin-hash", ttl=60), HOST)
    assert status == 201
    assert body == {"success": True, "session_id": sid, "expires_at": body["expires_at"]}
    assert isinstance(body["expires_at"], int)  # unix seconds, not milliseconds
    assert before + 60 <= body["expires_at"] <= time.time() + 61
    assert headers["access-control-allow-origin"] == "*"
    expires_at = body["expires_at"]

    # The host polls before anyone answered: never counted as an attempt.
    for _ in range(5):
        status, _, body = call(api, "GET", f"/api/session/{sid}", address=HOST)
        assert status == 200 and body["status"] == "waiting" and "answer" not in body

    # The viewer reads the offer (pin_hash never leaves the server).
    status, _, body = call(api, "GET", f"/api/session/{sid}", address=VIEWER)
    assert status == 200
    assert body == {"offer": "v=0\r\no=host offer", "candidates": [CANDIDATE], "public_key": "host-public-key",
                    "expires_at": expires_at, "status": "waiting"}

    viewer_candidate = {"candidate": "candidate:2 1 udp 1 192.168.1.3 50001 typ host", "sdpMLineIndex": 0}
    status, _, body = call(api, "POST", f"/api/session/{sid}/answer",
                           {"answer": "v=0\r\no=viewer answer", "candidates": [viewer_candidate]}, VIEWER)
    assert (status, body) == (200, {"success": True})

    host_more = {"candidate": "candidate:3 1 udp 1 203.0.113.7 40000 typ srflx", "sdpMid": "0"}
    viewer_more = {"candidate": "candidate:4 1 udp 1 198.51.100.9 40001 typ srflx"}
    assert call(api, "POST", f"/api/session/{sid}/ice", {"role": "host", "candidate": host_more}, HOST)[2] == \
        {"success": True}
    assert call(api, "POST", f"/api/session/{sid}/ice", {"role": "client", "candidate": viewer_more},
                VIEWER)[2] == {"success": True}

    status, _, body = call(api, "GET", f"/api/session/{sid}", address=HOST)
    assert status == 200
    assert body == {"offer": "v=0\r\no=host offer", "candidates": [CANDIDATE, host_more],
                    "public_key": "host-public-key", "expires_at": expires_at, "status": "answered",
                    "answer": "v=0\r\no=viewer answer", "client_candidates": [viewer_candidate, viewer_more]}

    # After the answer, the viewer may poll for trickled host candidates.
    for _ in range(4):
        status, _, body = call(api, "GET", f"/api/session/{sid}", address=VIEWER)
        assert status == 200 and body["candidates"][-1] == host_more

    assert call(api, "DELETE", f"/api/session/{sid}", address=HOST)[:3:2] == (200, {"success": True})
    assert_error(call(api, "GET", f"/api/session/{sid}", address=HOST), 404, "not found")
    assert_error(call(api, "DELETE", f"/api/session/{sid}", address=HOST), 404, "not found")


def test_minimal_session_and_trailing_slash(api):
    sid = next(_ids)
    status, _, body = call(api, "POST", "/api/session/", {"session_id": sid, "offer": "o", "candidates": []})
    assert status == 201
    status, _, body = call(api, "GET", f"/api/session/{sid}/", address=HOST)
    assert status == 200 and set(body) == {"offer", "candidates", "expires_at", "status"}


# --- the enumeration guard


def test_too_many_attempts(api):
    sid = next(_ids)
    assert call(api, "POST", "/api/session", offer_body(sid), HOST)[0] == 201
    # --session-max-attempts 2: two GETs by others answer, the third deletes the session.
    assert call(api, "GET", f"/api/session/{sid}", address="10.9.9.1")[0] == 200
    assert call(api, "GET", f"/api/session/{sid}", address="10.9.9.2")[0] == 200
    status, headers, body = call(api, "GET", f"/api/session/{sid}", address="10.9.9.3")
    # Final, and told apart from the rate limit (also 429): its own code, no Retry-After.
    assert assert_error((status, headers, body), 429, "too many attempts")["code"] == "too_many_attempts"
    assert "retry-after" not in headers
    assert_error(call(api, "GET", f"/api/session/{sid}", address=HOST), 429, "too many attempts")
    assert_error(call(api, "POST", f"/api/session/{sid}/answer", {"answer": "a"}, VIEWER), 429)
    # The host may start over under the same id.
    assert call(api, "POST", "/api/session", offer_body(sid), HOST)[0] == 201
    assert call(api, "GET", f"/api/session/{sid}", address=VIEWER)[0] == 200


# --- bad requests


@pytest.mark.parametrize("raw, message", [
    (b"{", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"text"', "must be a JSON object"),
    (b"", "body is required"),
])
def test_create_bad_json(api, raw, message):
    assert_error(call(api, "POST", "/api/session", raw=raw, address=next(_addresses)), 400, message)


@pytest.mark.parametrize("change, message", [
    ({"session_id": None}, "^session_id is required$"),
    ({"session_id": 7}, "^session_id must be a string$"),
    ({"session_id": "no spaces"}, "^session_id must be"),
    ({"offer": None}, "^offer is required$"),
    ({"offer": {"sdp": "x"}}, "^offer must be a string$"),
    ({"candidates": None}, "^candidates is required$"),
    ({"candidates": "c"}, "^candidates must be a list"),
    ({"candidates": [{"candidate": 5}]}, r"^candidates\[0\]\.candidate must be a string$"),
    ({"candidates": [{"candidate": "c", "sdpMLineIndex": "1"}]}, r"^candidates\[0\]\.sdpMLineIndex must be"),
    ({"public_key": 1}, "^public_key must be a string$"),
    ({"pin_hash": False}, "^pin_hash must be a string$"),
    ({"ttl": "300"}, "^ttl must be a whole number"),
    ({"ttl": 0}, "^ttl must be at least 1"),
])
def test_create_bad_fields(api, change, message):
    body = offer_body(next(_ids))
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    assert_error(call(api, "POST", "/api/session", body, next(_addresses)), 400, message)


def test_create_conflict(api):
    sid = next(_ids)
    assert call(api, "POST", "/api/session", offer_body(sid), HOST)[0] == 201
    assert_error(call(api, "POST", "/api/session", offer_body(sid), HOST), 409, "already exists")


def test_answer_and_ice_bad_requests(api):
    sid = next(_ids)
    assert call(api, "POST", "/api/session", offer_body(sid), HOST)[0] == 201
    path = f"/api/session/{sid}"
    assert_error(call(api, "POST", path + "/answer", {}, VIEWER), 400, "^answer is required$")
    assert_error(call(api, "POST", path + "/answer", {"answer": 1}, VIEWER), 400, "^answer must be a string$")
    assert_error(call(api, "POST", path + "/answer", {"answer": "a", "candidates": [1]}, VIEWER), 400,
                 r"^candidates\[0\] must be")
    assert_error(call(api, "POST", path + "/answer", raw=b"nope", address=VIEWER), 400, "not valid JSON")
    assert_error(call(api, "POST", path + "/ice", {"role": "viewer", "candidate": CANDIDATE}, VIEWER), 400,
                 "role must be 'host' or 'client'")
    assert_error(call(api, "POST", path + "/ice", {"candidate": CANDIDATE}, VIEWER), 400, "^role is required$")
    assert_error(call(api, "POST", path + "/ice", {"role": "client"}, VIEWER), 400, "^candidate is required$")
    assert_error(call(api, "POST", path + "/ice", {"role": "client", "candidate": {"sdpMid": "0"}}, VIEWER),
                 400, r"^candidate\.candidate is required$")
    assert_error(call(api, "POST", path + "/ice", raw=b"[]", address=VIEWER), 400, "must be a JSON object")
    # Nothing of that reached the session.
    body = call(api, "GET", path, address=HOST)[2]
    assert body["status"] == "waiting" and body["candidates"] == [CANDIDATE]


def test_unknown_and_invalid_session_ids(api):
    for method, suffix, payload in (("GET", "", None), ("DELETE", "", None),
                                    ("POST", "/answer", {"answer": "a"}),
                                    ("POST", "/ice", {"role": "host", "candidate": CANDIDATE})):
        assert_error(call(api, method, "/api/session/nosuchsession" + suffix, payload, next(_addresses)),
                     404, "session not found")
        assert_error(call(api, method, "/api/session/bad%20id" + suffix, payload, next(_addresses)),
                     400, "session id must be")
        assert_error(call(api, method, "/api/session/" + "x" * 65 + suffix, payload, next(_addresses)),
                     400, "session id must be")


def test_oversize_bodies(api):
    big = offer_body(next(_ids), offer="x" * 9000)
    assert_error(call(api, "POST", "/api/session", big, next(_addresses)), 413, "larger than 8192 bytes")
    # Without Content-Length (chunked), the actual body is measured.
    port = int(api.rsplit(":", 1)[1])
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/api/session", body=iter([b'{"offer": "', b"y" * 9000, b'"}']),
                     headers={"content-type": "application/json"}, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["success"] is False
    finally:
        conn.close()
    # Just under the limit is fine.
    sid = next(_ids)
    ok = offer_body(sid, offer="z" * 7000)
    assert call(api, "POST", "/api/session", ok, next(_addresses))[0] == 201


@pytest.mark.parametrize("method, path, allowed", [
    ("PUT", "/api/session", "POST, OPTIONS"),
    ("GET", "/api/session", "POST, OPTIONS"),
    ("DELETE", "/api/session", "POST, OPTIONS"),
    ("POST", "/api/session/abc", "GET, DELETE, OPTIONS"),
    ("PATCH", "/api/session/abc", "GET, DELETE, OPTIONS"),
    ("GET", "/api/session/abc/answer", "POST, OPTIONS"),
    ("DELETE", "/api/session/abc/ice", "POST, OPTIONS"),
])
def test_wrong_method(api, method, path, allowed):
    result = call(api, method, path, address=next(_addresses))
    assert_error(result, 405, f"method {method} not allowed")
    assert result[1]["allow"] == allowed


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/sessions", "/api/session/abc/offer",
                                  "/api/session/abc/ice/more"])
def test_unknown_paths(api, path):
    result = assert_error(call(api, "GET", path, address=next(_addresses)), 404, "not found")
    assert result == {"success": False, "error": "not found", "code": "not_found"}


# --- CORS


def test_cors_any_origin(api):
    status, headers, body = call(api, "OPTIONS", "/api/session", headers={
        "origin": "https://app.example", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    assert status == 204 and body is None
    assert headers["access-control-allow-origin"] == "*"
    assert headers["access-control-allow-methods"] == "POST, OPTIONS"
    assert headers["access-control-allow-headers"].lower() == "content-type"
    assert int(headers["access-control-max-age"]) > 0
    status, headers, _ = call(api, "OPTIONS", "/api/session/abc", headers={"origin": "https://app.example"})
    assert status == 204 and headers["access-control-allow-methods"] == "GET, DELETE, OPTIONS"
    # Errors carry the CORS headers too, or a browser could not read them.
    status, headers, _ = call(api, "GET", "/api/session/nosuch", headers={"origin": "https://x.example"})
    assert status == 404 and headers["access-control-allow-origin"] == "*"


@pytest.fixture
def limited(tmp_path_factory):
    d = start(tmp_path_factory, "--session-max-count", "1", "--cors-origins",
              "https://a.example https://b.example")
    yield d
    stop(d)


def test_cors_listed_origins_count_limit_and_expiry(limited):
    base = limited.base
    # CORS: a listed origin is echoed, another gets no grant.
    status, headers, _ = call(base, "OPTIONS", "/api/session", headers={
        "origin": "https://b.example", "access-control-request-method": "POST"})
    assert status == 204 and headers["access-control-allow-origin"] == "https://b.example"
    assert "origin" in headers["vary"].lower()
    status, headers, _ = call(base, "GET", "/api/session/nosuch", headers={"origin": "https://evil.example"})
    assert status == 404 and "access-control-allow-origin" not in headers

    # A 1 s session (ttl in the body; the minimum is 1 s) fills the store (--session-max-count 1).
    status, headers, body = call(base, "POST", "/api/session", offer_body("short", ttl=1),
                                 headers={"origin": "https://a.example"})
    assert status == 201 and headers["access-control-allow-origin"] == "https://a.example"
    expires_at = body["expires_at"]
    assert_error(call(base, "POST", "/api/session", offer_body("other")), 503, "too many sessions")

    # The timer drops it without any request touching it: the gauge goes back to 0.
    while time.time() < expires_at + 1.3:
        time.sleep(0.1)
    metrics = http("GET", limited.admin + "/metrics")[2].decode()
    assert re.search(r"^sscontrol_sessions 0\.0$", metrics, re.M), metrics
    assert_error(call(base, "GET", "/api/session/short"), 410, "expired")
    assert_error(call(base, "POST", "/api/session/short/answer", {"answer": "a"}), 410, "expired")
    assert call(base, "POST", "/api/session", offer_body("other"))[0] == 201


# --- rate limit


@pytest.fixture
def rate_limited(daemon_factory):
    return daemon_factory("--session-rate-per-minute", "3")


def test_rate_limit_per_address(rate_limited):
    base = rate_limited.base
    for _ in range(3):
        assert call(base, "GET", "/api/session/nosuch")[0] == 404
    status, headers, body = call(base, "GET", "/api/session/nosuch")
    # Transient, and told apart from a session's attempt limit: its code and Retry-After.
    assert assert_error((status, headers, body), 429, "too many requests")["code"] == "rate_limited"
    assert headers["retry-after"] == "20"  # 3 per minute: one more every 20 s
    assert headers["access-control-allow-origin"] == "*"
    assert_error(call(base, "POST", "/api/session", offer_body("x")), 429)
    # X-Forwarded-For from an untrusted peer does not make a new client.
    assert_error(call(base, "GET", "/api/session/nosuch", address="192.0.2.77"), 429)
    # Preflights are not limited.
    assert call(base, "OPTIONS", "/api/session")[0] == 204
    assert "limit.rest_rate" in rate_limited.log()


# --- reload


def test_reload_applies_session_settings(daemon_factory, tmp_path):
    conf = tmp_path / "signaling.conf"
    conf.write_text("[sessions]\nsession_rate_per_minute = 2\ncors_origins = https://a.example\n")
    d = daemon_factory("--config", str(conf))
    origin = {"origin": "https://b.example"}
    for _ in range(2):
        status, headers, _ = call(d.base, "GET", "/api/session/nosuch", headers=origin)
        assert status == 404 and "access-control-allow-origin" not in headers
    assert call(d.base, "GET", "/api/session/nosuch")[0] == 429

    conf.write_text("[sessions]\nsession_rate_per_minute = 1000\ncors_origins = https://b.example\n")
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload.done" not in d.log():
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    for _ in range(5):
        status, headers, _ = call(d.base, "GET", "/api/session/nosuch", headers=origin)
        assert status == 404 and headers["access-control-allow-origin"] == "https://b.example"
