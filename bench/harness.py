"""The bench harness shared by bench/run.py (every family), bench/cores.py and bench/profile.py:
the machine (open-file limit, waiting for quiet, what it is), the servers (sscontrold with every
limit that could interfere lifted, the reference Node.js `ws` relay; throw-away certificates)
and the load generator (bench/loadgen), with the CPU cost per operation of a run. Nothing here
decides what is measured: that is bench/run.py's plan and bench/cores.py's.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cores import Workers

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LOADGEN = BENCH / "loadgen" / "loadgen.js"
REFERENCE = BENCH / "reference" / "relay.js"
SRC_ADDRS = ",".join(f"127.0.0.{i}" for i in range(2, 10))  # 8 source addresses: 8 x 28k ephemeral ports
CLK_TCK = os.sysconf("SC_CLK_TCK")

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


# --- the records

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
