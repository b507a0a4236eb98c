#!/usr/bin/env node
'use strict';
// Load generator for sscontrol signaling servers (docs/protocol.md section 1).
// Prints one JSON line per workload on stdout; progress goes to stderr.
//
//   node loadgen.js --url ws://127.0.0.1:8443/ws --workload relay --conns 200 --window 1
//   node loadgen.js --url ws://127.0.0.1:8443/ws --workload relay --conns 2000 --window 16 --rate 80000
//     (open loop: 80,000 msgs/s offered over all pairs on a schedule, whatever the server does)
//   node loadgen.js --url wss://127.0.0.1:8443/ws --workload churn --concurrency 16
//   node loadgen.js --url ws://127.0.0.1:8443/ws --workload idle --idle 10000,19000 --server-pid PID
//   node loadgen.js --url wss://127.0.0.1:8443/ws --workload churn --resume 1   # resumed TLS handshakes
//   node loadgen.js --url ws://127.0.0.1:8443/ws --workload storm --conns 10000  # driven by bench/run.py:
//     joins, prints {"storm_ready": ...}, reads {"restart_at_ms": ...} on stdin (the driver then
//     restarts or kills the server), every client reconnects with jittered back-off and re-joins
//
// The API key (auth on when set) comes from the environment: SSCONTROL_API_KEY.
// Every loop is bounded in time (--warmup + --seconds) and every wait has a timeout.
const crypto = require('crypto');
const { performance } = require('perf_hooks');
const { RawConn, WsConn, parseUrl, randomBytes } = require('./conn');
const { Histogram, CpuMeter, rssKiB } = require('./stats');

function parseArgs(argv) {
  const a = {
    url: 'ws://127.0.0.1:8443/ws',
    workload: 'relay',
    conns: 200,
    window: 1,
    warmup: 2,
    seconds: 10,
    concurrency: 16,
    idle: '10000',
    settle: 2,
    serverPid: '0', // a pid, or several comma-separated (CPU and RSS are their sums)
    rate: 0, // relay: msgs/s offered over all pairs, open loop; 0 = closed loop
    drain: 3, // open-loop relay: seconds to wait after the measurement for messages in flight
    srcAddrs: '127.0.0.1',
    client: 'raw',
    setupConcurrency: 128,
    label: '',
    resume: 0, // churn over TLS: each loop resumes its previous connections' sessions
    stormGiveUp: 120, // storm: seconds after the restart a client keeps trying
    stormBackoffMs: 100, // storm: first back-off (full jitter, doubling)
    stormBackoffCapMs: 5000,
  };
  for (let i = 2; i < argv.length; i++) {
    const k = argv[i];
    if (!k.startsWith('--')) throw new Error(`unexpected argument ${k}`);
    const name = k.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(name in a)) throw new Error(`unknown option ${k}`);
    const v = argv[++i];
    if (v === undefined) throw new Error(`${k} needs a value`);
    a[name] = typeof a[name] === 'number' ? Number(v) : v;
    if (name === 'serverPid' && !/^[0-9]+(,[0-9]+)*$/.test(v)) throw new Error(`${k}: not a pid list: ${v}`);
    if (Number.isNaN(a[name])) throw new Error(`${k}: not a number: ${v}`);
  }
  a.srcAddrs = a.srcAddrs.split(',').filter(Boolean);
  a.idle = a.idle.split(',').map(Number);
  return a;
}

const args = parseArgs(process.argv);
const API_KEY = process.env.SSCONTROL_API_KEY || '';
const target = parseUrl(args.url);
const nowUs = () => Math.round(performance.now() * 1000);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...m) => process.stderr.write(`loadgen: ${m.join(' ')}\n`);
const runId = crypto.randomBytes(4).toString('hex');

let srcIndex = 0;
function nextSrc() {
  const s = args.srcAddrs[srcIndex % args.srcAddrs.length];
  srcIndex++;
  return s === '127.0.0.1' && args.srcAddrs.length === 1 ? undefined : s;
}

function newConn() {
  return args.client === 'ws' ? new WsConn(target, args.url) : new RawConn(target);
}

