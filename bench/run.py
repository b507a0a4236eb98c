#!/usr/bin/env python3
"""Benchmark sscontrold against the reference Node.js `ws` relay, side by side.

For each workload, the reference (bench/reference/relay.js) and sscontrold are
started in turn (alternating which goes first, --rounds rounds), each a fresh
process pinned to one core (taskset), the load generator (bench/loadgen) pinned
to another. Prints one JSON line per run, then the figures and the
sscontrold/reference ratios as a table and as JSON lines. Everything goes to
127.0.0.1 only; every run is bounded in time.

    python bench/run.py                    # the full run (`make bench`), ~15 minutes
    BENCH_SECONDS=2 BENCH_SHORT=1 python bench/run.py   # a quick look (~3 minutes)
    python bench/run.py --smoke            # seconds: generator vs sscontrold, sanity-checked
    python bench/run.py --only relay --rounds 3
    python bench/run.py --only cores       # every core only (`make bench-workers`), ~6 minutes

Every core (`cores`, issue 16: "N processes on one port + Redis"): nothing is pinned; the
servers, Redis and the generator share every core, so the figures are what the host delivers.
Per round, for each configuration in turn (the order alternates by round): the reference (one
Node.js process), sscontrold N=1 and sscontrold N=os.cpu_count() processes on one port
(reuse_port), both with a redis-server of their own (N=1 too, so the scaling compares like
with like), each phase on a fresh server:
  saturation  closed-loop relay, C=2000 W=1 (C=200 with --short): msgs/s S; S/N (per
              process, i.e. per core) and, for sscontrold, scaling = S(N)/S(1) of the round.
              One message in flight per pair, as the open loop below sends them: single
              messages spread in time, one per read (W=16 would batch 16 per read, which
              costs a server less per message: 80 % of that is more than single messages
              can carry).
  at 80%      open loop (loadgen --rate) at 0.8 x S of that same configuration and round:
              latency from the scheduled send time (coordinated omission included) and from
              the actual send, the generator's own lag, not_sent (a pair already had W in
              flight), undelivered (still in flight 3 s after the load stopped).
  at 120%     open loop at 1.2 x S: delivered msgs/s (and as % of S), not_sent, latency of the
              delivered messages.
Targets (sscontrold's own medians with N = every core; the same with N=1 are printed in
parentheses, for comparison): at 80 %, p99.9 <= 100 ms and max <= 1 s from the scheduled time
(what a client that meant to send then sees), nothing undelivered, and at most 1 % of the
sends not made (the 80 % load was carried: else the latency is that of a part of it); at
120 %, max <= 1 s from the send for the delivered messages and nothing undelivered: overload is shed (not_sent, the
server's backpressure), not queued for seconds. Scaling is reported, without a threshold.
The server CPU of sscontrold covers every worker and Redis. With --short (C=200) each pair
carries ten times the rate, so its window of 16 fills, and sends are shed, at a tenth of the
latency: compare short runs with short runs only.

Environment: BENCH_SECONDS (relay measurement, default 10), BENCH_SHORT=1 (small C/N),
BENCH_ROUNDS, BENCH_SERVER_CPU (0), BENCH_GEN_CPU (1), BENCH_LOG_LEVEL (sscontrold's
--log-level, default warn). TLS churn runs twice: an ECDSA P-256 certificate and an RSA 2048 one.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import charts  # noqa: E402  SVG charts, no plotting library
BENCH = ROOT / "bench"
LOADGEN = BENCH / "loadgen" / "loadgen.js"
REFERENCE = BENCH / "reference" / "relay.js"
OUT_DIR = ROOT / "build" / "bench"
SRC_ADDRS = ",".join(f"127.0.0.{i}" for i in range(2, 10))  # 8 source addresses: 8 x 28k ephemeral ports
SERVERS = ("sscontrold", "reference")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Targets from issue 16: (metric, comparison, threshold, what) where what is "ratio" (sscontrold /
# reference, medians of the rounds) or "value" (sscontrold's own median). "Churn at >= 1.0x by
# server CPU per connection" is a cost: its ratio must be <= 1.0.
TARGETS = {
    ("relay", 200, 1): [("msgs_per_s", ">=", 1.0, "ratio"), ("p99_us", "<=", 1.0, "ratio")],
    ("relay", 2000, 1): [("msgs_per_s", ">=", 1.0, "ratio"), ("p99_us", "<=", 1.0, "ratio")],
    ("relay", 2000, 16): [("msgs_per_s", ">=", 2.0, "ratio")],
    ("idle",): [("kib_per_conn", "<=", 1.0, "ratio")],
    ("churn", False, None): [("connections_per_s", ">=", 1.0, "ratio"), ("server_cpu_us_per_op", "<=", 1.0, "ratio")],
    ("churn", True, "ec"): [("server_cpu_us_per_op", "<=", 1.0, "ratio")],
    ("churn", True, "rsa"): [("server_cpu_us_per_op", "<=", 1.0, "ratio")],
    ("churn", True, "ec", True): [("server_cpu_us_per_op", "<=", 1.0, "ratio"), ("resumed_pct", ">=", 90, "value")],
    ("churn", True, "rsa", True): [("server_cpu_us_per_op", "<=", 1.0, "ratio"), ("resumed_pct", ">=", 90, "value")],
    ("storm", "term"): [("all_back_s", "<=", 1.0, "ratio"), ("gave_up", "<=", 0, "value")],
    ("storm", "kill"): [("all_back_s", "<=", 1.0, "ratio"), ("gave_up", "<=", 0, "value")],
}
# Every core (the `cores` family): sscontrold's own values with N = every core; with N = 1 the
# same figures are flagged for comparison only ("info": the targets are for all cores).
ALL_CORES = os.cpu_count() or 1
CORES_PHASES = {"sat": None, "at80": 0.8, "at120": 1.2}  # phase: rate as a fraction of saturation
for _n, _info in ((1, ("info",)), (ALL_CORES, ())):
    TARGETS[("cores", "at80", _n)] = [("sched_p999_us", "<=", 100000, "value", *_info),
                                      ("sched_max_us", "<=", 1000000, "value", *_info),
                                      ("undelivered", "<=", 0, "value", *_info),
                                      # the load was carried: else the latency is of a part of it
                                      ("not_sent_pct", "<=", 1.0, "value", *_info)]
    TARGETS[("cores", "at120", _n)] = [("max_us", "<=", 1000000, "value", *_info),
                                       ("undelivered", "<=", 0, "value", *_info)]


def log(*parts) -> None:
    print("bench:", *parts, file=sys.stderr, flush=True)


# --- machine and limits

def raise_fd_limit(want: int) -> tuple[int, str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    note = ""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        if hard != resource.RLIM_INFINITY and hard < want:
            note = (f"could not raise the open-file limit to {want}: the hard limit is {hard} "
                    f"(no CAP_SYS_RESOURCE here); idle N is capped below it")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0], note


def connection_ceiling() -> int:
    """The most connections sscontrold accepts here: its open-file limit (the hard one)
    less what the daemon keeps for itself."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1000000 if hard == resource.RLIM_INFINITY else max(1, hard - 1000 - 64)


