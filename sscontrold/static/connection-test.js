"use strict";
// The connection test (docs/connection-test.md): runs in the user's own browser, from
// the daemon's own origin, and reports each step with its timing, a verdict and advice.
// The API key typed in is used to compute the auth token here and is never sent, stored
// or put in the report; neither is a TURN password.
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const rawPath = params.get("ws_path") || "/ws";
  const wsPath = /^\/[A-Za-z0-9._~\/-]{0,200}$/.test(rawPath) ? rawPath : "/ws";
  const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${wsPath}`;
  const STEP_TIMEOUT = 10000;
  const RELAY_TIMEOUT = 12000;

  const ADVICE = {
    websocket: () => `The WebSocket to ${wsUrl} did not open. Check that the reverse proxy in front ` +
      "forwards the WebSocket upgrade on this path (nginx: proxy_http_version 1.1 with the Upgrade and " +
      "Connection headers, as in the shipped example), that no firewall or corporate proxy blocks it, and " +
      "that the path is the daemon's (/ws).",
    auth_required: () => "The server requires authentication: enter an API key above and run the test again.",
    auth_clock: (skew) => `The server refused the token's timestamp. This computer's clock is off by ` +
      `${skew} s from the server's: set it right (NTP). Tokens may be 300 s old and 30 s ahead by default.`,
    auth_key: () => "The server refused the key: check it against the server's api_key_file.",
    signaling: () => "The signaling server did not answer in time: it may be overloaded, or a proxy " +
      "buffers WebSocket frames (nginx: proxy_buffering off for this location).",
    turn_unavailable: () => "TURN is not configured on the server (turn_secrets / turn_secret_file and " +
      "turn_uris): calls between networks that block direct traffic will fail.",
    expired: (skew) => "The TURN credentials were already expired when they arrived: the server's clock " +
      `is wrong, or this computer's (off by ${skew} s).`,
    clock: (skew) => `This computer's clock is ${skew} s off the server's. HMAC auth and TURN credentials ` +
      "are time-based: set the clock right (NTP).",
    relay_401: (uri) => `The TURN server ${uri} refused the credentials (401 Unauthorized). Either the ` +
      "daemon's TURN secret is not coturn's static-auth-secret (wrong secret: compare turn_secret_file " +
      "with coturn's configuration), coturn's realm is not the one expected (wrong realm), or the " +
      "credentials had expired (expired credentials: compare the clocks of the daemon host and the TURN " +
      "server).",
    relay_unreachable: (uri) => `No relay from ${uri}: the TURN server did not answer. It may be stopped, ` +
      "or a firewall blocks its port between this browser and the server (udp and tcp 3478, tls 5349, and " +
      "the relay port range).",
    relay_other: (uri) => `The TURN server ${uri} gave relay candidates, but no DataChannel opened through ` +
      "them: a firewall may block the relay port range (min-port..max-port in coturn), or coturn refuses " +
      "to relay to the peer's address (denied-peer-ip).",
  };

  class Failure extends Error {
    constructor(message, advice) { super(message); this.advice = advice || ""; }
  }

  const state = { steps: [], skew: null, report: null };

  function addStep(name) {
    const step = { step: name, status: "running", ms: null, detail: "", advice: "" };
    const tr = document.createElement("tr");
    for (const cls of ["name", "status", "ms", "detail"]) {
      const td = document.createElement("td");
      td.className = cls;
      tr.appendChild(td);
    }
    $("steps").appendChild(tr);
    step.row = tr;
    state.steps.push(step);
    render(step);
    return step;
  }

  function render(step) {
    const [name, status, ms, detail] = step.row.children;
    name.textContent = step.step;
    status.textContent = { pass: "✔ pass", fail: "✘ fail", skip: "– skipped", warn: "! warning",
                           running: "… running" }[step.status];
    step.row.className = step.status;
    ms.textContent = step.ms == null ? "" : `${step.ms} ms`;
    detail.textContent = "";
    detail.appendChild(document.createTextNode(step.detail));
    if (step.advice) {
      const p = document.createElement("p");
      p.className = "advice";
      p.textContent = step.advice;
      detail.appendChild(p);
    }
  }

  async function run(name, fn) {
    const step = addStep(name);
    const t0 = performance.now();
    try {
      const result = await fn(step);
      step.status = (result && result.status) || "pass";
      step.detail = (result && result.detail) || "";
      step.advice = (result && result.advice) || "";
    } catch (e) {
      step.status = "fail";
      step.detail = e.message;
      step.advice = e.advice || "";
    }
    step.ms = Math.round(performance.now() - t0);
    render(step);
    return step;
  }

  function skip(name, why) {
    const step = addStep(name);
    step.status = "skip";
    step.detail = why;
    render(step);
  }

  // A WebSocket with "next message" waits.
  class Channel {
    constructor(url) {
      this.queue = [];
      this.waiter = null;
      this.opened = new Promise((resolve, reject) => {
        this.ws = new WebSocket(url);
        const timer = setTimeout(() => reject(new Failure(`no answer within ${STEP_TIMEOUT} ms`)), STEP_TIMEOUT);
        this.ws.onopen = () => { clearTimeout(timer); resolve(); };
        this.ws.onclose = (e) => {
          clearTimeout(timer);
          reject(new Failure(`closed before it opened (code ${e.code})`));
          if (this.waiter) this.waiter.reject(new Failure(`the server closed the WebSocket (code ${e.code}${e.reason ? ": " + e.reason : ""})`));
        };
        this.ws.onmessage = (e) => {
          let message;
          try { message = JSON.parse(e.data); } catch (_) { return; }
          if (this.waiter) { const w = this.waiter; this.waiter = null; w.resolve(message); } else this.queue.push(message);
        };
      });
    }

    request(message, ms = STEP_TIMEOUT) {
      this.ws.send(JSON.stringify(message));
      return this.next(ms);
    }

    next(ms = STEP_TIMEOUT) {
      if (this.queue.length) return Promise.resolve(this.queue.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { this.waiter = null; reject(new Failure(`no answer within ${ms} ms`, ADVICE.signaling())); }, ms);
        this.waiter = { resolve: (m) => { clearTimeout(timer); resolve(m); }, reject: (e) => { clearTimeout(timer); reject(e); } };
      });
    }

    close() { try { this.ws.close(1000); } catch (_) { /* already closed */ } }
  }

  async function authFields(apiKey, deviceId) {
    if (!crypto.subtle) throw new Failure("this page is not a secure context (use https://): no WebCrypto to compute the token");
    const timestamp = Math.floor(Date.now() / 1000);
    const nonce = crypto.randomUUID();
    const key = await crypto.subtle.importKey("raw", new TextEncoder().encode(apiKey),
                                              { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    const mac = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(`${deviceId}:${timestamp}:${nonce}`));
    const token = [...new Uint8Array(mac)].map((b) => b.toString(16).padStart(2, "0")).join("");
    return { type: "auth", device_id: deviceId, api_key: "", timestamp, nonce, token };
  }

  function refused(reply) {
    if (reply.type !== "error") return null;
    const advice = reply.code === "auth_required" ? ADVICE.auth_required() : "";
    return new Failure(`${reply.message} (${reply.code})`, advice);
  }

  // Two RTCPeerConnections in this page, relay only through one TURN URI, until a
  // DataChannel opens and carries a message.
  async function relay(uri, credentials) {
    const config = { iceServers: [{ urls: [uri], username: credentials.username, credential: credentials.password }],
                     iceTransportPolicy: "relay" };
    const a = new RTCPeerConnection(config);
    const b = new RTCPeerConnection(config);
    const errors = [];
    let relays = 0;
    for (const [pc, other] of [[a, b], [b, a]]) {
      pc.onicecandidate = (e) => {
        if (e.candidate) {
          if (e.candidate.type === "relay") relays += 1;
          other.addIceCandidate(e.candidate).catch(() => {});
        }
      };
      pc.onicecandidateerror = (e) => errors.push(e.errorCode);
    }
    try {
      const opened = new Promise((resolve) => {
        b.ondatachannel = (e) => { e.channel.onmessage = (m) => resolve(m.data); };
        const channel = a.createDataChannel("connection-test");
        channel.onopen = () => channel.send("hello through the relay");
      });
      await a.setLocalDescription(await a.createOffer());
      await b.setRemoteDescription(a.localDescription);
      await b.setLocalDescription(await b.createAnswer());
      await a.setRemoteDescription(b.localDescription);
      const timeout = new Promise((resolve) => setTimeout(() => resolve(null), RELAY_TIMEOUT));
      // Gathering over without a single relay candidate: no need to wait any longer.
      const gathered = new Promise((resolve) => {
        a.onicegatheringstatechange = () => { if (a.iceGatheringState === "complete" && !relays) resolve(null); };
      });
      const message = await Promise.race([opened, timeout, gathered]);
      if (message === null) {
        if (errors.includes(401)) throw new Failure(`refused: 401 (${relays} relay candidates)`, ADVICE.relay_401(uri));
        if (!relays) throw new Failure(`no relay candidate${errors.length ? " (errors " + [...new Set(errors)].join(", ") + ")" : ""}`, ADVICE.relay_unreachable(uri));
        throw new Failure(`${relays} relay candidates, no DataChannel within ${RELAY_TIMEOUT} ms`, ADVICE.relay_other(uri));
      }
      let protocol = "";
      (await a.getStats()).forEach((s) => { if (s.type === "local-candidate" && s.candidateType === "relay" && s.relayProtocol) protocol = s.relayProtocol; });
      return { detail: `DataChannel open through the relay${protocol ? " (" + protocol + ")" : ""}` };
    } finally {
      a.close();
      b.close();
    }
  }

  async function test() {
    state.steps = [];
    $("steps").textContent = "";
    $("verdict").textContent = "running…";
    $("verdict").className = "running";
    document.body.dataset.state = "running";
    const started = new Date().toISOString();
    const key = $("key").value;
    const device = $("device").value || "connection-test";
    let channel = null;
    let credentials = null;

    await run("server clock", async () => {
      const response = await fetch("/health", { cache: "no-store" });
      const date = response.headers.get("date");
      if (!date) return { status: "skip", detail: "the server sent no Date header" };
      state.skew = Math.round((Date.now() - Date.parse(date)) / 1000);
      if (Math.abs(state.skew) > 30) return { status: "warn", detail: `off by ${state.skew} s`, advice: ADVICE.clock(state.skew) };
      return { detail: `within ${Math.max(1, Math.abs(state.skew))} s of the server's` };
    });

    const ws = await run("WebSocket", async () => {
      try {
        channel = new Channel(wsUrl);
        await channel.opened;
      } catch (e) {
        throw new Failure(`${wsUrl}: ${e.message}`, ADVICE.websocket());
      }
      return { detail: `${wsUrl} open` };
    });
    if (ws.status !== "pass") {
      for (const name of ["auth", "signaling round trip", "TURN credentials", "TURN relay"]) skip(name, "needs the WebSocket");
      return finish(started);
    }

    if (key) {
      await run("auth", async () => {
        const reply = await channel.request(await authFields(key, device));
        if (reply.type === "auth_success") return { detail: reply.message };
        const skewed = /timestamp|clock|future|old/i.test(reply.message || "");
        throw new Failure(`${reply.message} (${reply.code})`, skewed ? ADVICE.auth_clock(state.skew ?? "?") : ADVICE.auth_key());
      });
    } else {
      skip("auth", "no API key entered");
    }

    await run("signaling round trip", async () => {
      const room = `connection-test-${crypto.randomUUID()}`;
      const joined = await channel.request({ type: "join", room_id: room });
      const bad = refused(joined);
      if (bad) throw bad;
      // A second connection of this page joins the same room: an offer goes from it to
      // the first, an answer comes back (the server relays only between two peers).
      const other = new Channel(wsUrl);
      try {
        await other.opened;
        if (key) {
          const reply = await other.request(await authFields(key, device));
          if (reply.type !== "auth_success") throw refused(reply) || new Failure("unexpected answer");
        }
        const t0 = performance.now();
        const peers = await other.request({ type: "join", room_id: room });
        if (refused(peers)) throw refused(peers);
        const arrived = await channel.next();
        if (arrived.type !== "new_peer") throw refused(arrived) || new Failure("unexpected answer");
        other.ws.send(JSON.stringify({ type: "offer", from: "", to: joined.peer_id, sdp: "connection test" }));
        const offer = await channel.next();
        if (offer.type !== "offer" || offer.from !== peers.peer_id) throw refused(offer) || new Failure("unexpected answer");
        channel.ws.send(JSON.stringify({ type: "answer", from: "", to: peers.peer_id, sdp: "connection test" }));
        const back = await other.next();
        if (back.type !== "answer" || back.from !== joined.peer_id) throw refused(back) || new Failure("unexpected answer");
        const ms = Math.round(performance.now() - t0);
        other.ws.close(1000);
        const left = await channel.next();  // the second connection's peer_left, so later steps start clean
        if (left.type !== "peer_left") throw refused(left) || new Failure("unexpected answer");
        return { detail: `two connections joined one room and relayed an offer and an answer in ${ms} ms` };
      } finally {
        if (other.ws.readyState === WebSocket.OPEN) other.ws.close(1000);
      }
    });

    const turn = await run("TURN credentials", async () => {
      const reply = await channel.request({ type: "turn" });
      if (reply.type === "error" && reply.code === "turn_unavailable") throw new Failure(reply.message, ADVICE.turn_unavailable());
      const bad = refused(reply);
      if (bad) throw bad;
      credentials = reply;
      const expiry = parseInt(String(reply.username).split(":")[0], 10);
      const serverNow = Date.now() / 1000 - (state.skew || 0);
      if (expiry <= serverNow) throw new Failure(`expired at ${new Date(expiry * 1000).toISOString()}`, ADVICE.expired(state.skew ?? "?"));
      const turnUris = reply.uris.filter((u) => /^turns?:/i.test(u));
      if (!turnUris.length) throw new Failure("no turn: or turns: URI in turn_uris", ADVICE.turn_unavailable());
      return { detail: `${turnUris.length} TURN URI(s), valid for ${Math.round(expiry - serverNow)} s` };
    });
    channel.close();

    if (turn.status !== "pass") {
      skip("TURN relay", "needs TURN credentials");
      return finish(started);
    }
    for (const uri of credentials.uris.filter((u) => /^turns?:/i.test(u))) {
      await run(`TURN relay ${uri}`, () => relay(uri, credentials));
    }
    return finish(started);
  }

  function finish(started) {
    const failed = state.steps.filter((s) => s.status === "fail");
    const verdict = failed.length ? `${failed.length} step(s) failed: ${failed.map((s) => s.step).join(", ")}` : "all checks passed";
    $("verdict").textContent = verdict;
    $("verdict").className = failed.length ? "fail" : "pass";
    state.report = {
      tool: "sscontrol-signaling connection test",
      page: location.origin + location.pathname,
      websocket_url: wsUrl,
      started_at: started,
      user_agent: navigator.userAgent,
      clock_skew_s: state.skew,
      verdict: failed.length ? "fail" : "pass",
      steps: state.steps.map(({ step, status, ms, detail, advice }) => ({ step, status, ms, detail, advice })),
    };
    $("report").value = JSON.stringify(state.report, null, 2);
    document.body.dataset.state = "done";
    return state.report;
  }

  $("form").addEventListener("submit", (e) => { e.preventDefault(); window.connectionTest = test(); });
  $("copy").addEventListener("click", async () => {
    $("report").select();
    try { await navigator.clipboard.writeText($("report").value); $("copy").textContent = "Copied"; } catch (_) { document.execCommand("copy"); }
  });
  window.connectionTest = test();
})();