let deviceSeq = 0;
function authMessage() {
  const deviceId = `bench-${runId}-${deviceSeq++}`;
  const timestamp = Math.floor(Date.now() / 1000);
  const nonce = randomBytes(12).toString('hex');
  const token = crypto.createHmac('sha256', API_KEY).update(`${deviceId}:${timestamp}:${nonce}`).digest('hex');
  return JSON.stringify({ type: 'auth', device_id: deviceId, api_key: '', timestamp, nonce, token });
}

// --- the setup-time message handler: JSON messages awaited by type

function attachWaiters(conn) {
  conn.waiters = [];
  conn.inbox = [];
  conn.onmessage = (payload) => {
    let m;
    try {
      m = JSON.parse(payload.toString());
    } catch {
      m = { type: '?invalid' };
    }
    if (m.type === 'error') { // fails every pending wait at once, not after its timeout
      const waiting = conn.waiters.splice(0);
      if (!waiting.length) conn.inbox.push(m);
      for (const w of waiting) {
        clearTimeout(w.timer);
        w.reject(new Error(`server error: ${m.message}`));
      }
      return;
    }
    const i = conn.waiters.findIndex((w) => w.type === m.type);
    if (i < 0) {
      conn.inbox.push(m);
      return;
    }
    const [w] = conn.waiters.splice(i, 1);
    clearTimeout(w.timer);
    w.resolve(m);
  };
}

function waitFor(conn, type, timeoutMs = 15000) {
  const i = conn.inbox.findIndex((m) => m.type === type);
  if (i >= 0) return Promise.resolve(conn.inbox.splice(i, 1)[0]);
  return new Promise((resolve, reject) => {
    const w = { type, resolve, reject };
    w.timer = setTimeout(() => {
      conn.waiters.splice(conn.waiters.indexOf(w), 1);
      reject(new Error(`timeout waiting for '${type}'`));
    }, timeoutMs);
    conn.waiters.push(w);
  });
}

function cancelWait(conn, type) {
  const i = conn.waiters.findIndex((w) => w.type === type);
  if (i >= 0) clearTimeout(conn.waiters.splice(i, 1)[0].timer);
}

// Two connections in one room, each knowing the other's peer id (a.partner, b.partner).
// Each sends auth and join in one write without waiting (the server handles a
// connection's messages in order); whichever join the server takes first gets an
// empty `peers` and then `new_peer`, the other gets `peers` naming the first.
async function openPair(room, sessions = null) {
  const a = newConn();
  const b = newConn();
  try {
    await Promise.all([a.connect(nextSrc(), 15000, sessions && sessions[0]),
      b.connect(nextSrc(), 15000, sessions && sessions[1])]);
    await Promise.all([a, b].map(async (c) => {
      attachWaiters(c);
      const join = JSON.stringify({ type: 'join', room_id: room });
      const newPeer = waitFor(c, 'new_peer');
      newPeer.catch(() => {});
      const got = API_KEY ? [waitFor(c, 'auth_success'), waitFor(c, 'peers')] : [waitFor(c, 'peers')];
      c.sendMany(API_KEY ? [authMessage(), join] : [join]);
      const peers = (await Promise.all(got)).pop();
      c.partner = peers.peers.length ? peers.peers[0].id : (await newPeer).peer_id;
      if (peers.peers.length) cancelWait(c, 'new_peer');
    }));
    return [a, b];
  } catch (err) {
    a.destroy();
    b.destroy();
    throw err;
  }
}

// Run fn(i) for i < count with at most `limit` at once.
async function pooled(count, limit, fn) {
  let next = 0;
  const results = new Array(count);
  async function worker() {
    while (next < count) {
      const i = next++;
      results[i] = await fn(i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, count) }, worker));
  return results;
}

// --- ICE-sized relay messages with a send timestamp in the candidate (12 digits, us)

const MARK = Buffer.from('#t=');
const CANDIDATE = 'candidate:842163049 1 udp 1677729535 192.0.2.44 61234 typ srflx raddr 10.0.0.5 '
  + 'rport 61234 generation 0 ufrag EsAw network-id 1 network-cost 10 foundation 1a2b3c4d';

function iceTemplate(to) {
  const text = JSON.stringify({
    type: 'ice', from: '', to, candidate: `${CANDIDATE} #t=000000000000`, sdp_mid: '0', sdp_mline_index: 0,
  });
  const buf = Buffer.from(text);
  return { buf, tsOff: buf.indexOf(MARK) + MARK.length };
}

