"""Chromium's own ``new WebSocket(...)`` against the daemon: ws:// and wss://, paths /
and /ws, with and without a subprotocol offer, auth off and on. Two tabs (a host and a
viewer) join, see each other, relay offer, answer and ice, and the host sees the viewer
leave when its tab closes. docs/clients.md lists these results."""

from __future__ import annotations

import pytest

from browser.conftest import API_KEY

pytestmark = pytest.mark.browser

OPEN = "async ([url, protocols]) => { window.sig = new Sig(url, protocols); return await window.sig.opened; }"
REQUEST = "([message, ms]) => window.sig.request(message, ms)"
NEXT = "(ms) => window.sig.next(ms)"
SEND = "(message) => window.sig.send(message)"
AUTH = ("async ([key, device]) => window.sig.request({type: 'auth', api_key: '', ...(await authFields(key, device))},"
        " 5000)")


@pytest.fixture(params=["ws", "wss"])
def scheme(request):
    return request.param


@pytest.fixture(params=["auth-off", "auth-on"])
def auth(request):
    return request.param == "auth-on"


@pytest.fixture
def daemon(package_daemons, scheme, auth, pki_files):
    env = {}
    if scheme == "wss":
        env.update(SSCONTROL_TLS_CERT=str(pki_files[0]), SSCONTROL_TLS_KEY=str(pki_files[1]))
    if auth:
        env["SSCONTROL_API_KEY"] = API_KEY
    return package_daemons((scheme, auth), env=env, tls=scheme == "wss")


@pytest.fixture(scope="module")
def pki_files(tmp_path_factory):
    from certs import PKI

    chain, key, _ = PKI(tmp_path_factory.mktemp("pki")).server()
    return chain, key


def ws_url(daemon, path: str) -> str:
    return f"{'wss' if daemon.tls else 'ws'}://127.0.0.1:{daemon.port}{path}"


@pytest.mark.parametrize("protocols", [None, ["sscontrol"], ["desk.v2", "json"]],
                         ids=["no-subprotocol", "subprotocol", "other-subprotocols"])
@pytest.mark.parametrize("path", ["/", "/ws"])
def test_two_tabs_signal_through_the_daemon(tabs, daemon, auth, path, protocols):
    host, viewer = tabs(daemon), tabs(daemon)
    url = ws_url(daemon, path)
    for tab, device in ((host, "host-desk"), (viewer, "viewer-laptop")):
        opened = tab.evaluate(OPEN, [url, protocols])
        # Compression is declined; an offered subprotocol is named back.
        assert opened == {"protocol": protocols[0] if protocols else "", "extensions": ""}, opened
        if auth:
            refused = tab.evaluate(REQUEST, [{"type": "join", "room_id": "x"}, 5000])
            assert refused["type"] == "error", refused  # nothing but auth before auth
            reply = tab.evaluate(AUTH, [API_KEY, device])
            assert reply["type"] == "auth_success", reply

    peers = host.evaluate(REQUEST, [{"type": "join", "room_id": "desk-1"}, 5000])
    assert peers["type"] == "peers" and peers["peers"] == []
    host_id = peers["peer_id"]
    peers = viewer.evaluate(REQUEST, [{"type": "join", "room_id": "desk-1"}, 5000])
    assert peers["peers"] == [{"id": host_id}]
    viewer_id = peers["peer_id"]
    assert host.evaluate(NEXT, 5000) == {"type": "new_peer", "peer_id": viewer_id}

    viewer.evaluate(SEND, {"type": "offer", "from": host_id, "to": host_id, "sdp": "v=0\r\no=viewer"})
    assert host.evaluate(NEXT, 5000) == {"type": "offer", "from": viewer_id, "to": host_id, "sdp": "v=0\r\no=viewer"}
    host.evaluate(SEND, {"type": "answer", "from": "", "to": viewer_id, "sdp": "v=0\r\no=host"})
    assert viewer.evaluate(NEXT, 5000) == {"type": "answer", "from": host_id, "to": viewer_id,
                                           "sdp": "v=0\r\no=host"}
    candidate = {"type": "ice", "from": "", "to": host_id, "candidate": "candidate:1 1 udp 2122260223 "
                 "192.0.2.1 50000 typ host", "sdp_mid": "0", "sdp_mline_index": 0}
    viewer.evaluate(SEND, candidate)
    assert host.evaluate(NEXT, 5000) == {**candidate, "from": viewer_id}

    viewer.close()  # the tab goes: the browser closes its WebSocket
    assert host.evaluate(NEXT, 5000) == {"type": "peer_left", "peer_id": viewer_id}
