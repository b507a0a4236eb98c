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

Every core (`cores`: N processes on one port + Redis, unpinned, saturation and the open loop at
80 %/120 % of it) is bench/cores.py, described there (and at the end of --help).

Environment: BENCH_SECONDS (relay measurement, default 10), BENCH_SHORT=1 (small C/N),
BENCH_ROUNDS, BENCH_SERVER_CPU (0), BENCH_GEN_CPU (1), BENCH_LOG_LEVEL (sscontrold's
--log-level, default warn). TLS churn runs twice: an ECDSA P-256 certificate and an RSA 2048 one.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import charts  # noqa: E402  SVG charts, no plotting library
import cores  # noqa: E402  the `cores` family (every core)
from harness import (  # noqa: E402  servers, generator, machine
    ROOT, SRC_ADDRS, Server, annotate, connection_ceiling, log, machine_info, make_cert, raise_fd_limit,
    run_loadgen, run_storm, wait_quiet)

OUT_DIR = ROOT / "build" / "bench"
SERVERS = ("sscontrold", "reference")

# Targets from issue 16: (metric, comparison, threshold, what) where what is "ratio" (sscontrold /
# reference, medians of the rounds) or "value" (sscontrold's own median). "Churn at >= 1.0x by
# server CPU per connection" is a cost: its ratio must be <= 1.0. The `cores` family's are in bench/cores.py.
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
    **cores.TARGETS,
}


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
    out += [cores.workload(short, seconds)]
    n = storm_conns or (1000 if short else min(10000, idle_max))
    out += [{"key": ("storm", how), "tls": None, "timeout": 240, "storm": how,
             "args": ["--workload", "storm", "--conns", str(n), "--src-addrs", SRC_ADDRS]}
            for how in ("term", "kill")]
    out += [{"key": ("idle",), "tls": None, "timeout": 180,
             "args": ["--workload", "idle", "--idle", ",".join(map(str, steps)), "--settle", "2",
                      "--src-addrs", SRC_ADDRS]}]
    return out


def result_key(rec: dict) -> tuple:
    if rec.get("family") == "cores":
        return cores.result_key(rec)
    if rec["workload"] == "relay":
        return ("relay", rec["conns"], rec["window"])
    if rec["workload"] == "churn":
        return ("churn", rec["tls"], rec.get("tls_key")) + ((True,) if rec.get("resume") else ())
    if rec["workload"] == "storm":
        return ("storm", rec["restart"])
    return ("idle", rec["conns"])


def label(key: tuple) -> str:
    if key[0] == "cores":
        return cores.label(key)
    if key[0] == "relay":
        return f"relay C={key[1]} W={key[2]}"
    if key[0] == "churn":
        return f"churn {'TLS ' + key[2].upper() if key[1] else 'plain'}{' resumed' if key[3:] else ''}"
    if key[0] == "storm":
        return f"storm {'restart' if key[1] == 'term' else 'kill'}"
    return f"idle N={key[1]}" if len(key) > 1 else "idle"


def kind_of(key) -> str:
    """The METRICS entry of a row: the workload family, or the phase for `cores`."""
    return cores.kind_of(key) if key[0] == "cores" else key[0]


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
    **cores.METRICS,
}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def matches(rec: dict, key: tuple, server: str) -> bool:
    """Whether a run belongs to a row. The reference (one process) of a `cores` phase is the
    comparison for every N of sscontrold."""
    if rec["server"] != server:
        return False
    k = result_key(rec)
    return cores.matches(k, key, server) if key[0] == "cores" else k == key


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
                     if vals["sscontrold"] is not None and vals["reference"] and metric not in cores.NO_RATIO else None)
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
        lines.append(f"  (...) = one process, for comparison: the every-core targets are for N={cores.ALL_CORES}")
    return "\n".join(lines)


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
                    server = cores.Workers(2, work, api_key)
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
    p = argparse.ArgumentParser(description=f"{__doc__}\n{cores.__doc__}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
                    for r in cores.run_cores(w, rnd, servers, work, api_key, args, info["log_level"], started):
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