function writeDigits(buf, off, v) {
  for (let i = 11; i >= 0; i--) {
    buf[off + i] = 48 + (v % 10);
    v = Math.floor(v / 10);
  }
}

function readDigits(buf, off) {
  let v = 0;
  for (let i = 0; i < 12; i++) v = v * 10 + (buf[off + i] - 48);
  return v;
}

// --- workloads

async function relay() {
  const pairs = Math.max(1, Math.floor(args.conns / 2));
  const t0 = Date.now();
  const all = await pooled(pairs, args.setupConcurrency, (i) => openPair(`relay-${runId}-${i}`));
  const setupS = (Date.now() - t0) / 1000;
  log(`relay: ${pairs * 2} connections in rooms of two, set up in ${setupS.toFixed(1)} s`);
  if (args.rate > 0) return relayOpen(all, setupS);

  const hist = new Histogram();
  let recording = false;
  let running = true;
  let received = 0;
  let errors = 0;
  let sent = 0;
  let closedEarly = 0;
  const conns = all.flat();
  let sampleSize = 0;
  for (const c of conns) {
    const tpl = iceTemplate(c.partner);
    sampleSize = tpl.buf.length;
    c.tpl = tpl;
    c.onclose = () => {
      if (running) closedEarly++;
    };
    c.onmessage = (payload, conn) => {
      const at = payload.indexOf(MARK);
      if (at < 0) {
        const text = payload.toString();
        if (text.includes('"error"')) {
          errors++;
          if (errors <= 3) log(`server error during relay: ${text.slice(0, 200)}`);
        }
        return;
      }
      if (recording) {
        hist.record(nowUs() - readDigits(payload, at + MARK.length));
        received++;
      }
      if (running) {
        writeDigits(conn.tpl.buf, conn.tpl.tsOff, nowUs());
        conn.send(conn.tpl.buf);
        sent++;
      }
    };
  }
  // the window: W messages in flight per pair, split between its two ends
  for (const [a, b] of all) {
    for (let k = 0; k < args.window; k++) {
      const c = k % 2 === 0 ? a : b;
      writeDigits(c.tpl.buf, c.tpl.tsOff, nowUs());
      c.send(c.tpl.buf);
    }
  }
  await sleep(args.warmup * 1000);
  const meter = new CpuMeter(args.serverPid);
  const elu0 = performance.eventLoopUtilization();
  meter.start();
  recording = true;
  await sleep(args.seconds * 1000);
  recording = false;
  const cpu = meter.stop();
  const elu = performance.eventLoopUtilization(elu0);
  running = false;
  const rss = rssKiB(args.serverPid);
  await Promise.all(conns.map((c) => c.close(2000)));
  return {
    workload: 'relay',
    conns: pairs * 2,
    window: args.window,
    seconds: cpu.wall_s,
    message_bytes: sampleSize,
    msgs: received,
    msgs_per_s: Math.round(received / cpu.wall_s),
    ...hist.summary(),
    errors,
    closed_early: closedEarly,
    setup_s: setupS,
    ...cpu,
    gen_elu: Math.round(elu.utilization * 1000) / 1000,
    server_rss_kib: rss,
  };
}

// Open-loop relay (--rate R): every connection of every pair sends on its own schedule, R / C
// msgs/s each (C = connections), whatever the server does; nothing answers a received message.
// Send k of the run is due at start + (k + jitter of its sender) / R: the senders take turns
// (each pair's two ends half a period apart), each at a phase jittered within its slot.
// Due sends go out on a ~1 ms timer tick. A pair with --window messages in flight when a send
// falls due does not make it: `not_sent` (the generator never queues; a server that cannot
// keep up holds the messages in flight, its TCP backpressure, and the rest are shed here).
// Each message carries its actual send time and its scheduled time: latency from the send
// (what the server adds) and from the schedule (what a client that meant to send then sees,
// coordinated omission included), and the generator's own lag (send - schedule).
function openTemplate(to) {
  const text = JSON.stringify({
    type: 'ice', from: '', to, candidate: `${CANDIDATE} #t=000000000000 s000000000000`, sdp_mid: '0',
    sdp_mline_index: 0,
  });
  const buf = Buffer.from(text);
  const tsOff = buf.indexOf(MARK) + MARK.length;
  return { buf, tsOff, schedOff: tsOff + 14 };
}