def unlimited_connections() -> list[str]:
    """Connection flags that let every client in: the daemon refuses limits past
    its open-file limit (raised to the hard one), so the largest that fits."""
    return ["--max-connections", str(connection_ceiling()), "--max-connections-per-ip", "1000000",
            "--max-http-connections", "1000", "--max-http-connections-per-ip", "1000",
            "--max-queued-bytes", str(1 << 30)]


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]) / CLK_TCK


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (bounded) until the machine is nearly idle (other engineers' tests may
    share it); returns the busy fraction of one core seen last."""
    deadline = time.monotonic() + max_wait
    while True:
        b0 = machine_busy()
        time.sleep(0.5)
        busy = (machine_busy() - b0) / 0.5
        if busy <= threshold or time.monotonic() >= deadline:
            return busy


def machine_info() -> dict:
    info = {"nproc": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["python"] = sys.version.split()[0]
    for mod in ("twisted", "autobahn"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    node = shutil.which("node")
    info["node"] = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip() if node else None
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sscontrold"], cwd=ROOT, capture_output=True,
                               text=True)
        info["commit"] = (head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
                          if head.returncode == 0 else None)
    except OSError:
        info["commit"] = None
    try:
        info["ws"] = json.loads((BENCH / "reference" / "node_modules" / "ws" / "package.json").read_text())["version"]
    except OSError:
        info["ws"] = None
    return info


# --- servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twistd() -> list[str]:
    script = Path(sys.executable).parent / "twistd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "twisted"]


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSCONTROL_", "SIGNALING_"))}
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    return env


def pinned(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []


def known_flags_only(cmd: list[str], daemon: list[str]) -> list[str]:
    """``cmd`` less the plugin's ``--flag value`` pairs that ``daemon`` (another build's
    twistd, as bench/ab.py runs) does not list in its --help: an older build lacks
    the limits added since, and is measured without them."""
    help_text = subprocess.run(daemon + ["sscontrol-signaling", "--help"], capture_output=True, text=True,
                               check=True).stdout
    at = cmd.index("sscontrol-signaling") + 1
    out = cmd[:at]
    for i in range(at, len(cmd), 2):
        assert cmd[i].startswith("--"), cmd[i]
        if f"{cmd[i]}=" in help_text:
            out += cmd[i:i + 2]
    return out


def sscontrold_cmd(work: Path, port: int, log_level: str, daemon: list[str] | None = None) -> list[str]:
    """sscontrold with an empty config file and every limit that could interfere lifted.
    ``daemon``: another build's twistd instead of this checkout's."""
    empty = work / "empty.conf"
    empty.touch()
    cmd = (daemon or twistd()) + [
        "-n", "--pidfile=", "--reactor", "sscontrol-epoll", "sscontrol-signaling", "--config", str(empty),
        "--host", "127.0.0.1", "--port", str(port), "--admin-enabled", "false",
        # no limit may interfere with the measurement
        *unlimited_connections(),
        "--rate-limit-per-second", "1000000000", "--rate-limit-burst", "1000000000",
        "--rate-limit-strikes", "1000000", "--nonce-store-max", "100000000",
        "--ping-interval", "0", "--resume-grace", "0", "--auth-timeout", "120",
        "--handshake-timeout", "120", "--drain-timeout", "1", "--log-level", log_level,
    ]
    return cmd if daemon is None else known_flags_only(cmd, daemon)


class Server:
    def __init__(self, kind: str, work: Path, api_key: str, tls: tuple[Path, Path] | None,
                 cpu: int | None, log_level: str, daemon: list[str] | None = None):
        self.kind = kind
        self.port = free_port()
        self.tls = tls
        self.logfile = work / f"{kind}-{self.port}.log"
        if kind == "sscontrold":
            cmd = sscontrold_cmd(work, self.port, log_level, daemon)
            if tls:
                cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
            env = clean_env(SSCONTROL_API_KEY=api_key)
        else:
            cmd = ["node", str(REFERENCE)]
            env = clean_env(SSCONTROL_API_KEY=api_key, SIGNALING_HOST="127.0.0.1", SIGNALING_PORT=self.port,
                            SSCONTROL_TLS_CERT=tls[0] if tls else None, SSCONTROL_TLS_KEY=tls[1] if tls else None)
        self._argv, self._env, self._cwd = pinned(cpu) + cmd, env, work
        self.out = open(self.logfile, "w")
        self._spawn()
        self._wait_ready()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(self._argv, cwd=self._cwd, env=self._env, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def restart(self, how: str, timeout: float = 60.0) -> dict:
        """Restart on the same port, as systemd does (``term``: SIGTERM, wait for the
        process to drain and exit, start a new one) or after a crash (``kill``: SIGKILL).
        Returns the old process's peak RSS and how long it took to exit."""
        old = self.proc
        peak = peak_rss_kib(old.pid)
        t0 = time.monotonic()
        old.send_signal(signal.SIGTERM if how == "term" else signal.SIGKILL)
        try:
            old.wait(timeout)
        except subprocess.TimeoutExpired:
            old.kill()
            old.wait(5)
        exited = time.monotonic() - t0
        self._spawn()
        return {"old_peak_rss_kib": peak, "old_exit_s": round(exited, 3)}

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs the server: same pid

    @property
    def pids(self) -> str:
        return str(self.proc.pid)

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/ws"

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}: see {self.logfile}")
            try:
                if self.tls:
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=2, context=ctx)
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                ok = conn.getresponse().status == 200
                conn.close()
                if ok:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} did not answer /health within {timeout} s: see {self.logfile}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()


