"""One full WebRTC call between two Chromium tabs, signaled only through sscontrold,
relayed only through a real coturn, with TURN credentials from the daemon.

The host tab takes its credentials from ``POST /turn`` (an HMAC token, never the API
key, in the page), the viewer tab from ``{"type": "turn"}`` over its WebSocket. Both open
an RTCPeerConnection with ``iceTransportPolicy: "relay"``; the DataChannel carries a
message each way; ``getStats()`` shows a relay/relay pair over the TURN transport the
daemon handed out (udp, then tcp).
"""

from __future__ import annotations

import pytest

from browser.conftest import API_KEY

pytestmark = pytest.mark.browser

TURN_SECRET = "browser-turn-secret-0123456789"

OPEN_AND_AUTH = """async ([url, key, device]) => {
  window.sig = new Sig(url);
  await window.sig.opened;
  const reply = await window.sig.request({type: 'auth', api_key: '', ...(await authFields(key, device))}, 5000);
  if (reply.type !== 'auth_success') throw new Error(JSON.stringify(reply));
}"""
REQUEST = "([message, ms]) => window.sig.request(message, ms)"
NEXT = "(ms) => window.sig.next(ms)"
HTTP_TURN = """async ([key, device]) => {
  const response = await fetch('/turn', {method: 'POST', headers: {'content-type': 'application/json'},
                                         body: JSON.stringify(await authFields(key, device))});
  return {status: response.status, body: await response.json()};
}"""
CALL = "([role, peer, iceServers]) => call(window.sig, role, peer, iceServers)"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_call_through_coturn_with_credentials_from_the_daemon(tabs, daemon_factory, coturn_factory, transport):
    turn = coturn_factory(TURN_SECRET)
    uri = f"turn:127.0.0.1:{turn.port}?transport={transport}"
    daemon = daemon_factory(env={"SSCONTROL_API_KEY": API_KEY, "SSCONTROL_TURN_SECRETS": TURN_SECRET,
                                 "SSCONTROL_TURN_URIS": uri})
    host, viewer = tabs(daemon), tabs(daemon)
    host.evaluate(OPEN_AND_AUTH, [daemon.ws, API_KEY, "host-desk"])
    viewer.evaluate(OPEN_AND_AUTH, [daemon.ws, API_KEY, "viewer-laptop"])
    host_id = host.evaluate(REQUEST, [{"type": "join", "room_id": "call"}, 5000])["peer_id"]
    viewer_id = viewer.evaluate(REQUEST, [{"type": "join", "room_id": "call"}, 5000])["peer_id"]
    assert host.evaluate(NEXT, 5000) == {"type": "new_peer", "peer_id": viewer_id}

    over_http = host.evaluate(HTTP_TURN, [API_KEY, "host-desk"])
    assert over_http["status"] == 200, over_http
    over_ws = viewer.evaluate(REQUEST, [{"type": "turn"}, 5000])
    assert over_ws["type"] == "turn_credentials", over_ws
    for credentials in (over_http["body"], over_ws):
        assert credentials["iceServers"] == [{"urls": [uri], "username": credentials["username"],
                                              "credential": credentials["password"]}]

    # Both sides run at once: the host's offer needs the viewer's handler in place.
    viewer.evaluate("([peer, servers]) => { window.viewerCall = call(window.sig, 'viewer', peer, servers); }",
                    [host_id, over_ws["iceServers"]])
    host_result = host.evaluate(CALL, ["host", viewer_id, over_http["body"]["iceServers"]])
    viewer_result = viewer.evaluate("() => window.viewerCall")

    assert host_result["message"] == "pong from viewer to ping from host"
    assert viewer_result["message"] == "ping from host"
    for result in (host_result, viewer_result):
        pair = result["pair"]
        assert pair is not None, result
        assert (pair["local"], pair["remote"]) == ("relay", "relay"), pair
        assert pair["relayProtocol"] == transport, pair
    # coturn saw both users allocate with the daemon's credentials.
    assert turn.allocated(over_http["body"]["username"]) and turn.allocated(over_ws["username"])