async function relayOpen(all, setupS) {
  const hist = new Histogram(); // from the send
  const schedHist = new Histogram(); // from the scheduled time
  const lagHist = new Histogram(); // send - scheduled, of the messages received
  const conns = [];
  for (const [a, b] of all) {
    const pair = { inflight: 0 };
    a.pair = pair;
    b.pair = pair;
  }
  // every pair's first ends, then its second ends: a pair's two sends are half a period apart
  for (const [a] of all) conns.push(a);
  for (const [, b] of all) conns.push(b);
  let recording = false; // latency and delivered count
  let draining = false; // latency only: messages in flight when the measurement ended
  let running = true;
  let received = 0;
  let errors = 0;
  let closedEarly = 0;
  let sampleSize = 0;
  for (const c of conns) {
    c.tpl = openTemplate(c.partner);
    sampleSize = c.tpl.buf.length;
    c.onclose = () => {
      if (running) closedEarly++;
    };
    c.onmessage = (payload, conn) => {
      const at = payload.indexOf(MARK);
      if (at < 0) {
        const text = payload.toString();
        if (text.includes('"error"')) {
          errors++;
          if (errors <= 3) log(`server error during relay: ${text.slice(0, 200)}`);
        }
        return;
      }
      conn.pair.inflight--;
      if (recording || draining) {
        const now = nowUs();
        const sentAt = readDigits(payload, at + MARK.length);
        const dueAt = readDigits(payload, at + MARK.length + 14);
        hist.record(now - sentAt);
        schedHist.record(now - dueAt);
        lagHist.record(sentAt - dueAt);
        if (recording) received++;
      }
    };
  }

  const n = conns.length;
  const slotUs = 1e6 / args.rate;
  const jitter = Float64Array.from({ length: n }, () => Math.random());
  const startUs = nowUs() + 1000;
  let measureFrom = Infinity;
  let measureTo = Infinity;
  let offered = 0; // sends due within the measurement
  let notSent = 0; // of those, not made: the pair's window was full
  let k = 0;
  const MAX_PER_TICK = 20000; // then yield to I/O and come back at once
  const tick = () => {
    if (!running) return;
    const now = nowUs();
    let made = 0;
    for (; made < MAX_PER_TICK; made++) {
      const i = k % n;
      const due = Math.round(startUs + (k + jitter[i]) * slotUs);
      if (due > now) break;
      k++;
      const measured = due >= measureFrom && due < measureTo;
      if (measured) offered++;
      const c = conns[i];
      if (c.pair.inflight >= args.window || !c.open) {
        if (measured) notSent++;
        continue;
      }
      writeDigits(c.tpl.buf, c.tpl.schedOff, due);
      writeDigits(c.tpl.buf, c.tpl.tsOff, nowUs());
      c.send(c.tpl.buf);
      c.pair.inflight++;
    }
    if (made >= MAX_PER_TICK) {
      setImmediate(tick);
    } else {
      const nextMs = (startUs + (k + jitter[k % n]) * slotUs - nowUs()) / 1000;
      setTimeout(tick, Math.max(1, Math.floor(nextMs)));
    }
  };
  tick();
  await sleep(args.warmup * 1000);
  const meter = new CpuMeter(args.serverPid);
  const elu0 = performance.eventLoopUtilization();
  meter.start();
  measureFrom = nowUs();
  recording = true;
  await sleep(args.seconds * 1000);
  measureTo = nowUs();
  recording = false;
  draining = true;
  const cpu = meter.stop();
  const elu = performance.eventLoopUtilization(elu0);
  running = false; // no more sends (the next tick stops); what is in flight may still arrive
  const inFlight = () => all.reduce((sum, [a]) => sum + a.pair.inflight, 0);
  const inFlightEnd = inFlight();
  const drainUntil = Date.now() + args.drain * 1000;
  while (inFlight() > 0 && Date.now() < drainUntil) await sleep(20);
  draining = false;
  const undelivered = inFlight();
  const rss = rssKiB(args.serverPid);
  await Promise.all(conns.map((c) => c.close(2000)));
  const s = schedHist.summary();
  const lag = lagHist.summary();
  return {
    workload: 'relay',
    mode: 'open',
    conns: n,
    window: args.window,
    rate: args.rate,
    seconds: cpu.wall_s,
    message_bytes: sampleSize,
    offered: offered,
    offered_per_s: Math.round(offered / cpu.wall_s),
    not_sent: notSent,
    not_sent_pct: offered ? Math.round((1000 * notSent) / offered) / 10 : null,
    msgs: received,
    msgs_per_s: Math.round(received / cpu.wall_s),
    ...hist.summary(),
    sched_p50_us: s.p50_us,
    sched_p99_us: s.p99_us,
    sched_p999_us: s.p999_us,
    sched_max_us: s.max_us,
    lag_p999_us: lag.p999_us,
    lag_max_us: lag.max_us,
    in_flight_end: inFlightEnd,
    undelivered,
    errors,
    closed_early: closedEarly,
    setup_s: setupS,
    ...cpu,
    gen_elu: Math.round(elu.utilization * 1000) / 1000,
    server_rss_kib: rss,
  };
}

