// Injected into each test page: a signaling client on the browser's own WebSocket,
// the auth token computed with WebCrypto, and one side of a WebRTC call.
// Only standard browser APIs; nothing here knows the server's internals.
(() => {
  class Sig {
    constructor(url, protocols) {
      this.queue = [];
      this.waiters = [];
      this.handler = null; // when set (during a call), messages go to it instead of the queue
      this.closed = new Promise((resolve) => { this._closed = resolve; });
      this.opened = new Promise((resolve, reject) => {
        this.ws = protocols == null ? new WebSocket(url) : new WebSocket(url, protocols);
        this.ws.onopen = () => resolve({ protocol: this.ws.protocol, extensions: this.ws.extensions });
        this.ws.onerror = () => reject(new Error("WebSocket error event"));
        this.ws.onclose = (e) => {
          this._closed({ code: e.code, reason: e.reason, wasClean: e.wasClean });
          reject(new Error(`closed before open: ${e.code}`));
        };
        this.ws.onmessage = (e) => {
          const message = JSON.parse(e.data);
          if (this.handler) { this.handler(message); return; }
          const waiter = this.waiters.shift();
          if (waiter) waiter(message); else this.queue.push(message);
        };
      });
    }

    send(message) { this.ws.send(JSON.stringify(message)); }

    next(ms = 5000) {
      if (this.queue.length) return Promise.resolve(this.queue.shift());
      return new Promise((resolve, reject) => {
        const waiter = (message) => { clearTimeout(timer); resolve(message); };
        const timer = setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          reject(new Error(`no message within ${ms} ms`));
        }, ms);
        this.waiters.push(waiter);
      });
    }

    request(message, ms) { this.send(message); return this.next(ms); }
  }

  // The auth message of docs/protocol.md: token = hex(HMAC-SHA256(key, "device:ts:nonce")).
  async function authFields(apiKey, deviceId) {
    const timestamp = Math.floor(Date.now() / 1000);
    const nonce = crypto.randomUUID();
    const key = await crypto.subtle.importKey("raw", new TextEncoder().encode(apiKey),
                                              { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    const mac = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(`${deviceId}:${timestamp}:${nonce}`));
    const token = [...new Uint8Array(mac)].map((b) => b.toString(16).padStart(2, "0")).join("");
    return { device_id: deviceId, timestamp, nonce, token };
  }

  // One side of a call through TURN only. The host makes the offer and the DataChannel;
  // the viewer answers. Signaling goes through `sig`; resolves once the DataChannel has
  // carried one message each way, with what getStats says of the selected pair.
  function call(sig, role, peerId, iceServers) {
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: "relay" });
    window.pc = pc;
    const received = new Promise((resolveReceived, rejectReceived) => {
      const onChannel = (channel) => {
        window.channel = channel;
        channel.onmessage = (e) => {
          if (role === "viewer") channel.send(`pong from viewer to ${e.data}`);
          resolveReceived(e.data);
        };
        channel.onopen = () => { if (role === "host") channel.send("ping from host"); };
      };
      if (role === "host") onChannel(pc.createDataChannel("control"));
      else pc.ondatachannel = (e) => onChannel(e.channel);
      pc.oniceconnectionstatechange = () => {
        if (pc.iceConnectionState === "failed") rejectReceived(new Error("ICE failed"));
      };
    });
    const errors = [];
    pc.onicecandidateerror = (e) => errors.push(`${e.url} ${e.errorCode} ${e.errorText}`);
    pc.onicecandidate = (e) => {
      if (e.candidate) {
        sig.send({ type: "ice", from: "", to: peerId, candidate: e.candidate.candidate,
                   sdp_mid: e.candidate.sdpMid, sdp_mline_index: e.candidate.sdpMLineIndex });
      }
    };
    sig.handler = async (m) => {
      if (m.type === "offer") {
        await pc.setRemoteDescription({ type: "offer", sdp: m.sdp });
        await pc.setLocalDescription(await pc.createAnswer());
        sig.send({ type: "answer", from: "", to: peerId, sdp: pc.localDescription.sdp });
      } else if (m.type === "answer") {
        await pc.setRemoteDescription({ type: "answer", sdp: m.sdp });
      } else if (m.type === "ice") {
        await pc.addIceCandidate({ candidate: m.candidate, sdpMid: m.sdp_mid, sdpMLineIndex: m.sdp_mline_index });
      }
    };
    const start = role === "host"
      ? pc.createOffer().then((offer) => pc.setLocalDescription(offer)).then(
        () => sig.send({ type: "offer", from: "", to: peerId, sdp: pc.localDescription.sdp }))
      : Promise.resolve();
    const timeout = new Promise((_, reject) => setTimeout(
      () => reject(new Error(`no DataChannel message within 20 s; ICE ${pc.iceConnectionState}; ${errors}`)), 20000));
    return start.then(() => Promise.race([received, timeout])).then(async (message) => {
      // Wait until the viewer's answer (sent after the host's ping) is in, for the host.
      return { message, pair: await selectedPair(pc) };
    });
  }

  async function selectedPair(pc) {
    const stats = await pc.getStats();
    let pairId = null;
    stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId; });
    const pair = pairId && stats.get(pairId);
    if (!pair) return null;
    const local = stats.get(pair.localCandidateId);
    const remote = stats.get(pair.remoteCandidateId);
    return { local: local.candidateType, remote: remote.candidateType, relayProtocol: local.relayProtocol,
             state: pair.state };
  }

  window.Sig = Sig;
  window.authFields = authFields;
  window.call = call;
})();
