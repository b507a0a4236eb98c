'use strict';
// WebSocket client connections for the load generator.
//
// RawConn speaks RFC 6455 directly on a net/tls socket: handshake check, masked
// frames with a fresh random mask per frame, server frames parsed in place (no
// copy), pings answered, close handshake. Frames sent from inside a message
// callback are batched into one write per received chunk, which keeps the
// generator's per-message cost well under the servers' (see docs/performance.md).
//
// WsConn wraps the `ws` package's client behind the same interface (--client ws),
// to show how much a generic client would cost the generator.
const crypto = require('crypto');
const net = require('net');
const tls = require('tls');

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const HEADER_END = Buffer.from('\r\n\r\n');

// Random bytes come from a pool refilled 64 KiB at a time (one call instead of one per frame).
let pool = Buffer.alloc(0);
let poolOff = 0;
function poolOffset(n) {
  if (poolOff + n > pool.length) {
    pool = crypto.randomBytes(1 << 16);
    poolOff = 0;
  }
  const off = poolOff;
  poolOff += n;
  return off;
}
const maskOffset = () => poolOffset(4);

function randomBytes(n) {
  const off = poolOffset(n);
  return pool.subarray(off, off + n);
}

// A masked client frame carrying `payload` (a Buffer) with `opcode`.
function encodeFrame(payload, opcode) {
  const len = payload.length;
  const hlen = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const out = Buffer.allocUnsafe(hlen + 4 + len);
  out[0] = 0x80 | opcode;
  if (len < 126) {
    out[1] = 0x80 | len;
  } else if (len < 65536) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(len, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeUInt32BE(Math.floor(len / 2 ** 32), 2);
    out.writeUInt32BE(len >>> 0, 6);
  }
  const m = maskOffset();
  const m0 = pool[m], m1 = pool[m + 1], m2 = pool[m + 2], m3 = pool[m + 3];
  out[hlen] = m0; out[hlen + 1] = m1; out[hlen + 2] = m2; out[hlen + 3] = m3;
  const base = hlen + 4;
  let i = 0;
  const end4 = len & ~3;
  for (; i < end4; i += 4) {
    out[base + i] = payload[i] ^ m0;
    out[base + i + 1] = payload[i + 1] ^ m1;
    out[base + i + 2] = payload[i + 2] ^ m2;
    out[base + i + 3] = payload[i + 3] ^ m3;
  }
  for (; i < len; i++) out[base + i] = payload[i] ^ pool[m + (i & 3)];
  return out;
}

function parseUrl(url) {
  const u = new URL(url);
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new Error(`not a ws:// or wss:// URL: ${url}`);
  return {
    tls: u.protocol === 'wss:',
    host: u.hostname,
    port: Number(u.port || (u.protocol === 'wss:' ? 443 : 80)),
    path: (u.pathname || '/') + (u.search || ''),
  };
}

// One TLS context for every connection: building one per tls.connect() (Node's default)
// costs the generator more than the server's whole handshake. A connection resumes a
// TLS session only when given one (connect's `session`: the churn workload's --resume);
// otherwise every connection is a full handshake.
let clientContext = null;
function tlsContext() {
  if (!clientContext) clientContext = tls.createSecureContext({});
  return clientContext;
}

class RawConn {
  constructor(target) {
    this.target = target; // from parseUrl
    this.sock = null;
    this.open = false;
    this.closed = false;
    this.onmessage = null; // (payload: Buffer, conn) => void; payload is only valid during the call
    this.onclose = null;
    this._buf = null;
    this._frag = null;
    this._out = null; // batched frames while handling a chunk
    this._closeSent = false;
  }