async function churn() {
  const hist = new Histogram();
  const start = Date.now();
  const recordFrom = start + args.warmup * 1000;
  const stopAt = recordFrom + args.seconds * 1000;
  let sessions = 0;
  let errors = 0;
  let firstError = null;
  let meter = null;
  let elu0 = null;
  let seq = 0;

  let handshakes = 0;
  let resumedHandshakes = 0;
  // One session: two connections connect, authenticate and join one room, one
  // relays an ICE message to the other, both close (client close handshake).
  // With --resume, the two connections resume the TLS sessions of the loop's previous two.
  async function session(tlsSessions) {
    const t = performance.now();
    const [a, b] = await openPair(`churn-${runId}-${seq++}`, args.resume ? tlsSessions : null);
    if (Date.now() >= recordFrom) {
      handshakes += 2;
      resumedHandshakes += (a.resumed ? 1 : 0) + (b.resumed ? 1 : 0);
    }
    try {
      const got = waitFor(a, 'ice');
      const bClosed = b.close(5000, iceTemplate(b.partner).buf); // the message, then close, in one write
      await got;
      await Promise.all([a.close(), bClosed]);
    } finally {
      a.destroy();
      b.destroy();
    }
    if (args.resume) {
      tlsSessions[0] = a.tlsSession || tlsSessions[0];
      tlsSessions[1] = b.tlsSession || tlsSessions[1];
    }
    return performance.now() - t;
  }

  async function loop() {
    const tlsSessions = [null, null]; // the loop's previous two connections' TLS sessions
    while (Date.now() < stopAt && errors < 1000) {
      try {
        const ms = await session(tlsSessions);
        const now = Date.now();
        if (now >= recordFrom && now < stopAt) {
          sessions++;
          hist.record(ms * 1000);
        }
      } catch (err) {
        errors++;
        if (!firstError) firstError = err.message;
        if (process.env.LOADGEN_DEBUG) log(err.stack);
        await sleep(10);
      }
    }
  }
  const loops = Array.from({ length: args.concurrency }, loop);
  await sleep(Math.max(0, recordFrom - Date.now()));
  meter = new CpuMeter(args.serverPid);
  elu0 = performance.eventLoopUtilization();
  meter.start();
  await sleep(Math.max(0, stopAt - Date.now()));
  const cpu = meter.stop();
  const elu = performance.eventLoopUtilization(elu0);
  await Promise.all(loops);
  const s = hist.summary();
  return {
    workload: 'churn',
    tls: target.tls,
    resume: Boolean(args.resume),
    resumed_pct: target.tls && handshakes ? Math.round((1000 * resumedHandshakes) / handshakes) / 10 : null,
    concurrency: args.concurrency,
    seconds: cpu.wall_s,
    sessions,
    connections_per_s: Math.round((2 * sessions) / cpu.wall_s),
    sessions_per_s: Math.round(sessions / cpu.wall_s),
    session_p50_us: s.p50_us,
    session_p99_us: s.p99_us,
    errors,
    first_error: firstError,
    ...cpu,
    gen_elu: Math.round(elu.utilization * 1000) / 1000,
    server_rss_kib: rssKiB(args.serverPid),
  };
}

