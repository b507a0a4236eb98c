"""A WebRTC call that outlives its TURN credentials (docs/turn-refresh.md).

With ``turn_ttl`` 10 s, two Chromium tabs ask for TURN over their WebSocket once, call
each other through a real coturn (relay only), and from then on take the credentials
the daemon pushes at ~80 % of each set's life (``pc.setConfiguration``). After the first
set has expired, the host restarts ICE (``pc.restartIce()`` and a new offer/answer
through signaling): both sides allocate new relays with pushed credentials, and the
DataChannel keeps carrying messages through three refresh periods (~27 s).
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.browser

SECRET = "refresh-turn-secret-0123456789"
TTL = 10

OPEN = """async ([url]) => {
  window.sig = new Sig(url);
  await window.sig.opened;
}"""
REQUEST = "([message, ms]) => window.sig.request(message, ms)"
NEXT = "(ms) => window.sig.next(ms)"
CALL = "([role, peer, iceServers]) => call(window.sig, role, peer, iceServers)"

# Once the call is up: pushed credentials go into the connection's configuration (and
# are recorded); everything else still goes to call()'s handler (offers, answers, ice).
TAKE_PUSHES = """() => {
  const inner = window.sig.handler;
  window.pushes = [];
  window.sig.handler = (m) => {
    if (m.type === 'turn_credentials') {
      window.pushes.push({at: Date.now() / 1000, username: m.username, refresh: m.refresh === true});
      window.pc.setConfiguration({iceServers: m.iceServers, iceTransportPolicy: 'relay'});
      return;
    }
    return inner(m);
  };
}"""
# The host sends a tick every 500 ms; the viewer answers each (call()'s viewer side).
TICK = """() => {
  window.pongs = [];
  window.channel.onmessage = (e) => window.pongs.push(Date.now() / 1000);
  let n = 0;
  window.ticker = setInterval(() => {
    if (window.channel.readyState === 'open') window.channel.send(`tick ${n++}`);
  }, 500);
}"""
PUSHES = "() => window.pushes"
RESTART = """async ([peer]) => {
  const pc = window.pc;
  const before = pc.localDescription.sdp.match(/a=ice-ufrag:(\\S+)/)[1];
  pc.restartIce();
  await pc.setLocalDescription(await pc.createOffer());
  window.sig.send({type: 'offer', from: '', to: peer, sdp: pc.localDescription.sdp});
  const after = pc.localDescription.sdp.match(/a=ice-ufrag:(\\S+)/)[1];
  return {before, after, at: Date.now() / 1000};
}"""
# Until the selected pair is one of the new ICE generation (its local candidate has
# the new ufrag): the relays allocated after the restart carry the call.
RESTARTED = """async ([ufrag]) => {
  const pc = window.pc;
  let seen = null;
  for (let i = 0; i < 150; i++) {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    const local = pair && stats.get(pair.localCandidateId);
    seen = {state: pc.iceConnectionState, local: local && local.candidateType, ufrag: local && local.usernameFragment,
            relayProtocol: local && local.relayProtocol};
    if (seen.ufrag === ufrag && ['connected', 'completed'].includes(seen.state)) return seen;
    await new Promise((r) => setTimeout(r, 100));
  }
  return seen;
}"""
STATE = "() => ({channel: window.channel.readyState, ice: window.pc.iceConnectionState, pongs: window.pongs})"


def wait_pushes(tab, count: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        pushes = tab.evaluate(PUSHES)
        if len(pushes) >= count:
            return pushes
        assert time.monotonic() < deadline, f"only {len(pushes)} pushed credentials in {timeout} s"
        time.sleep(0.2)


def test_a_call_keeps_its_datachannel_through_refreshes_and_an_ice_restart_after_expiry(
        tabs, daemon_factory, coturn_factory):
    turn = coturn_factory(SECRET)
    daemon = daemon_factory("--turn-ttl", str(TTL), env={"SSCONTROL_TURN_SECRETS": SECRET,
                                                         "SSCONTROL_TURN_URIS": turn.uri,
                                                         "SSCONTROL_TURN_ALLOW_ANONYMOUS": "true"})
    host, viewer = tabs(daemon), tabs(daemon)
    for tab in (host, viewer):
        tab.evaluate(OPEN, [daemon.ws])
    host_id = host.evaluate(REQUEST, [{"type": "join", "room_id": "long-call"}, 5000])["peer_id"]
    viewer_id = viewer.evaluate(REQUEST, [{"type": "join", "room_id": "long-call"}, 5000])["peer_id"]
    assert host.evaluate(NEXT, 5000) == {"type": "new_peer", "peer_id": viewer_id}
    first = {name: tab.evaluate(REQUEST, [{"type": "turn"}, 5000]) for name, tab in
             (("host", host), ("viewer", viewer))}
    assert all(c["type"] == "turn_credentials" and c["ttl"] == TTL for c in first.values()), first
    first_expiry = max(int(c["username"].split(":")[0]) for c in first.values())

    viewer.evaluate("([peer, servers]) => { window.viewerCall = call(window.sig, 'viewer', peer, servers); }",
                    [host_id, first["viewer"]["iceServers"]])
    assert host.evaluate(CALL, ["host", viewer_id, first["host"]["iceServers"]])["pair"]["local"] == "relay"
    viewer.evaluate("() => window.viewerCall")
    for tab in (host, viewer):
        tab.evaluate(TAKE_PUSHES)
    host.evaluate(TICK)

    # Two refreshes each; by the second, the first set has expired.
    pushes = {"host": wait_pushes(host, 2, 2 * TTL), "viewer": wait_pushes(viewer, 2, 2 * TTL)}
    for side in pushes.values():
        assert all(p["refresh"] for p in side)
        assert len({p["username"] for p in side}) == 2
    while time.time() <= first_expiry + 1:
        time.sleep(0.2)
    assert host.evaluate(STATE)["channel"] == "open"

    restart = host.evaluate(RESTART, [viewer_id])
    assert restart["before"] != restart["after"]
    after = host.evaluate(RESTARTED, [restart["after"]])
    assert after["state"] in ("connected", "completed") and after["local"] == "relay", after
    assert after["ufrag"] == restart["after"], after  # the selected pair is of the new ICE generation
    # coturn allocated the new relays with pushed (not the expired first) credentials
    fresh = [p["username"] for side in pushes.values() for p in side] + \
        [p["username"] for tab in (host, viewer) for p in tab.evaluate(PUSHES)]
    deadline = time.monotonic() + 5
    while not any(turn.allocated(u) for u in set(fresh)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(turn.allocated(u) for u in set(fresh)), turn.log()[-2000:]

    # A third refresh period, with the DataChannel carrying ticks all along.
    wait_pushes(host, 3, TTL + 2)
    state = host.evaluate(STATE)
    assert state["channel"] == "open" and state["ice"] in ("connected", "completed"), state
    pongs = state["pongs"]
    assert len([t for t in pongs if t > restart["at"] + 1]) >= 4, (restart, pongs[-10:])
    assert pongs[-1] > time.time() - 2  # still answering now
    gaps = [b - a for a, b in zip(pongs, pongs[1:], strict=False)]
    assert max(gaps) < 5, gaps  # never a long silence, restart included