class Workers:
    """N sscontrold processes on one port (reuse_port, SO_REUSEPORT), sharing rooms through
    a redis-server of their own. The kernel spreads connections over the processes; a pair
    whose two peers landed on different processes relays through Redis (pub/sub)."""

    def __init__(self, n: int, work: Path, api_key: str, log_level: str = "warn"):
        self.kind = "sscontrold"
        self.n = n
        self.port = free_port()
        redis_port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.logs = []
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_port(redis_port, 10.0, "redis-server")
            env = clean_env(SSCONTROL_API_KEY=api_key, SSCONTROL_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
            for i in range(n):
                out = open(work / f"worker-{self.port}-{i}.log", "w")
                self.logs.append(out)
                self.procs.append(subprocess.Popen(
                    sscontrold_cmd(work, self.port, log_level) + ["--reuse-port", "true"],
                    cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
            self._wait_port(self.port, 30.0, "sscontrold")
            time.sleep(1.5)  # every worker bound and registered with Redis, not only the first
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a worker exited with {p.returncode}: see {work}/worker-{self.port}-*.log")
        except BaseException:
            self.stop()
            raise

    def _wait_port(self, port: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")

    pid = property(lambda self: self.procs[0].pid)
    # CPU and RSS of the deployment: every worker and Redis
    pids = property(lambda self: ",".join(str(p.pid) for p in self.procs + [self.redis]))
    url = property(lambda self: f"ws://127.0.0.1:{self.port}/ws")

    def stop(self) -> None:
        for p in self.procs + [self.redis]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs + [self.redis]:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for out in self.logs:
            out.close()


def peak_rss_kib(pid: int) -> int | None:
    """A process's peak resident set (VmHWM), KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def make_cert(work: Path, kind: str) -> tuple[Path, Path]:
    """A throw-away self-signed certificate for 127.0.0.1 (ECDSA P-256 or RSA 2048)."""
    cert, key = work / f"cert-{kind}.pem", work / f"key-{kind}.pem"
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if kind == "ec" else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


# --- the generator

def run_loadgen(server: Server | Workers, args: list[str], api_key: str, cpu: int | None,
                timeout: float) -> list[dict]:
    cmd = pinned(cpu) + ["node", str(LOADGEN), "--url", server.url, "--server-pid", server.pids, *args]
    proc = subprocess.run(cmd, env=clean_env(SSCONTROL_API_KEY=api_key), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def run_storm(server: Server, args: list[str], api_key: str, cpu: int | None, timeout: float,
              how: str) -> list[dict]:
    """The reconnect storm: the generator joins its clients and says so; the server is
    then restarted (``term``) or killed and started again (``kill``); the generator
    reports when every pair relays again. Adds the new process's peak RSS and CPU."""
    cmd = pinned(cpu) + ["node", str(LOADGEN), "--url", server.url, *args]
    proc = subprocess.Popen(cmd, env=clean_env(SSCONTROL_API_KEY=api_key), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        line = proc.stdout.readline()
        if not line.startswith('{"storm_ready"'):
            raise RuntimeError(f"loadgen did not get ready: {line.strip()} {proc.stderr.read()[-2000:]}")
        proc.stdin.write(json.dumps({"restart_at_ms": time.time() * 1000}) + "\n")
        proc.stdin.flush()
        facts = server.restart(how)
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError("storm: the generator did not finish in time") from None
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen failed ({proc.returncode}): {err.strip()[-2000:]}")
        recs = [json.loads(x) for x in out.splitlines() if x.startswith('{"workload"')]
        cpu_s = proc_cpu_seconds(server.pid)
        for r in recs:
            r.update(facts, restart=how, new_peak_rss_kib=peak_rss_kib(server.pid), new_server_cpu_s=cpu_s)
            r["server_peak_rss_kib"] = max(v for v in (facts["old_peak_rss_kib"], r["new_peak_rss_kib"], 0)
                                           if v is not None)
        return recs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / CLK_TCK, 2)
    except (OSError, IndexError, ValueError):
        return None


def plan(short: bool, seconds: float, idle_max: int, tls_keys=(None, "ec", "rsa"),
         storm_conns: int | None = None) -> list[dict]:
    """The workloads: each a dict with a key (for pairing runs) and loadgen arguments."""
    relay_cw = [(20, 1), (20, 16), (200, 1), (200, 16)] if short else [(200, 1), (200, 16), (2000, 1), (2000, 16)]
    churn_s = min(5.0, seconds)
    steps = [1000, 2000] if short else [10000] + ([min(30000, idle_max)] if idle_max > 10000 else [])
    steps = [n for n in steps if n <= idle_max] or [idle_max]
    out = [{"key": ("relay", c, w), "tls": None, "timeout": 60 + seconds,
            "args": ["--workload", "relay", "--conns", str(c), "--window", str(w), "--warmup", "2",
                     "--seconds", str(seconds)]} for c, w in relay_cw]
    out += [{"key": ("churn", tls is not None, tls), "tls": tls, "timeout": 60 + churn_s,
             "args": ["--workload", "churn", "--concurrency", "64", "--warmup", "1", "--seconds", str(churn_s),
                      "--src-addrs", SRC_ADDRS]} for tls in tls_keys]
    # TLS churn again, every connection resuming its loop's previous session (tickets)
    out += [{"key": ("churn", True, tls, True), "tls": tls, "timeout": 60 + churn_s,
             "args": ["--workload", "churn", "--concurrency", "64", "--warmup", "1", "--seconds", str(churn_s),
                      "--src-addrs", SRC_ADDRS, "--resume", "1"]} for tls in tls_keys if tls]
    out += [{"key": ("cores",), "tls": None, "cores": True, "conns": 200 if short else 2000, "window": 16,
             "sat_window": 1,
             "warmup": 1 if short else 2, "seconds": seconds, "processes": sorted({1, ALL_CORES})}]
    n = storm_conns or (1000 if short else min(10000, idle_max))
    out += [{"key": ("storm", how), "tls": None, "timeout": 240, "storm": how,
             "args": ["--workload", "storm", "--conns", str(n), "--src-addrs", SRC_ADDRS]}
            for how in ("term", "kill")]
    out += [{"key": ("idle",), "tls": None, "timeout": 180,
             "args": ["--workload", "idle", "--idle", ",".join(map(str, steps)), "--settle", "2",
                      "--src-addrs", SRC_ADDRS]}]
    return out


def annotate(rec: dict, server_cpu: int | None = None, gen_cpu: int | None = None) -> dict:
    """CPU cost per operation (a relayed message, a connection) of the server and of the
    generator: comparable even when a run did not saturate the server. And how busy the
    server's and the generator's cores were (processes + irq/softirq)."""
    cores = rec.get("core_busy_pct") or []
    for who, cpu in (("server", server_cpu), ("gen", gen_cpu)):
        if cpu is not None and cpu < len(cores):
            rec[f"{who}_core_busy_pct"] = cores[cpu]
    rate = rec.get("msgs_per_s") if rec["workload"] == "relay" else rec.get("connections_per_s")
    for who in ("server", "gen"):
        pct = rec.get(f"{who}_cpu_pct")
        if rate and pct is not None:
            rec[f"{who}_cpu_us_per_op"] = round(pct / 100 * 1e6 / rate, 2)
    return rec


def result_key(rec: dict) -> tuple:
    if rec.get("family") == "cores":
        return ("cores", rec["phase"], rec["processes"])
    if rec["workload"] == "relay":
        return ("relay", rec["conns"], rec["window"])
    if rec["workload"] == "churn":
        return ("churn", rec["tls"], rec.get("tls_key")) + ((True,) if rec.get("resume") else ())
    if rec["workload"] == "storm":
        return ("storm", rec["restart"])
    return ("idle", rec["conns"])


def label(key: tuple) -> str:
    if key[0] == "cores":
        return f"cores N={key[2]} " + {"sat": "saturation", "at80": "at 80%", "at120": "at 120%"}[key[1]]
    if key[0] == "relay":
        return f"relay C={key[1]} W={key[2]}"
    if key[0] == "churn":
        return f"churn {'TLS ' + key[2].upper() if key[1] else 'plain'}{' resumed' if key[3:] else ''}"
    if key[0] == "storm":
        return f"storm {'restart' if key[1] == 'term' else 'kill'}"
    return f"idle N={key[1]}" if len(key) > 1 else "idle"


def kind_of(key) -> str:
    """The METRICS entry of a row: the workload family, or the phase for `cores`."""
    return f"cores-{key[1]}" if key[0] == "cores" else key[0]


METRICS = {
    "relay": [("msgs_per_s", "msgs/s", True), ("p50_us", "p50 us", False), ("p99_us", "p99 us", False),
              ("p999_us", "p99.9 us", False), ("server_cpu_us_per_op", "srv CPU us/msg", False),
              ("gen_cpu_us_per_op", "gen CPU us/msg", False)],
    "churn": [("connections_per_s", "connections/s", True), ("resumed_pct", "resumed %", True),
              ("session_p50_us", "session p50 us", False),
              ("server_cpu_us_per_op", "srv CPU us/conn", False), ("gen_cpu_us_per_op", "gen CPU us/conn", False)],
    "idle": [("kib_per_conn", "KiB/connection", False), ("server_rss_after_kib", "server RSS KiB", False)],
    "storm": [("all_back_s", "all back s", False), ("failed_attempts", "failed attempts", False),
              ("gave_up", "gave up", False), ("server_peak_rss_kib", "peak RSS KiB", False),
              ("new_server_cpu_s", "new srv CPU s", False)],
    "cores-sat": [("msgs_per_s", "msgs/s", True), ("msgs_per_s_per_process", "msgs/s/process", True),
                  ("scaling", "x of N=1", True), ("p99_us", "p99 us", False), ("p999_us", "p99.9 us", False),
                  ("max_us", "max us", False), ("server_cpu_us_per_op", "srv CPU us/msg", False)],
    "cores-at80": [("offered_per_s", "offered/s", True), ("msgs_per_s", "delivered/s", True),
                   ("sched_p999_us", "p99.9 us sched", False), ("sched_max_us", "max us sched", False),
                   ("p999_us", "p99.9 us send", False), ("max_us", "max us send", False),
                   ("lag_max_us", "gen lag max us", False), ("not_sent_pct", "not sent %", False),
                   ("undelivered", "undelivered", False)],
    "cores-at120": [("offered_per_s", "offered/s", True), ("msgs_per_s", "delivered/s", True),
                    ("delivered_of_sat_pct", "delivered % of S", True), ("not_sent_pct", "not sent %", False),
                    ("p999_us", "p99.9 us send", False), ("max_us", "max us send", False),
                    ("sched_max_us", "max us sched", False), ("undelivered", "undelivered", False)],
}
# Figures whose sscontrold/reference ratio says nothing (each server's load is set from its own
# saturation; scaling is sscontrold's own).
NO_RATIO = {"offered_per_s", "scaling", "not_sent_pct", "undelivered", "lag_max_us", "delivered_of_sat_pct"}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def matches(rec: dict, key: tuple, server: str) -> bool:
    """Whether a run belongs to a row. The reference (one process) of a `cores` phase is the
    comparison for every N of sscontrold."""
    if rec["server"] != server:
        return False
    k = result_key(rec)
    return k[:2] == key[:2] if key[0] == "cores" and server == "reference" else k == key


def summarize(records: list[dict]) -> list[dict]:
    keys = []
    for r in records:
        k = result_key(r)
        if k not in keys:
            keys.append(k)
    rows = []
    for k in keys:
        per = {s: [r for r in records if matches(r, k, s)] for s in SERVERS}
        row = {"summary": label(k), "key": list(k), "kind": kind_of(k), "runs": {s: len(v) for s, v in per.items()}}
        for metric, _, _ in METRICS[kind_of(k)] + [(m, "", None) for m in (
                "gen_cpu_pct", "server_cpu_pct", "gen_elu", "other_cpu_pct", "irq_cpu_pct",
                "server_core_busy_pct", "gen_core_busy_pct")]:
            vals = {s: median([r.get(metric) for r in per[s]]) for s in SERVERS}
            ratio = (vals["sscontrold"] / vals["reference"]
                     if vals["sscontrold"] is not None and vals["reference"] and metric not in NO_RATIO else None)
            row[metric] = {**vals, "ratio": round(ratio, 3) if ratio is not None else None,
                           "all": {s: [r.get(metric) for r in per[s]] for s in SERVERS}}
        targets = TARGETS.get(k[:1] if k[0] == "idle" else k, [])
        row["targets"] = []
        for metric, op, threshold, what, *flags in targets:
            value = row[metric]["ratio"] if what == "ratio" else row[metric]["sscontrold"]
            ok = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
            row["targets"].append({"metric": metric, "target": f"{op} {threshold}{'x' if what == 'ratio' else ''}",
                                   "threshold": threshold, "of": what, "ratio": value, "met": ok,
                                   "info": "info" in flags})
        # Whether the generator, not the server, may have set the pace of a run.
        # (judged on the generator's own figures: a busy generator core may be other processes,
        # which the noise check reports)
        row["generator_limited"] = {s: any((r.get("gen_elu") or 0) > 0.9 or (r.get("gen_cpu_pct") or 0) > 90
                                           for r in per[s]) for s in SERVERS}
        row["noisy_runs"] = {s: sum(1 for r in per[s] if r.get("noisy")) for s in SERVERS}
        rows.append(row)
    return rows


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v < 100:
        return f"{v:.2f}"
    return f"{v:,.0f}"


def pct(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def table(rows: list[dict]) -> str:
    lines = [f"{'workload':<20} {'figure':<16} {'sscontrold':>12} {'reference':>12} {'ratio':>7}  "
             f"{'target':<9} {'core busy% srv/gen':<20} note"]
    lines.append("-" * len(lines[0]))
    for row in rows:
        kind = row.get("kind", row["key"][0])
        cpu = (f"{pct(row['server_core_busy_pct']['sscontrold'])}/{pct(row['gen_core_busy_pct']['sscontrold'])} | "
               f"{pct(row['server_core_busy_pct']['reference'])}/{pct(row['gen_core_busy_pct']['reference'])}")
        first = True
        for metric, name, _ in METRICS[kind]:
            m = row[metric]
            target = next((t for t in row["targets"] if t["metric"] == metric), None)
            met = " ok" if target and target["met"] else " NO" if target and target["met"] is False else ""
            if target and target.get("info") and met:
                met = f" ({met.strip()})"
            tgt = f"{target['target']}{met}" if target else ""
            note = ""
            if first:
                limited = [s for s, v in row["generator_limited"].items() if v]
                notes = [f"generator near saturation for: {', '.join(limited)}"] if limited else []
                noisy = {s: n for s, n in row["noisy_runs"].items() if n}
                if noisy:
                    notes.append("noisy runs: " + ", ".join(f"{s} {n}" for s, n in noisy.items()))
                note = "; ".join(notes)
            lines.append(f"{row['summary'] if first else '':<20} {name:<16} {fmt(m['sscontrold']):>12} "
                         f"{fmt(m['reference']):>12} {fmt(m['ratio']):>7}  {tgt:<9} {cpu if first else '':<20} {note}")
            first = False
    return "\n".join(lines)


def targets_report(rows: list[dict]) -> str:
    """Every target of issue 16, met or not, in the order of the run."""
    lines = ["targets (issue 16; ratio = sscontrold / reference, medians of the rounds):"]
    info = False
    for row in rows:
        for t in row["targets"]:
            verdict = "MET" if t["met"] else "NOT MET" if t["met"] is False else "NO FIGURE"
            if t.get("info"):
                verdict, info = f"({verdict})", True
            lines.append(f"  {verdict:<9} {row['summary']:<22} {t['metric']:<22} {t['target']:<8} "
                         f"{'ratio' if t['of'] == 'ratio' else 'value'} {fmt(t['ratio'])}")
    missing = ["idle" if k[0] == "idle" else label(k) for k in TARGETS
               if not any((r["key"][0] == "idle") if k[0] == "idle" else tuple(r["key"]) == k for r in rows)]
    for name in missing:
        lines.append(f"  NOT RUN   {name}")
    if info:
        lines.append(f"  (...) = one process, for comparison: the every-core targets are for N={ALL_CORES}")
    return "\n".join(lines)


def run_cores(w: dict, rnd: int, servers: list[str], work: Path, api_key: str, args, log_level: str,
              started: float) -> list[dict]:
    """One round of the `cores` family: for the reference (one process) and for sscontrold with
    each N of w["processes"] (N processes on one port + Redis), in turn (the order alternates
    by round): saturation (closed loop), then the open loop at 0.8 and 1.2 x that saturation,
    each on a fresh server. Nothing pinned. Returns the round's records, with the per-process
    throughput and the scaling S(N)/S(1) of sscontrold filled in."""
    configs = [(kind, n) for kind in ("reference", "sscontrold") if kind in servers
               for n in ((1,) if kind == "reference" else w["processes"])]
    if rnd % 2:
        configs.reverse()
    def relay(window: int) -> list[str]:
        return ["--workload", "relay", "--conns", str(w["conns"]), "--window", str(window),
                "--warmup", str(w["warmup"]), "--seconds", str(w["seconds"])]
    timeout = 90 + w["warmup"] + w["seconds"]
    recs_round = []
    for kind, n in configs:
        saturation = None
        for phase, factor in CORES_PHASES.items():
            name = label(("cores", phase, n)) + f" ({kind})"
            if factor is not None and not saturation:
                log(f"{name}: skipped, no saturation figure")
                continue
            # saturation: closed loop, one message in flight per pair; the open loop may hold
            # up to w["window"] per pair before it counts a send as not made
            gen_args = (relay(w["window"]) + ["--rate", str(round(factor * saturation))] if factor
                        else relay(w["sat_window"]))
            for attempt in range(1 + args.retries):
                # a full wait before each server's first phase; the next follow at once
                busy = wait_quiet(args.quiet_wait if factor is None else min(3.0, args.quiet_wait))
                recs = []
                try:
                    server = Server(kind, work, api_key, None, None, log_level) if kind == "reference" else \
                        Workers(n, work, api_key, log_level)
                except Exception as e:
                    log(f"{name}: {e}")
                    break
                try:
                    recs = run_loadgen(server, gen_args, api_key, None, timeout)
                except Exception as e:
                    log(f"{name}: {e}")
                finally:
                    server.stop()
                noise = max([r.get("other_cpu_pct") or 0 for r in recs] or [0])
                if noise <= args.max_noise or attempt == args.retries or time.monotonic() - started > args.budget:
                    break
                log(f"{name}: other processes used {noise:.0f}% of a core meanwhile: measuring again")
            for r in recs:
                r.update({"family": "cores", "phase": phase, "processes": n, "server": kind, "round": rnd,
                          "busy_before": round(busy, 2), "attempt": attempt,
                          "noisy": (r.get("other_cpu_pct") or 0) > args.max_noise})
                annotate(r)
                if factor is None:
                    saturation = r.get("msgs_per_s")
                    r["msgs_per_s_per_process"] = round(saturation / n) if saturation else None
                else:
                    r["sat_msgs_per_s"] = saturation
                    r["delivered_of_sat_pct"] = round(100 * r["msgs_per_s"] / saturation, 1)
                recs_round.append(r)
    sat = {r["processes"]: r.get("msgs_per_s") for r in recs_round
           if r["server"] == "sscontrold" and r["phase"] == "sat"}
    for r in recs_round:
        if r["server"] == "sscontrold" and r["phase"] == "sat" and sat.get(1) and r.get("msgs_per_s"):
            r["scaling"] = round(r["msgs_per_s"] / sat[1], 3)
    return recs_round


def smoke(args) -> int:
    """Seconds-long: the generator against sscontrold (plain and TLS, full and resumed
    handshakes, a small reconnect storm, an open-loop relay through two processes on one
    port + Redis), numbers sanity-checked."""
    if not shutil.which("node"):
        print("SKIP: node is not installed")
        return 77
    api_key = secrets.token_hex(16)
    failures = []
    with tempfile.TemporaryDirectory(prefix="sscontrol-bench-") as tmp:
        work = Path(tmp)
        cert = make_cert(work, "ec") if shutil.which("openssl") else None
        runs = [(False, ["--workload", "relay", "--conns", "20", "--window", "4", "--warmup", "0.5",
                         "--seconds", "1.5"]),
                (False, ["--workload", "churn", "--concurrency", "4", "--warmup", "0.2", "--seconds", "1"]),
                (False, ["--workload", "idle", "--idle", "200", "--settle", "0.5"])]
        if cert:
            runs.append((True, ["--workload", "churn", "--concurrency", "4", "--warmup", "0.2", "--seconds", "1"]))
            runs.append((True, ["--workload", "churn", "--concurrency", "4", "--warmup", "0.2", "--seconds", "1",
                                "--resume", "1"]))
        runs.append((False, ["--workload", "storm", "--conns", "40", "--storm-give-up", "30"]))
        # open loop, through two processes on one port + Redis when redis-server is there (`cores`)
        runs.append((False, ["--workload", "relay", "--conns", "20", "--window", "4", "--warmup", "0.5",
                             "--seconds", "1.5", "--rate", "2000"]))
        for tls, gen_args in runs:
            try:
                if "--rate" in gen_args and shutil.which("redis-server"):
                    server = Workers(2, work, api_key)
                else:
                    server = Server("sscontrold", work, api_key, cert if tls else None, None, "warn")
            except Exception as e:
                failures.append(f"{gen_args[1]}: the server did not start: {e}")
                continue
            try:
                if gen_args[1] == "storm":
                    recs = run_storm(server, gen_args, api_key, None, 60, "term")
                else:
                    recs = run_loadgen(server, gen_args, api_key, None, timeout=60)
            except Exception as e:
                failures.append(f"{gen_args[1]}{' tls' if tls else ''}: {e}")
                continue
            finally:
                server.stop()
            for r in recs:
                print(json.dumps(r))
                w = r["workload"]
                if w == "relay":
                    ok = (r["msgs"] > 100 and r["errors"] == 0 and r["closed_early"] == 0
                          and 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"])
                    if r.get("mode") == "open":  # every message is late from its schedule by its send's lag
                        ok = (ok and r["offered_per_s"] > 1000 and r["undelivered"] == 0
                              and r["not_sent"] <= r["offered"]
                              and r["p999_us"] <= r["sched_p999_us"] <= r["sched_max_us"]
                              and r["max_us"] <= r["sched_max_us"])
                elif w == "churn":
                    ok = r["sessions"] > 5 and r["errors"] == 0 and r["connections_per_s"] > 0
                    if r["resume"]:  # nearly every handshake resumed (the first of each loop cannot)
                        ok = ok and r["resumed_pct"] >= 50
                elif w == "storm":
                    ok = (r["completed"] and r["gave_up"] == 0 and r["pairs_back"] == 20
                          and r["all_back_s"] is not None and r["hinted_closes"] == 40)
                else:
                    ok = (r["conns"] == 200 and r["liveness_ok"] == r["liveness_checked"] > 0
                          and r["closed_early"] == 0 and r["kib_per_conn"] is not None
                          and 0 < r["kib_per_conn"] < 1000)
                if not ok:
                    failures.append(f"{w}: implausible figures {r}")
    if failures:
        for f in failures:
            print("FAIL:", f)
        return 1
    print("bench smoke: ok")
    return 0


def gen_check(args, server_cpu, gen_cpu) -> int:
    """The generator's own cost: the raw-socket client and the `ws` package's client,
    each driving the reference relay (the faster server) at the same workloads."""
    api_key = secrets.token_hex(16)
    print(f"{'workload':<20} {'client':<6} {'msgs/s':>9} {'gen CPU%':>9} {'gen us/msg':>11} "
          f"{'srv CPU%':>9} {'srv us/msg':>11}")
    with tempfile.TemporaryDirectory(prefix="sscontrol-bench-") as tmp:
        for conns, window in ((200, 1), (2000, 16)):
            for client in ("raw", "ws"):
                wait_quiet(args.quiet_wait)
                server = Server("reference", Path(tmp), api_key, None, server_cpu, "warn")
                try:
                    (r,) = run_loadgen(server, ["--workload", "relay", "--conns", str(conns), "--window", str(window),
                                                "--warmup", "2", "--seconds", str(args.seconds), "--client", client],
                                       api_key, gen_cpu, 60 + args.seconds)
                finally:
                    server.stop()
                annotate(r, server_cpu, gen_cpu)
                print(f"{label(result_key(r)):<20} {client:<6} {r['msgs_per_s']:>9,} {r['gen_cpu_pct']:>9} "
                      f"{r['gen_cpu_us_per_op']:>11} {r['server_cpu_pct']:>9} {r['server_cpu_us_per_op']:>11}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a seconds-long sanity run against sscontrold only")
    p.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "2")))
    p.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", "10")))
    p.add_argument("--short", action="store_true", default=os.environ.get("BENCH_SHORT", "") not in ("", "0"))
    p.add_argument("--only", default="", help="comma-separated: relay, churn, idle, storm, cores")
    p.add_argument("--storm-conns", type=int, default=int(os.environ.get("BENCH_STORM_CONNS", "0")) or None,
                   help="clients in the reconnect storm (default 10000, 1000 with --short)")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--gen-check", action="store_true",
                   help="compare the generator's raw client with the ws package's client against the reference")
    p.add_argument("--max-noise", type=float, default=20.0,
                   help="CPU %% of one core used by other processes during a run above which it is run again")
    p.add_argument("--retries", type=int, default=1, help="re-runs of a noisy run")
    p.add_argument("--budget", type=float, default=480.0,
                   help="seconds after which noisy runs are no longer repeated")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="seconds to wait, before each run, for other load on the machine to stop")
    args = p.parse_args()
    # a SIGTERM unwinds like Ctrl-C: the finally blocks stop the servers and the generator
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.smoke:
        return smoke(args)

    server_cpu = int(os.environ.get("BENCH_SERVER_CPU", "0"))
    gen_cpu = int(os.environ.get("BENCH_GEN_CPU", "1"))
    if (os.cpu_count() or 1) < 2:
        log("fewer than 2 cores: server and generator are not pinned apart")
        server_cpu = gen_cpu = None
    if args.gen_check:
        return gen_check(args, server_cpu, gen_cpu)
    fd_limit, fd_note = raise_fd_limit(65536)
    if fd_note:
        log(fd_note)
    # the idle workload's largest N: within the generator's open files and below the
    # daemon's connection ceiling (its warm-up pairs are closed by then; 100 to spare)
    idle_max = max(1000, min(30000, fd_limit - 1000, connection_ceiling() - 100))
    info = machine_info()
    info.update({"fd_limit": fd_limit, "server_cpu": server_cpu, "gen_cpu": gen_cpu, "rounds": args.rounds,
                 "relay_seconds": args.seconds, "short": args.short,
                 "log_level": os.environ.get("BENCH_LOG_LEVEL", "warn")})
    if fd_note:
        info["fd_note"] = fd_note
    print(json.dumps({"machine": info}), flush=True)

    servers = [s for s in args.servers.split(",") if s]
    only = {w for w in args.only.split(",") if w}
    work_plan = [w for w in plan(args.short, args.seconds, idle_max, storm_conns=args.storm_conns)
                 if not only or w["key"][0] in only]
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = OUT_DIR / f"results-{stamp}.jsonl"
    api_key = secrets.token_hex(16)
    records = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sscontrol-bench-") as tmp, open(out_path, "w") as out:
        out.write(json.dumps({"machine": info}) + "\n")
        work = Path(tmp)
        certs = {kind: make_cert(work, kind) for kind in ("ec", "rsa")}
        for rnd in range(args.rounds):
            for w in work_plan:
                if w.get("cores"):
                    for r in run_cores(w, rnd, servers, work, api_key, args, info["log_level"], started):
                        line = json.dumps(r)
                        print(line, flush=True)
                        out.write(line + "\n")
                        records.append(r)
                    continue
                order = servers if rnd % 2 == 0 else list(reversed(servers))
                for kind in order:
                    for attempt in range(1 + args.retries):
                        busy = wait_quiet(args.quiet_wait)
                        server = Server(kind, work, api_key, certs[w["tls"]] if w["tls"] else None, server_cpu,
                                        info["log_level"])
                        try:
                            if w.get("storm"):
                                recs = run_storm(server, w["args"], api_key, gen_cpu, w["timeout"], w["storm"])
                            else:
                                recs = run_loadgen(server, w["args"], api_key, gen_cpu, w["timeout"])
                        except Exception as e:
                            log(f"{kind} {label(w['key'])}: {e}")
                            recs = []
                        finally:
                            server.stop()
                        noise = max([r.get("other_cpu_pct") or 0 for r in recs] or [0])
                        if noise <= args.max_noise or attempt == args.retries or \
                                time.monotonic() - started > args.budget:
                            break
                        log(f"{kind} {label(w['key'])}: other processes used {noise:.0f}% of a core "
                            f"meanwhile: measuring again")
                    for r in recs:
                        r.update({"server": kind, "round": rnd, "busy_before": round(busy, 2),
                                  "attempt": attempt, "noisy": (r.get("other_cpu_pct") or 0) > args.max_noise})
                        if w["tls"]:
                            r["tls_key"] = w["tls"]
                        annotate(r, server_cpu, gen_cpu)
                        line = json.dumps(r)
                        print(line, flush=True)
                        out.write(line + "\n")
                        records.append(r)
        rows = summarize(records)
        for row in rows:
            out.write(json.dumps(row) + "\n")
    print()
    print(table(rows))
    print()
    print(targets_report(rows))
    print()
    for row in rows:
        print(json.dumps({k: v for k, v in row.items()}))
    page = charts.write(rows, METRICS, out_path.with_name(out_path.stem.replace("results", "charts")))
    log(f"done in {time.monotonic() - started:.0f} s; results in {out_path.relative_to(ROOT)}; "
        f"charts in {page.parent.relative_to(ROOT)}/ ({page.name} embeds them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