async function idle() {
  const out = [];
  // warm the server's code paths and pools first: 100 pairs open and close
  const warm = await pooled(100, 50, (i) => openPair(`idle-warm-${runId}-${i}`));
  await Promise.all(warm.flat().map((c) => c.close()));
  await sleep(args.settle * 1000);
  const before = rssKiB(args.serverPid);
  log(`idle: server RSS before ${before} KiB`);
  const held = [];
  let closed = 0;
  const steps = [...args.idle].sort((x, y) => x - y);
  for (const n of steps) {
    const more = Math.floor((n - held.length * 2) / 2);
    const t0 = Date.now();
    const offset = held.length;
    const pairs = await pooled(more, args.setupConcurrency, (i) => openPair(`idle-${runId}-${offset + i}`));
    for (const [a, b] of pairs) {
      for (const c of [a, b]) {
        c.onclose = () => closed++;
      }
      held.push([a, b]);
    }
    const setupS = (Date.now() - t0) / 1000;
    await sleep(args.settle * 1000);
    const after = rssKiB(args.serverPid);
    // liveness: a few pairs still relay
    let alive = 0;
    const sample = held.filter((_, i) => i % Math.max(1, Math.floor(held.length / 20)) === 0).slice(0, 20);
    await Promise.all(sample.map(async ([a, b]) => {
      const got = waitFor(a, 'ice', 5000);
      b.send(iceTemplate(b.partner).buf);
      try {
        await got;
        alive++;
      } catch { /* counted as not alive */ }
    }));
    const conns = held.length * 2;
    const rec = {
      workload: 'idle',
      conns,
      server_rss_before_kib: before,
      server_rss_after_kib: after,
      kib_per_conn: before && after ? Math.round((100 * (after - before)) / conns) / 100 : null,
      setup_s: setupS,
      handshakes_per_s_setup: Math.round((2 * more) / setupS),
      closed_early: closed,
      liveness_checked: sample.length,
      liveness_ok: alive,
      gen_rss_kib: rssKiB(process.pid),
    };
    log(`idle: ${conns} connections, server RSS ${after} KiB, ${rec.kib_per_conn} KiB/connection`);
    out.push(rec);
  }
  for (const [a, b] of held) {
    a.destroy();
    b.destroy();
  }
  return out;
}

// --- reconnect storm: N clients joined in pairs; the driver restarts (SIGTERM, drain, new
// process) or kills the server; every client reconnects with jittered back-off (after the
// server's reconnect_in_ms hint when a 1012 close carries one, after Retry-After when a 503
// does), re-joins its room, and its pair relays one message again. Reported: the time from
// the restart to the last pair relaying, failed attempts, clients that gave up.

function readStdinLine() {
  return new Promise((resolve) => {
    let buf = '';
    const onData = (chunk) => {
      buf += chunk;
      const i = buf.indexOf('\n');
      if (i >= 0) {
        process.stdin.removeListener('data', onData);
        process.stdin.pause();
        resolve(buf.slice(0, i));
      }
    };
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', onData);
  });
}

