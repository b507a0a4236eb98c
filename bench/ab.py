#!/usr/bin/env python3
"""A/B: this checkout's sscontrold against an older build of it, each beside the
reference relay, in one run on one machine: what a change costs, told from what
the day's machine does to every figure.

    make bench-ab BENCH_OLD=2d09f22                         # 2 rounds, ~5 minutes
    make bench-ab BENCH_OLD=2d09f22 BENCH_ARGS="--rounds 3 --only relay"
    .venv/bin/python bench/ab.py --old-twistd /path/to/.venv/bin/twistd   # after one make bench-ab

`make bench-ab` installs what the bench needs (the virtualenv, node and the reference's
`ws`) and runs ``bench/ab.py --old $(BENCH_OLD)``.

``--old REV`` checks REV out into build/ab/REV (a git worktree) and makes its
virtualenv there (`make venv`), once. Each round runs every workload against the
three servers, in an order that alternates from round to round; the older build
gets only the flags its --help lists (it lacks the limits added since). Printed:
one line per run, then each figure's ratio to the reference for both builds
(medians of the rounds) and new/old, the change itself.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  what bench/run.py runs: servers, generator, pinning

ROOT = Path(__file__).resolve().parent.parent

WORKLOADS = {  # the figures the 7 % of 2026-12-03 was seen in: relay throughput, connection cost
    "relay C=2000 W=16": (["--workload", "relay", "--conns", "2000", "--window", "16", "--warmup", "2",
                           "--seconds", "8"], "msgs_per_s"),
    "churn plain": (["--workload", "churn", "--concurrency", "64", "--warmup", "1", "--seconds", "5",
                     "--src-addrs", harness.SRC_ADDRS], "connections_per_s"),
}


def build_old(rev: str) -> Path:
    """twistd of ``rev``, checked out and installed under build/ab/ (once)."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    tree = ROOT / "build" / "ab" / sha
    if not tree.exists():
        # `make clean` removes build/ but git still lists the worktree: forget it first
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT, check=True)
    if not (tree / ".venv" / ".installed").exists():  # the Makefile's stamp: made whole, or made again
        subprocess.run(["make", "venv"], cwd=tree, check=True)
    return tree / ".venv" / "bin" / "twistd"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    old = p.add_mutually_exclusive_group(required=True)
    old.add_argument("--old", metavar="REV", help="a git revision of this repository")
    old.add_argument("--old-twistd", type=Path, metavar="PATH", help="an installed build's twistd")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", choices=[name.split()[0] for name in WORKLOADS], help="one workload")
    args = p.parse_args()
    workloads = {name: w for name, w in WORKLOADS.items() if args.only in (None, name.split()[0])}
    old_twistd = args.old_twistd or build_old(args.old)
    builds = {"new": None, "old": [str(old_twistd)]}
    harness.raise_fd_limit(65536)
    api_key = secrets.token_hex(16)
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="sscontrol-ab-") as tmp:
        for rnd in range(args.rounds):
            order = ["new", "old", "reference"] if rnd % 2 == 0 else ["reference", "old", "new"]
            for name, (gen, key) in workloads.items():
                for variant in order:
                    harness.wait_quiet(20)
                    kind = "reference" if variant == "reference" else "sscontrold"
                    server = harness.Server(kind, Path(tmp), api_key, None, 0, "warn", builds.get(variant))
                    try:
                        (rec,) = harness.run_loadgen(server, gen, api_key, 1, 120)
                    finally:
                        server.stop()
                    harness.annotate(rec, 0, 1)
                    cpu = rec.get("server_cpu_us_per_op") or float("nan")
                    figures.setdefault((name, variant), []).append((rec[key], cpu))
                    print(f"round {rnd + 1} {name:<18} {variant:<9} {key} {rec[key]:>8,} server CPU "
                          f"{cpu:7.1f} us/op  other CPU {rec.get('other_cpu_pct')} %", flush=True)
    print(f"\nmedians of {args.rounds} rounds: ratio to the reference (rate: higher is better; "
          "CPU per op: lower is better), and new/old")
    for name, (_gen, key) in workloads.items():
        ref_rate = median([r for r, _ in figures[(name, "reference")]])
        ref_cpu = median([c for _, c in figures[(name, "reference")]])
        ratios = {}
        for variant in ("new", "old"):
            rates = [r for r, _ in figures[(name, variant)]]
            cpus = [c for _, c in figures[(name, variant)]]
            ratios[variant] = (median(rates) / ref_rate, median(cpus) / ref_cpu)
        (new_rate, new_cpu), (old_rate, old_cpu) = ratios["new"], ratios["old"]
        print(f"{name:<18} {key}: new {new_rate:.3f}  old {old_rate:.3f}  new/old {new_rate / old_rate:.3f}; "
              f"server CPU/op: new {new_cpu:.3f}  old {old_cpu:.3f}  new/old {new_cpu / old_cpu:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
