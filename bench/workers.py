#!/usr/bin/env python3
"""Relay throughput with every core: N sscontrold processes sharing one port
(reuse_port, SO_REUSEPORT) and their rooms through a local redis-server, against
the reference (one Node.js process), side by side, alternating.

Nothing is pinned: the servers, Redis and the load generator share all the
machine's cores, as they would on a host where the generator is elsewhere only
if it has cores to spare. On a 2-core machine the generator takes a good part of
one core, so read the figure as what the host delivers, not what a core does.
The kernel spreads connections over the processes; a pair whose two peers
landed on different processes relays through Redis (pub/sub), as across hosts.

    python bench/workers.py                      # C=2000 W=16, 2 workers, 2 rounds
    python bench/workers.py --workers 2 --conns 2000 --window 16 --seconds 10 --rounds 2

Prints one JSON line per run and a summary line with the ratio. `server_cpu_*`
figures of sscontrold runs cover its first worker only.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  the harness of bench/run.py: servers, generator, machine facts


class Workers:
    """N sscontrold processes on one port, with a redis-server of their own."""

    def __init__(self, n: int, work: Path, api_key: str):
        self.port = run.free_port()
        redis_port = run.free_port()
        self.procs = []
        self.logs = []
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        empty = work / "empty.conf"
        empty.touch()
        env = run.clean_env(SSCONTROL_API_KEY=api_key, SSCONTROL_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
        time.sleep(0.3)
        for i in range(n):
            out = open(work / f"worker-{i}.log", "w")
            self.logs.append(out)
            self.procs.append(subprocess.Popen(run.twistd() + [
                "-n", "--pidfile=", "--reactor", "sscontrol-epoll", "sscontrol-signaling", "--config", str(empty),
                "--host", "127.0.0.1", "--port", str(self.port), "--reuse-port", "true", "--admin-enabled", "false",
                *run.unlimited_connections(),
                "--rate-limit-per-second", "1000000000", "--rate-limit-burst", "1000000000",
                "--rate-limit-strikes", "1000000", "--nonce-store-max", "100000000",
                "--ping-interval", "0", "--resume-grace", "0", "--auth-timeout", "120",
                "--handshake-timeout", "120", "--drain-timeout", "1", "--log-level", "warn",
            ], cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        time.sleep(2.0)  # every worker bound and registered with Redis
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"a worker exited with {p.returncode}: see {work}")

    pid = property(lambda self: self.procs[0].pid)
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
        for out in self.logs:
            out.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", "10")))
    p.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "2")))
    args = p.parse_args()
    run.raise_fd_limit(65536)
    info = run.machine_info()
    info.update({"workers": args.workers, "pinned": False})
    print(json.dumps({"machine": info}), flush=True)
    api_key = secrets.token_hex(16)
    loadgen_args = ["--workload", "relay", "--conns", str(args.conns), "--window", str(args.window),
                    "--warmup", "2", "--seconds", str(args.seconds)]
    results = {"sscontrold": [], "reference": []}
    with tempfile.TemporaryDirectory(prefix="sscontrol-workers-") as tmp:
        work = Path(tmp)
        for rnd in range(args.rounds):
            for kind in (("sscontrold", "reference") if rnd % 2 == 0 else ("reference", "sscontrold")):
                run.wait_quiet(20)
                server = Workers(args.workers, work, api_key) if kind == "sscontrold" else \
                    run.Server("reference", work, api_key, None, None, "warn")
                try:
                    recs = run.run_loadgen(server, loadgen_args, api_key, None, 60 + args.seconds)
                finally:
                    server.stop()
                for r in recs:
                    r.update({"server": kind, "round": rnd, "workers": args.workers if kind == "sscontrold" else 1})
                    print(json.dumps(r), flush=True)
                    if r.get("msgs_per_s"):
                        results[kind].append(r["msgs_per_s"])
    med = {k: sorted(v)[len(v) // 2] if v else None for k, v in results.items()}
    ratio = round(med["sscontrold"] / med["reference"], 3) if med["sscontrold"] and med["reference"] else None
    print(json.dumps({"summary": f"relay C={args.conns} W={args.window}, {args.workers} workers, all cores",
                      "msgs_per_s": {**med, "ratio": ratio, "all": results}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
