"""The `cores` family of bench/run.py (alone: `python bench/run.py --only cores`, i.e. `make
bench-workers`): its servers (`Workers`), its workload, its rounds (`run_cores`), its figures
and its targets. bench/run.py plans, runs and reports it with the other families.

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
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from harness import Server, annotate, clean_env, free_port, log, run_loadgen, sscontrold_cmd, wait_quiet

ALL_CORES = os.cpu_count() or 1
CORES_PHASES = {"sat": None, "at80": 0.8, "at120": 1.2}  # phase: rate as a fraction of saturation

# Targets from issue 16, as bench/run.py's TARGETS: sscontrold's own values with N = every core;
# with N = 1 the same figures are flagged for comparison only ("info": the targets are
# for all cores).
TARGETS: dict[tuple, list[tuple]] = {}
for _n, _info in ((1, ("info",)), (ALL_CORES, ())):
    TARGETS[("cores", "at80", _n)] = [("sched_p999_us", "<=", 100000, "value", *_info),
                                      ("sched_max_us", "<=", 1000000, "value", *_info),
                                      ("undelivered", "<=", 0, "value", *_info),
                                      # the load was carried: else the latency is of a part of it
                                      ("not_sent_pct", "<=", 1.0, "value", *_info)]
    TARGETS[("cores", "at120", _n)] = [("max_us", "<=", 1000000, "value", *_info),
                                       ("undelivered", "<=", 0, "value", *_info)]

# The figures of each phase, as bench/run.py's METRICS (the kind of a row is `cores-<phase>`).
METRICS = {
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


def workload(short: bool, seconds: float) -> dict:
    """The family's entry in bench/run.py's plan: the relay every phase runs."""
    return {"key": ("cores",), "tls": None, "cores": True, "conns": 200 if short else 2000, "window": 16,
            "sat_window": 1,
            "warmup": 1 if short else 2, "seconds": seconds, "processes": sorted({1, ALL_CORES})}


def result_key(rec: dict) -> tuple:
    return ("cores", rec["phase"], rec["processes"])


def label(key: tuple) -> str:
    return f"cores N={key[2]} " + {"sat": "saturation", "at80": "at 80%", "at120": "at 120%"}[key[1]]


def kind_of(key: tuple) -> str:
    """The METRICS entry of a row: the phase."""
    return f"cores-{key[1]}"


def matches(rec_key: tuple, key: tuple, server: str) -> bool:
    """Whether a run (its result key) belongs to a row: the reference (one process) of a phase is
    the comparison for every N of sscontrold."""
    return rec_key[:2] == key[:2] if server == "reference" else rec_key == key


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