  // session: a TLS session (from a previous connection's `tlsSession`) to resume.
  connect(localAddress, timeoutMs = 15000, session = null) {
    const t = this.target;
    return new Promise((resolve, reject) => {
      const key = randomBytes(16).toString('base64');
      const accept = crypto.createHash('sha1').update(key + GUID).digest('base64');
      const opts = { host: t.host, port: t.port };
      if (localAddress) opts.localAddress = localAddress;
      let sock;
      let head = null;
      const timer = setTimeout(() => fail(new Error('handshake timeout')), timeoutMs);
      const fail = (err) => {
        clearTimeout(timer);
        if (sock) sock.destroy();
        reject(err);
      };
      const request = () => {
        sock.setNoDelay(true);
        sock.write(`GET ${t.path} HTTP/1.1\r\nHost: ${t.host}:${t.port}\r\nUpgrade: websocket\r\n`
          + `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
      };
      if (t.tls) {
        const tlsOpts = { ...opts, rejectUnauthorized: false, secureContext: tlsContext() };
        if (session) tlsOpts.session = session;
        sock = tls.connect(tlsOpts, () => {
          this.resumed = sock.isSessionReused();
          request();
        });
        sock.on('session', (s) => { this.tlsSession = s; }); // TLS 1.3: after the handshake
      } else {
        sock = net.connect(opts, request);
      }
      this.sock = sock;
      const onHandshakeData = (chunk) => {
        head = head ? Buffer.concat([head, chunk]) : chunk;
        const end = head.indexOf(HEADER_END);
        if (end < 0) {
          if (head.length > 16384) fail(new Error('handshake answer too long'));
          return;
        }
        const text = head.subarray(0, end).toString('latin1');
        const rest = head.subarray(end + 4);
        if (!/^HTTP\/1\.1 101 /.test(text)) {
          const err = new Error(`handshake refused: ${text.split('\r\n')[0]}`);
          const ra = /\r\nretry-after:\s*(\d+)/i.exec(text);
          if (ra) err.retryAfterS = Number(ra[1]); // admission control: wait at least this long
          return fail(err);
        }
        const m = /\r\nsec-websocket-accept:\s*(\S+)/i.exec(text);
        if (!m || m[1] !== accept) return fail(new Error('bad Sec-WebSocket-Accept'));
        clearTimeout(timer);
        sock.removeListener('data', onHandshakeData);
        sock.on('data', (c) => this._data(c));
        this.open = true;
        resolve(this);
        if (rest.length) this._data(rest);
      };
      sock.on('data', onHandshakeData);
      sock.on('error', (err) => {
        if (!this.open) fail(err);
      });
      sock.on('close', () => {
        clearTimeout(timer);
        if (!this.open && !this.closed) reject(new Error('connection closed during handshake'));
        this.open = false;
        this.closed = true;
        if (this.onclose) this.onclose(this);
      });
    });
  }

  // Send a text message (a Buffer or a string).
  send(payload) {
    if (!this.open || this._closeSent) return;
    const frame = encodeFrame(typeof payload === 'string' ? Buffer.from(payload) : payload, 1);
    if (this._out) this._out.push(frame);
    else this.sock.write(frame);
  }

  // Send several text messages in one write.
  sendMany(payloads) {
    if (!this.open || this._closeSent) return;
    const frames = payloads.map((p) => encodeFrame(typeof p === 'string' ? Buffer.from(p) : p, 1));
    if (this._out) this._out.push(...frames);
    else this.sock.write(Buffer.concat(frames));
  }

  _control(opcode, payload) {
    const frame = encodeFrame(payload, opcode);
    if (this._out) this._out.push(frame);
    else this.sock.write(frame);
  }

  _data(chunk) {
    let buf = this._buf ? Buffer.concat([this._buf, chunk]) : chunk;
    this._buf = null;
    this._out = [];
    let off = 0;
    const n = buf.length;
    while (n - off >= 2) {
      const b0 = buf[off];
      const b1 = buf[off + 1];
      if (b1 & 0x80) {
        this._protocolError('masked server frame');
        return;
      }
      let len = b1 & 0x7f;
      let hlen = 2;
      if (len === 126) {
        if (n - off < 4) break;
        len = buf.readUInt16BE(off + 2);
        hlen = 4;
      } else if (len === 127) {
        if (n - off < 10) break;
        len = buf.readUInt32BE(off + 2) * 2 ** 32 + buf.readUInt32BE(off + 6);
        hlen = 10;
      }
      if (n - off < hlen + len) break;
      const payload = buf.subarray(off + hlen, off + hlen + len);
      off += hlen + len;
      const opcode = b0 & 0x0f;
      const fin = (b0 & 0x80) !== 0;
      if (opcode === 1 || opcode === 2 || opcode === 0) {
        if (!fin) {
          this._frag = this._frag ? Buffer.concat([this._frag, payload]) : Buffer.from(payload);
        } else if (opcode === 0) {
          const whole = Buffer.concat([this._frag || Buffer.alloc(0), payload]);
          this._frag = null;
          if (this.onmessage) this.onmessage(whole, this);
        } else if (this.onmessage) {
          this.onmessage(payload, this);
        }
      } else if (opcode === 9) {
        this._control(10, Buffer.from(payload));
      } else if (opcode === 8) {
        if (payload.length >= 2) {
          this.closeCode = payload.readUInt16BE(0);
          this.closeReason = payload.subarray(2).toString();
        }
        if (!this._closeSent) {
          this._closeSent = true;
          this._control(8, Buffer.from(payload.subarray(0, 2)));
        }
        this.open = false;
      }
      // opcode 10 (pong): nothing to do
    }
    if (off < n) this._buf = Buffer.from(buf.subarray(off));
    const out = this._out;
    this._out = null;
    if (out.length === 1) this.sock.write(out[0]);
    else if (out.length > 1) this.sock.write(Buffer.concat(out));
  }

  _protocolError(why) {
    this.error = why;
    this.sock.destroy();
  }

  // Close handshake: send close 1000 (after `last`, a text message, in the same write,
  // if given), wait for the server to close TCP (bounded).
  close(timeoutMs = 5000, last = null) {
    return new Promise((resolve) => {
      if (this.closed) return resolve();
      const timer = setTimeout(() => {
        this.sock.destroy();
      }, timeoutMs);
      this.sock.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      if (!this._closeSent && this.sock.writable) {
        this._closeSent = true;
        const code = Buffer.alloc(2);
        code.writeUInt16BE(1000, 0);
        const close = encodeFrame(code, 8);
        if (last && this.open) this.sock.write(Buffer.concat([encodeFrame(last, 1), close]));
        else this.sock.write(close);
      }
    });
  }

  destroy() {
    if (this.sock) this.sock.destroy();
  }
}

class WsConn {
  constructor(target, url) {
    this.target = target;
    this.url = url;
    this.ws = null;
    this.open = false;
    this.closed = false;
    this.onmessage = null;
    this.onclose = null;
  }

  connect(localAddress, timeoutMs = 15000) {
    const WebSocket = require('ws'); // only this mode needs the package
    return new Promise((resolve, reject) => {
      const opts = { perMessageDeflate: false, rejectUnauthorized: false, handshakeTimeout: timeoutMs };
      if (localAddress) opts.localAddress = localAddress;
      const ws = new WebSocket(this.url, opts);
      this.ws = ws;
      ws.on('open', () => {
        ws._socket.setNoDelay(true);
        this.open = true;
        resolve(this);
      });
      ws.on('message', (data) => {
        if (this.onmessage) this.onmessage(data, this);
      });
      ws.on('error', (err) => {
        if (!this.open) reject(err);
      });
      ws.on('close', () => {
        if (!this.open && !this.closed) reject(new Error('connection closed during handshake'));
        this.open = false;
        this.closed = true;
        if (this.onclose) this.onclose(this);
      });
    });
  }

  send(payload) {
    if (this.open) this.ws.send(payload, { binary: false });
  }

  sendMany(payloads) {
    for (const p of payloads) this.send(p);
  }

  close(timeoutMs = 5000, last = null) {
    if (last) this.send(last);
    return new Promise((resolve) => {
      if (this.closed) return resolve();
      const timer = setTimeout(() => this.ws.terminate(), timeoutMs);
      this.ws.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.ws.close(1000);
    });
  }

  destroy() {
    if (this.ws) this.ws.terminate();
  }
}

module.exports = { RawConn, WsConn, parseUrl, encodeFrame, randomBytes };