async function storm() {
  const pairs = Math.max(1, Math.floor(args.conns / 2));
  const t0 = Date.now();
  const all = await pooled(pairs, args.setupConcurrency, (i) => openPair(`storm-${runId}-${i}`));
  const setupS = (Date.now() - t0) / 1000;
  log(`storm: ${pairs * 2} clients joined in ${setupS.toFixed(1)} s`);
  let restartAt = 0;
  let giveUpAt = Infinity;
  let failed = 0;
  let gaveUp = 0;
  let hinted = 0;
  let refused503 = 0;
  let lastRelayAt = 0;
  let lastJoinAt = 0;
  let pairsDone = 0;
  const failures = {};
  const firstByReason = (err) => {
    const key = err.retryAfterS !== undefined ? '503' : (err.code || err.message.split(':')[0]).slice(0, 40);
    failures[key] = (failures[key] || 0) + 1;
  };
  let resolveAll;
  const allDone = new Promise((r) => { resolveAll = r; });
  const pairDone = () => {
    pairsDone++;
    lastRelayAt = Date.now();
    if (pairsDone + gaveUpPairs.size === pairs) resolveAll();
  };
  const gaveUpPairs = new Set();

  // One client's way back: wait, connect, auth + join; on failure back off and retry.
  async function comeBack(pairIndex, conn, rejoined) {
    let delay;
    const hint = conn.closeCode === 1012 && /reconnect_in_ms=(\d+)/.exec(conn.closeReason || '');
    if (hint) {
      hinted++;
      delay = Number(hint[1]);
    } else {
      delay = Math.random() * args.stormBackoffMs;
    }
    for (let attempt = 0; ; attempt++) {
      await sleep(delay);
      if (Date.now() >= giveUpAt) {
        gaveUp++;
        gaveUpPairs.add(pairIndex);
        if (pairsDone + gaveUpPairs.size === pairs) resolveAll();
        return null;
      }
      const c = newConn();
      try {
        await c.connect(nextSrc(), 10000);
        attachWaiters(c);
        const room = `storm-${runId}-${pairIndex}`;
        const got = API_KEY ? [waitFor(c, 'auth_success', 10000), waitFor(c, 'peers', 10000)]
          : [waitFor(c, 'peers', 10000)];
        c.sendMany(API_KEY ? [authMessage(), JSON.stringify({ type: 'join', room_id: room })]
          : [JSON.stringify({ type: 'join', room_id: room })]);
        const peers = (await Promise.all(got)).pop();
        lastJoinAt = Date.now();
        return rejoined(c, peers);
      } catch (err) {
        failed++;
        firstByReason(err);
        c.destroy();
        if (err.retryAfterS !== undefined) {
          refused503++;
          delay = err.retryAfterS * 1000 * (1 + 0.5 * Math.random());
        } else {
          delay = Math.random() * Math.min(args.stormBackoffCapMs, args.stormBackoffMs * 2 ** attempt);
        }
      }
    }
  }

  // A pair: the second to re-join (its `peers` names the first) sends an ICE message; the
  // pair is back when the first receives it.
  all.forEach(([a, b], i) => {
    let closed = 0;
    const onClose = () => {
      if (!restartAt) return; // closes before the restart are errors, not the storm
      if (++closed < 2) return;
      for (const old of [a, b]) {
        comeBack(i, old, (c, peers) => {
          if (peers.peers.length) {
            c.send(iceTemplate(peers.peers[0].id).buf);
          } else {
            waitFor(c, 'ice', args.stormGiveUp * 1000).then(pairDone, () => {});
          }
          return c;
        });
      }
    };
    a.onclose = onClose;
    b.onclose = onClose;
  });

  process.stdout.write(`${JSON.stringify({ storm_ready: true, conns: pairs * 2, setup_s: setupS })}\n`);
  const line = await readStdinLine();
  restartAt = JSON.parse(line).restart_at_ms;
  giveUpAt = restartAt + args.stormGiveUp * 1000;
  const meter = new CpuMeter(0);
  meter.start();
  const hardStop = sleep((args.stormGiveUp + 30) * 1000).then(() => 'timeout');
  const outcome = await Promise.race([allDone, hardStop]);
  const cpu = meter.stop();
  return {
    workload: 'storm',
    conns: pairs * 2,
    setup_s: setupS,
    completed: outcome !== 'timeout',
    pairs_back: pairsDone,
    all_back_s: pairsDone === pairs ? Math.round(lastRelayAt - restartAt) / 1000 : null,
    last_join_s: lastJoinAt ? Math.round(lastJoinAt - restartAt) / 1000 : null,
    failed_attempts: failed,
    refused_503: refused503,
    failures,
    hinted_closes: hinted,
    gave_up: gaveUp,
    gen_cpu_pct: cpu.gen_cpu_pct,
  };
}

async function main() {
  const extra = {};
  for (const kv of args.label.split(',').filter(Boolean)) {
    const [k, v] = kv.split('=');
    extra[k] = v;
  }
  const common = { client: args.client, url: args.url, auth: Boolean(API_KEY) };
  let results;
  if (args.workload === 'relay') results = [await relay()];
  else if (args.workload === 'churn') results = [await churn()];
  else if (args.workload === 'idle') results = await idle();
  else if (args.workload === 'storm') results = [await storm()];
  else throw new Error(`unknown workload ${args.workload}`);
  for (const r of results) process.stdout.write(`${JSON.stringify({ ...extra, ...r, ...common })}\n`);
}

// A hard stop, whatever happens: setup + warm-up + measurement + a margin.
setTimeout(() => {
  log('hard time limit reached, exiting');
  process.exit(3);
}, (args.warmup + args.seconds + args.drain + 120) * 1000).unref();

main().then(() => process.exit(0), (err) => {
  log(`failed: ${err.stack || err}`);
  process.exit(1);
});
