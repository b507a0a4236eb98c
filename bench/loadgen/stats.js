'use strict';
// Latency histogram (integer microseconds, 1 us resolution below 1024 us, then
// 1/512 relative precision) and readers of another process's CPU time and RSS.
const fs = require('fs');

const SUB = 512;

class Histogram {
  constructor() {
    this.counts = new Float64Array(SUB * 2 * 24);
    this.n = 0;
    this.max = 0;
  }

  record(us) {
    let v = us < 0 ? 0 : Math.round(us);
    if (v > 2 ** 31 - 1) v = 2 ** 31 - 1;
    let idx;
    if (v < 2 * SUB) {
      idx = v;
    } else {
      const e = 31 - Math.clz32(v) - 9; // v >> e lies in [512, 1024)
      idx = (e << 9) + (v >> e);
    }
    this.counts[idx]++;
    this.n++;
    if (v > this.max) this.max = v;
  }

  static value(idx) {
    if (idx < 2 * SUB) return idx;
    const e = (idx >> 9) - 1;
    const m = idx - (e << 9);
    return m * 2 ** e + 2 ** (e - 1); // the middle of the bucket
  }

  percentile(p) {
    if (this.n === 0) return null;
    const rank = Math.max(1, Math.ceil((p / 100) * this.n));
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i];
      if (seen >= rank) return Math.min(Histogram.value(i), this.max);
    }
    return this.max;
  }

  summary() {
    return {
      p50_us: this.percentile(50),
      p99_us: this.percentile(99),
      p999_us: this.percentile(99.9),
      max_us: this.n ? this.max : null,
    };
  }
}

const CLK_TCK = 100; // USER_HZ, 100 on every Linux ABI in use

// The pids of a --server-pid value: a number or comma-separated numbers (0: none).
const pidList = (pid) => String(pid || '').split(',').map(Number).filter(Boolean);

// utime + stime of a process (all its threads), or the sum over several, in seconds; null if
// unreadable.
function cpuSeconds(pid) {
  const pids = pidList(pid);
  if (!pids.length) return null;
  if (pids.length > 1) {
    const each = pids.map(cpuSeconds);
    return each.includes(null) ? null : each.reduce((x, y) => x + y, 0);
  }
  pid = pids[0];
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK; // fields 14 and 15 of stat(5)
  } catch {
    return null;
  }
}

// CPU time from /proc/stat, in seconds: for the whole machine and for each core,
// `task` (user, nice, system, steal: time charged to some process) and `irq` (irq and
// softirq: on loopback, much of the TCP work of both ends runs there, charged to no
// process).
function machineTimes() {
  try {
    const out = {};
    for (const line of fs.readFileSync('/proc/stat', 'latin1').split('\n')) {
      if (!line.startsWith('cpu')) continue;
      const [name, ...rest] = line.trim().split(/\s+/);
      const f = rest.map(Number);
      out[name] = { task: (f[0] + f[1] + f[2] + f[7]) / CLK_TCK, irq: (f[5] + f[6]) / CLK_TCK };
    }
    return out;
  } catch {
    return null;
  }
}

// VmRSS of a process (or the sum over several) in KiB; null if unreadable.
function rssKiB(pid) {
  const pids = pidList(pid);
  if (!pids.length) return null;
  if (pids.length > 1) {
    const each = pids.map(rssKiB);
    return each.includes(null) ? null : each.reduce((x, y) => x + y, 0);
  }
  pid = pids[0];
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

// CPU use of this process and of the server between start() and stop(), as % of one core.
class CpuMeter {
  constructor(serverPid) {
    this.serverPid = serverPid;
  }

  start() {
    this.t0 = process.hrtime.bigint();
    this.self0 = process.cpuUsage();
    this.srv0 = cpuSeconds(this.serverPid);
    this.m0 = machineTimes();
  }

  stop() {
    const wall = Number(process.hrtime.bigint() - this.t0) / 1e9;
    const self = process.cpuUsage(this.self0);
    const srv1 = cpuSeconds(this.serverPid);
    const m1 = machineTimes();
    const pct = (x) => Math.round((1000 * x) / wall) / 10;
    const genS = (self.user + self.system) / 1e6;
    const srvS = this.srv0 === null || srv1 === null ? null : srv1 - this.srv0;
    const d = (name, field) => (this.m0 && m1 && this.m0[name] && m1[name] ? m1[name][field] - this.m0[name][field] : null);
    // time charged to processes other than these two meanwhile: noise from the rest of the machine
    const other = srvS === null || d('cpu', 'task') === null ? null : Math.max(0, d('cpu', 'task') - genS - srvS);
    const cores = Object.keys(m1 || {}).filter((k) => k !== 'cpu').sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
    return {
      wall_s: Math.round(wall * 1000) / 1000,
      gen_cpu_pct: pct(genS),
      gen_sys_pct: pct(self.system / 1e6),
      server_cpu_pct: srvS === null ? null : pct(srvS),
      other_cpu_pct: other === null ? null : pct(other),
      irq_cpu_pct: d('cpu', 'irq') === null ? null : pct(d('cpu', 'irq')),
      core_busy_pct: cores.map((c) => pct(d(c, 'task') + d(c, 'irq'))),
    };
  }
}

module.exports = { Histogram, cpuSeconds, machineTimes, rssKiB, CpuMeter };
