'use strict';
// Reference sscontrol signaling relay (docs/protocol.md section 1) on the `ws` package:
// what an operator would write in an afternoon. It is the yardstick sscontrold is
// benchmarked against (bench/run.py), not a product.
//
// Environment: SIGNALING_HOST (127.0.0.1), SIGNALING_PORT (8443), SSCONTROL_API_KEY
// (auth on when set), SSCONTROL_TLS_CERT + SSCONTROL_TLS_KEY (wss:// when both set),
// AUTH_WINDOW (300 s), AUTH_CLOCK_SKEW (30 s), MAX_PEERS_PER_ROOM (16).
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const https = require('https');
const { WebSocketServer } = require('ws');

const HOST = process.env.SIGNALING_HOST || '127.0.0.1';
const PORT = Number(process.env.SIGNALING_PORT || 8443);
const API_KEY = process.env.SSCONTROL_API_KEY || '';
const CERT = process.env.SSCONTROL_TLS_CERT;
const KEY = process.env.SSCONTROL_TLS_KEY;
const WINDOW = Number(process.env.AUTH_WINDOW || 300);
const SKEW = Number(process.env.AUTH_CLOCK_SKEW || 30);
const MAX_PEERS = Number(process.env.MAX_PEERS_PER_ROOM || 16);
const MAX_ID = 128;
const MAX_SDP = 60000;
const MAX_CANDIDATE = 2048;

const rooms = new Map(); // room id -> Map(peer id -> ws)
const nonces = new Map(); // sha256(device:timestamp:nonce) -> expiry (unix s)

function handler(req, res) {
  if (req.url === '/health') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ status: 'ok', rooms: rooms.size, connections: wss.clients.size }));
  } else {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('sscontrol reference relay\n');
  }
}

const server = CERT && KEY
  ? https.createServer({ cert: fs.readFileSync(CERT), key: fs.readFileSync(KEY) }, handler)
  : http.createServer(handler);
const wss = new WebSocketServer({ noServer: true, maxPayload: 65536 });

server.on('upgrade', (req, socket, head) => {
  const path = req.url.split('?')[0];
  if (path !== '/' && path !== '/ws') {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

function send(ws, message) {
  if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(message));
}

function error(ws, message) {
  send(ws, { type: 'error', message });
}

function str(msg, field, max, allowEmpty = false) {
  const v = msg[field];
  if (typeof v !== 'string') throw new Error(`missing or non-string field '${field}'`);
  if (!v && !allowEmpty) throw new Error(`field '${field}' must not be empty`);
  if (v.length > max) throw new Error(`field '${field}' is too long`);
  return v;
}

function checkToken(m) {
  const deviceId = str(m, 'device_id', MAX_ID);
  const nonce = str(m, 'nonce', MAX_ID);
  const token = str(m, 'token', 128);
  const ts = m.timestamp;
  if (!Number.isInteger(ts)) throw new Error("missing or non-integer field 'timestamp'");
  const now = Date.now() / 1000;
  if (ts > now + SKEW) return 'authentication failed: timestamp is in the future';
  if (ts < now - WINDOW) return 'authentication failed: timestamp is too old';
  const expected = crypto.createHmac('sha256', API_KEY).update(`${deviceId}:${ts}:${nonce}`).digest();
  const given = Buffer.from(token, 'hex');
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    return 'authentication failed: invalid token';
  }
  const key = crypto.createHash('sha256').update(`${deviceId}:${ts}:${nonce}`).digest('base64');
  if (nonces.has(key)) return 'authentication failed: nonce already used';
  nonces.set(key, ts + WINDOW + SKEW);
  return null;
}

setInterval(() => { // forget nonces whose token can no longer pass the timestamp check
  const now = Date.now() / 1000;
  for (const [key, expiry] of nonces) if (expiry <= now) nonces.delete(key);
}, 10000).unref();

function leave(ws) {
  const room = rooms.get(ws.room);
  if (!room) return;
  room.delete(ws.id);
  if (room.size === 0) rooms.delete(ws.room);
  for (const peer of room.values()) send(peer, { type: 'peer_left', peer_id: ws.id });
  ws.room = null;
}

const handlers = {
  auth(ws, m) {
    if (!API_KEY) {
      str(m, 'device_id', MAX_ID);
      send(ws, { type: 'auth_success', message: 'authentication is disabled on this server' });
      return;
    }
    const refused = checkToken(m);
    if (refused) return error(ws, refused);
    ws.authed = true;
    send(ws, { type: 'auth_success', message: 'authenticated' });
  },
  join(ws, m) {
    const roomId = str(m, 'room_id', MAX_ID);
    if (ws.room === roomId) return send(ws, { type: 'peers', peers: others(ws) });
    const room = rooms.get(roomId) || new Map();
    if (room.size >= MAX_PEERS) return error(ws, 'room full');
    leave(ws);
    const peers = [...room.keys()].map((id) => ({ id }));
    for (const peer of room.values()) send(peer, { type: 'new_peer', peer_id: ws.id });
    room.set(ws.id, ws);
    rooms.set(roomId, room);
    ws.room = roomId;
    send(ws, { type: 'peers', peers });
  },
  offer: (ws, m) => relay(ws, { type: 'offer', from: ws.id, to: str(m, 'to', MAX_ID), sdp: str(m, 'sdp', MAX_SDP) }),
  answer: (ws, m) => relay(ws, { type: 'answer', from: ws.id, to: str(m, 'to', MAX_ID), sdp: str(m, 'sdp', MAX_SDP) }),
  ice(ws, m) {
    const index = m.sdp_mline_index;
    if (!Number.isInteger(index) || index < 0 || index > 65535) throw new Error("bad field 'sdp_mline_index'");
    relay(ws, {
      type: 'ice', from: ws.id, to: str(m, 'to', MAX_ID), candidate: str(m, 'candidate', MAX_CANDIDATE, true),
      sdp_mid: str(m, 'sdp_mid', MAX_ID, true), sdp_mline_index: index,
    });
  },
};

function others(ws) {
  return [...rooms.get(ws.room).keys()].filter((id) => id !== ws.id).map((id) => ({ id }));
}

function relay(ws, message) {
  const room = rooms.get(ws.room);
  if (!room) return error(ws, 'join a room first');
  const target = room.get(message.to);
  if (!target || target === ws) return error(ws, 'unknown peer: no such peer in your room');
  send(target, message);
}

wss.on('connection', (ws) => {
  ws.id = 'peer_' + crypto.randomBytes(16).toString('base64url');
  ws.authed = !API_KEY;
  ws.room = null;
  ws.on('message', (data, isBinary) => {
    if (isBinary) return error(ws, 'binary frames are not supported: send JSON text frames');
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      return error(ws, 'invalid JSON');
    }
    if (m === null || typeof m !== 'object' || Array.isArray(m)) return error(ws, 'a message must be a JSON object');
    const handle = Object.hasOwn(handlers, m.type) ? handlers[m.type] : null;
    if (!handle) return error(ws, 'unknown message type');
    if (m.type !== 'auth' && !ws.authed) return error(ws, 'authentication required');
    try {
      handle(ws, m);
    } catch (e) {
      error(ws, e.message);
    }
  });
  ws.on('close', () => leave(ws));
  ws.on('error', () => {});
});

server.listen(PORT, HOST, () => {
  console.log(`reference relay on ${CERT && KEY ? 'wss' : 'ws'}://${HOST}:${PORT}/ (auth ${API_KEY ? 'on' : 'off'})`);
});

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
