"""TURN REST credentials (docs/protocol.md section 3): the pure function, /turn over HTTP,
{"type": "turn"} over the WebSocket, and a real coturn that must accept what the
daemon issues and refuse what it must refuse."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
from prometheus_client import REGISTRY
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from conftest import http, http_json
from coturn import allocate
from sscontrold import config
from sscontrold.domain.client import BadMessage
from sscontrold.domain.compare import any_secret
from sscontrold.logging import Events
from sscontrold.node import SignalingNode
from sscontrold.turn import (
    TurnResource,
    issue_credentials,
    pick_user,
    turn_password,
    valid_user,
    websocket_turn,
)
from wsclient import auth_message, connect

KEY = "turn-test-api-key-Q7vXb2"
OTHER_KEY = "turn-test-api-key-second-Zr41"
SECRET = "turn-secret-current-9fKq"
OLD_SECRET = "turn-secret-previous-3Lw8"


def turn_env(coturn=None, secrets=(SECRET, OLD_SECRET), **extra) -> dict:
    uri = coturn.uri if coturn is not None else "turn:127.0.0.1:3478?transport=udp"
    env = {"SSCONTROL_TURN_SECRETS": " ".join(secrets),
           "SSCONTROL_TURN_URIS": f"{uri} turns:turn.example.com:5349?transport=tcp",
           "SSCONTROL_TURN_ALLOW_ANONYMOUS": "true"}  # these tests mean it when auth is off
    env.update(extra)
    return env


def issued(via: str) -> float:
    return REGISTRY.get_sample_value("sscontrol_turn_credentials_issued_total", {"via": via}) or 0.0


def query(base: str, **params) -> str:
    return f"{base}/turn?{urllib.parse.urlencode(params)}" if params else f"{base}/turn"


# --- the pure function


def test_password_is_base64_of_hmac_sha1():
    # RFC 2202 test case 2 (HMAC-SHA1), base64-encoded.
    assert turn_password("Jefe", "what do ya want for nothing?") == "7/zfauXrL6LSdBbV8YTfnCWafHk="
    # computed with: printf %s 1700003600:alice | openssl dgst -sha1 -hmac north-secret -binary | base64
    assert turn_password("north-secret", "1700003600:alice") == "Ji4axghh2/aljHmsPgH9mtDGVLw="


def test_issue_credentials_format():
    uris = ["turn:t.example:3478?transport=udp", "turns:t.example:5349?transport=tcp"]
    c = issue_credentials("north-secret", "alice", 3600, uris, now=1700000000.7)
    assert c == {
        "username": "1700003600:alice",
        "password": "Ji4axghh2/aljHmsPgH9mtDGVLw=",
        "ttl": 3600,
        "uris": uris,
        "iceServers": [{"urls": uris, "username": "1700003600:alice",
                        "credential": "Ji4axghh2/aljHmsPgH9mtDGVLw="}],
    }
    expired = issue_credentials("s", "bob", -60, uris, now=1700000000)
    assert expired["username"] == "1699999940:bob"


def settings_from(tmp_path, **env):
    empty = tmp_path / "empty.conf"
    empty.touch()
    return config.load(environ={"SSCONTROL_CONFIG": str(empty), **env})


def test_user_part_rules(tmp_path):
    settings = settings_from(tmp_path)
    assert valid_user("alice") and valid_user("a b.c-d_e@x") and valid_user("x" * 128)
    for bad in ("", "a:b", "x" * 129, "tab\there", "nl\n", "\x00", 5, None):
        assert not valid_user(bad), bad
    assert pick_user(settings) == settings.turn_user == "sscontrol"
    assert pick_user(settings, requested="janus") == "janus"
    assert pick_user(settings, device_id="device-7", requested="janus") == "device-7"
    assert pick_user(settings, device_id="odd:device") == "sscontrol"  # not a valid user part
    with pytest.raises(ValueError):
        pick_user(settings, requested="a:b")


def test_api_key_comparison():
    assert any_secret(("a", "bb"), "bb")
    assert not any_secret(("a", "bb"), "b")
    assert not any_secret(("a", "bb"), "bbb")
    assert not any_secret((), "")


def test_one_issuer_for_http_websocket_and_refresh():
    """/turn, {"type": "turn"} and the refresh push all go through turn.issue."""
    import inspect
    import re

    from sscontrold import turn
    source = inspect.getsource(turn)
    assert len(re.findall(r"[^_]issue_credentials\(", source)) == 2  # its definition and turn.issue
    assert "issue_credentials(" in inspect.getsource(turn.issue)
    assert source.count('"turn.issued"') == 1


def test_resource_reads_settings_at_request_time_and_counts(tmp_path):
    """A reload (node.apply) changes the signing secret for the very next request."""
    base = {"SSCONTROL_TURN_URIS": "turn:127.0.0.1:3478", "SSCONTROL_TURN_ALLOW_ANONYMOUS": "true"}
    node = SignalingNode(settings_from(tmp_path, **base), Clock(), Events())
    node.clock.advance(1_800_000_000)
    resource = TurnResource(node)

    def get() -> tuple[int, dict]:
        request = DummyRequest([b""])
        body = resource.render(request)
        return request.responseCode, json.loads(body)

    assert get() == (404, {"success": False, "error": "TURN is not configured", "code": "turn_unavailable"})
    node.apply(settings_from(tmp_path, **base, SSCONTROL_TURN_SECRETS="first"))
    before = issued("http")
    code, first = get()
    assert code == 200 and first["password"] == turn_password("first", first["username"])
    assert first["username"] == "1800086400:sscontrol"
    assert issued("http") == before + 1
    node.apply(settings_from(tmp_path, **base, SSCONTROL_TURN_SECRETS="second first"))
    code, second = get()
    assert code == 200 and second["password"] == turn_password("second", second["username"])


class FakeClient:
    def __init__(self, device_id=None):
        self.device_id = device_id
        self.address = "127.0.0.1"
        self.peer_id = "peer_x"
        self.sent = []

    def send(self, message):
        self.sent.append(message)

    def schedule(self, name, delay, f):  # the refresh timer: tests/test_turn_refresh.py
        pass


def test_websocket_handler_counts_and_refuses_when_unconfigured(tmp_path):
    base = {"SSCONTROL_TURN_URIS": "turn:127.0.0.1:3478", "SSCONTROL_TURN_ALLOW_ANONYMOUS": "true"}
    node = SignalingNode(settings_from(tmp_path, **base), Clock(), Events())
    handler = websocket_turn(node)
    client = FakeClient()
    with pytest.raises(BadMessage) as refused:
        handler(client, {"type": "turn"})
    assert (refused.value.message, refused.value.code) == ("TURN is not configured", "turn_unavailable")
    node.apply(settings_from(tmp_path, **base, SSCONTROL_TURN_SECRETS="s1 s2"))
    before = issued("websocket")
    handler(client, {"type": "turn", "username": "viewer"})
    [reply] = client.sent
    assert reply["type"] == "turn_credentials" and reply["username"].endswith(":viewer")
    assert reply["password"] == turn_password("s1", reply["username"])
    assert issued("websocket") == before + 1
    with pytest.raises(BadMessage):
        handler(client, {"type": "turn", "username": "x" * 129})


# --- against coturn


def test_credentials_from_get_turn_relay_data_through_coturn(daemon_factory, coturn_factory):
    turn = coturn_factory(SECRET, OLD_SECRET)
    d = daemon_factory(env=turn_env(turn))
    before = time.time()
    status, c = http_json("GET", query(d.base, username="alice"))
    assert status == 200, c
    expiry, user = c["username"].split(":", 1)
    assert user == "alice" and c["ttl"] == 86400
    assert before + 86400 - 2 <= int(expiry) <= time.time() + 86400 + 1
    assert c["uris"][0] == turn.uri and c["iceServers"] == [
        {"urls": c["uris"], "username": c["username"], "credential": c["password"]}]
    result = allocate(turn, c["username"], c["password"], relay_data=True)
    assert result.ok and result.received >= 1, result.output
    assert turn.allocated(c["username"]) and not turn.refused(c["username"])


def test_coturn_refuses_expired_and_wrongly_signed(coturn_factory):
    turn = coturn_factory(SECRET, OLD_SECRET)
    expired = issue_credentials(SECRET, "late", 60, [turn.uri], now=time.time() - 120)
    forged = issue_credentials("not-the-secret", "mallory", 600, [turn.uri], now=time.time())
    fresh = issue_credentials(OLD_SECRET, "listed", 600, [turn.uri], now=time.time())
    for c in (expired, forged):
        result = allocate(turn, c["username"], c["password"])
        assert not result.ok and result.returncode == 255, result.output
        assert "Cannot complete Allocation" in result.output
        assert turn.refused(c["username"]) and not turn.allocated(c["username"])
    # the control: any secret coturn lists is accepted
    result = allocate(turn, fresh["username"], fresh["password"])
    assert result.ok, result.output
    assert turn.allocated(fresh["username"])


def test_secret_rotation(daemon_factory, coturn_factory):
    # Step 1 of a rotation: coturn lists old and new, the daemon signs with the new one.
    both = coturn_factory(OLD_SECRET, SECRET)
    d = daemon_factory(env=turn_env(both, secrets=(SECRET, OLD_SECRET)))
    status, c = http_json("GET", query(d.base))
    assert status == 200 and c["password"] == turn_password(SECRET, c["username"])
    assert c["username"].endswith(":sscontrol")
    assert allocate(both, c["username"], c["password"]).ok
    # The old secret retired from coturn: a daemon still signing with it is refused.
    only_new = coturn_factory(SECRET)
    stale = daemon_factory(env=turn_env(only_new, secrets=(OLD_SECRET,)))
    status, c = http_json("GET", query(stale.base, username="stale"))
    assert status == 200
    result = allocate(only_new, c["username"], c["password"])
    assert not result.ok and result.returncode == 255, result.output
    assert only_new.refused(c["username"])


# --- HTTP auth forms


def test_http_api_key_forms(daemon_factory):
    d = daemon_factory(env=turn_env(SSCONTROL_API_KEYS=f"{KEY} {OTHER_KEY}"))
    ok = [
        ("GET", query(d.base, username="svc"), None, {"Authorization": f"Bearer {OTHER_KEY}"}),
        ("GET", query(d.base, service="turn", username="svc", key=KEY), None, {}),  # draft-uberti
        ("GET", query(d.base, service="turn", api=KEY), None, {}),  # Janus (GET)
        ("POST", query(d.base, service="turn", api=KEY),  # Janus (POST): the same in the body
         f"service=turn&api={KEY}".encode(), {"content-type": "application/x-www-form-urlencoded"}),
        ("POST", query(d.base), json.dumps({"key": OTHER_KEY, "username": "svc"}).encode(),
         {"content-type": "application/json"}),
    ]
    for method, url, body, headers in ok:
        status, h, data = http(method, url, body, headers)
        c = json.loads(data)
        assert status == 200, (method, url, c)
        assert c["password"] == turn_password(SECRET, c["username"])
        assert c["username"].split(":", 1)[1] in ("svc", "sscontrol")
        assert h["Cache-Control"] == "no-store"
    refused = [
        ("GET", query(d.base), None, {}),
        ("GET", query(d.base), None, {"Authorization": "Bearer wrong-key"}),
        ("GET", query(d.base), None, {"Authorization": f"Basic {KEY}"}),
        ("GET", query(d.base, key="wrong-key"), None, {}),
        ("GET", query(d.base, api=KEY + "x"), None, {}),
        ("POST", query(d.base), b'{"api": "wrong-key"}', {"content-type": "application/json"}),
    ]
    for method, url, body, headers in refused:
        status, h, data = http(method, url, body, headers)
        c = json.loads(data)
        assert status == 401 and c["success"] is False, (method, url, c)
        assert "wrong-key" not in data.decode() and KEY not in data.decode()
        assert h["WWW-Authenticate"].startswith("Bearer")
    status, c = http_json("GET", query(d.base, key=KEY, service="stun"))
    assert status == 400
    status, c = http_json("GET", query(d.base, key=KEY, username="a:b"))
    assert status == 400 and "username" in c["error"]
    status, _, data = http("DELETE", query(d.base, key=KEY))
    assert status == 405


def test_http_hmac_token_and_replay(daemon_factory):
    d = daemon_factory(env=turn_env(SSCONTROL_API_KEYS=KEY))
    token = auth_message(KEY, device_id="cam-42")
    fields = {k: token[k] for k in ("device_id", "timestamp", "nonce", "token")}
    # the device id is the user part, whatever username is asked for
    status, c = http_json("GET", query(d.base, username="someone-else", **fields))
    assert status == 200 and c["username"].endswith(":cam-42"), c
    assert c["password"] == turn_password(SECRET, c["username"])
    status, c = http_json("GET", query(d.base, **fields))
    assert status == 401 and c == {"success": False, "error": "authentication failed: nonce already used",
                                       "code": "unauthorized"}
    # a JSON POST body, as the WebSocket auth message (with its empty api_key) is
    posted = auth_message(KEY, device_id="cam-43")
    status, c = http_json("POST", query(d.base), posted)
    assert status == 200 and c["username"].endswith(":cam-43"), c
    status, c = http_json("POST", query(d.base), posted)
    assert status == 401 and "nonce" in c["error"]
    bad = auth_message("not-the-key", device_id="cam-44")
    status, c = http_json("POST", query(d.base), bad)
    assert status == 401 and c["error"] == "authentication failed: invalid token"
    old = auth_message(KEY, device_id="cam-45", timestamp=int(time.time()) - 3600)
    status, c = http_json("POST", query(d.base), old)
    assert status == 401 and "too old" in c["error"]
    status, c = http_json("GET", query(d.base, device_id="cam-46", nonce="n"))
    assert status == 400


def test_open_when_auth_is_off_and_404_when_not_configured(daemon_factory):
    d = daemon_factory(env=turn_env())
    status, c = http_json("GET", query(d.base))
    assert status == 200 and c["username"].endswith(":sscontrol")
    status, c = http_json("GET", query(d.base, key="anything", username="bob"))
    assert status == 200 and c["username"].endswith(":bob")
    bare = daemon_factory()
    for method in ("GET", "POST"):
        status, _, data = http(method, query(bare.base, key="x"), b"" if method == "POST" else None)
        assert status == 404 and json.loads(data) == {"success": False, "error": "TURN is not configured",
                                                      "code": "turn_unavailable"}
    p = connect(bare.ws)
    assert p.request({"type": "turn"}) == {"type": "error", "message": "TURN is not configured",
                                           "code": "turn_unavailable"}
    p.close()


def test_cors(daemon_factory):
    d = daemon_factory(env=turn_env())
    status, h, body = http("OPTIONS", query(d.base), headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 204 and body == b""
    assert h["Access-Control-Allow-Origin"] == "*"
    assert {"GET", "POST"} <= {m.strip() for m in h["Access-Control-Allow-Methods"].split(",")}
    assert {"authorization", "content-type"} <= {m.strip().lower() for m in
                                                 h["Access-Control-Allow-Headers"].split(",")}
    status, h, _ = http("GET", query(d.base), headers={"Origin": "https://app.example"})
    assert status == 200 and h["Access-Control-Allow-Origin"] == "*"

    strict = daemon_factory(env=turn_env(SSCONTROL_CORS_ORIGINS="https://app.example"))
    status, h, _ = http("GET", query(strict.base), headers={"Origin": "https://app.example"})
    assert status == 200 and h["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Origin" in h["Vary"]
    status, h, _ = http("OPTIONS", query(strict.base), headers={"Origin": "https://evil.example"})
    assert status == 204 and "Access-Control-Allow-Origin" not in h


# --- WebSocket


def test_websocket_turn(daemon_factory, coturn_factory):
    turn = coturn_factory(SECRET)
    d = daemon_factory(env=turn_env(turn, SSCONTROL_API_KEYS=KEY))
    p = connect(d.ws)
    assert p.request({"type": "turn"}) == {"type": "error", "message": "authentication required",
                                           "code": "auth_required"}
    assert p.request(auth_message(KEY, device_id="desk-1"))["type"] == "auth_success"
    reply = p.request({"type": "turn", "username": "ignored"})
    assert reply["type"] == "turn_credentials", reply
    assert reply["username"].endswith(":desk-1") and reply["ttl"] == 86400
    assert reply["password"] == turn_password(SECRET, reply["username"])
    assert reply["iceServers"][0]["credential"] == reply["password"]
    assert reply["uris"][0] == turn.uri
    p.close()
    assert allocate(turn, reply["username"], reply["password"]).ok
    # auth off: the client may name its user
    open_d = daemon_factory(env=turn_env(turn))
    q = connect(open_d.ws)
    assert q.request({"type": "turn", "username": "viewer"})["username"].endswith(":viewer")
    assert q.request({"type": "turn", "username": "a:b"})["type"] == "error"
    q.close()


def test_no_secret_or_password_in_the_log_and_metrics(daemon_factory):
    d = daemon_factory(env=turn_env(SSCONTROL_API_KEYS=KEY, SSCONTROL_LOG_LEVEL="debug"))
    passwords = []
    status, c = http_json("GET", query(d.base, service="turn", username="svc", key=KEY))
    passwords.append(c["password"])
    status, h, data = http("GET", query(d.base), headers={"Authorization": f"Bearer {KEY}"})
    passwords.append(json.loads(data)["password"])
    http("GET", query(d.base, key="wrong-key-LEAKCHECK"))
    http("GET", query(d.base, api="wrong-api-LEAKCHECK"))
    http("GET", query(d.base), headers={"Authorization": "Bearer wrong-bearer-LEAKCHECK"})
    token = auth_message(KEY, device_id="cam-9")
    status, c = http_json("POST", query(d.base), token)
    passwords.append(c["password"])
    p = connect(d.ws)
    p.request(auth_message(KEY, device_id="cam-10"))
    passwords.append(p.request({"type": "turn"})["password"])
    p.close()
    status, _, metrics = http("GET", d.admin + "/metrics")
    assert status == 200
    assert 'sscontrol_turn_credentials_issued_total{via="http"} 3.0' in metrics.decode()
    assert 'sscontrol_turn_credentials_issued_total{via="websocket"} 1.0' in metrics.decode()
    time.sleep(0.2)
    log = d.log()
    assert "turn.issued" in log and "auth.refused" in log  # it did log the events...
    for secret in (KEY, SECRET, OLD_SECRET, "LEAKCHECK", token["token"], *passwords):
        assert secret not in log, secret  # ...but never a key, secret, token or password
