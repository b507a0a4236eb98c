#!/usr/bin/env python3
"""Where sscontrold's time goes under one bench workload: the daemon runs under
cProfile (twistd --profile) while bench/loadgen drives it as `make bench` does;
its time is then split by the code it was spent in (twisted.web, Autobahn, TLS,
the reactor, sscontrold...) and the costliest functions are listed.

    python bench/profile.py churn                 # plain connections: connect, auth, join, close
    python bench/profile.py churn --tls ec        # TLS with an ECDSA P-256 certificate (rsa: RSA 2048)
    python bench/profile.py churn --tls ec --resume
    python bench/profile.py relay --conns 2000 --window 1

cProfile slows Python code by a factor of about 2 and adds nothing to C code, so
read the shares as where the time goes, not as absolute costs (those are the
bench's). Nothing is pinned; the figures need no quiet machine.
"""

from __future__ import annotations

import argparse
import pstats
import secrets
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  the bench's harness: servers, generator, certificates

# (what, path fragments of the code's file); the first that matches names a function's group.
GROUPS = [
    ("TLS: pyOpenSSL, cryptography, Twisted's TLS", ("/OpenSSL/", "/cryptography/", "twisted/protocols/tls.py",
                                                     "twisted/internet/_sslverify.py", "/service_identity/")),
    ("twisted.web: HTTP parsing, Site, Request", ("twisted/web/",)),
    ("autobahn: handshake, frames", ("/autobahn/", "/txaio/")),
    ("sscontrold: domain", ("sscontrold/domain/",)),
    ("sscontrold: protocol, web, shortcuts, rest", ("sscontrold/",)),
    ("twisted reactor, tcp, Deferreds, logger", ("twisted/internet/", "twisted/python/", "twisted/logger/",
                                                 "twisted/protocols/")),
    ("zope.interface", ("/zope/",)),
    ("orjson, wsaccel", ("orjson", "wsaccel")),
]
SYSCALLS = ("socket", "epoll", "recv", "send", "accept", "close", "shutdown", "getsockopt", "setsockopt",
            "getpeername", "getsockname", "fcntl", "read", "write")


IDLE = "waiting for events (epoll_wait)"


def group_of(filename: str, name: str) -> str:
    if filename == "~":  # a C function: name it by what it does
        if name == "<method 'poll' of 'select.epoll' objects>":
            return IDLE
        if any(word in name.lower() for word in ("openssl", "_ssl", "_cffi")):  # SSL_do_handshake...
            return GROUPS[0][0]
        if any(f"'{word}" in name or f" {word}" in name for word in SYSCALLS):
            return "system calls (socket, epoll)"
        return "other C builtins"
    for what, fragments in GROUPS:
        if any(f in filename for f in fragments):
            return what
    return "other Python (stdlib...)"


def report(stats_file: Path, operations: int, unit: str, top: int) -> str:
    """The busy time (all but the wait in epoll, which holds the idle time) by group,
    and the costliest functions, each as a share of it and per operation."""
    stats = pstats.Stats(str(stats_file))
    by_group: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        group = group_of(filename, name)
        by_group[group] += tottime
        if group != IDLE:
            rows.append((tottime, group, f"{Path(filename).name}:{line}({name})" if filename != "~" else name))
    idle = by_group.pop(IDLE, 0.0)
    busy = sum(by_group.values())
    per = f"us/{unit[:-1]}"
    out = [f"busy {busy:.2f} s (and {idle:.2f} s waiting in epoll) for {operations:,} {unit}: "
           f"{busy / max(1, operations) * 1e6:,.0f} us per {unit[:-1]} under the profiler", "",
           f"{'share':>6}  {per:>14}  where"]
    for group, t in sorted(by_group.items(), key=lambda kv: -kv[1]):
        out.append(f"{t / busy * 100:5.1f}%  {t / max(1, operations) * 1e6:14.1f}  {group}")
    out += ["", f"the {top} costliest functions (own time, share of the busy time):"]
    for tottime, group, where in sorted(rows, reverse=True)[:top]:
        out.append(f"{tottime / busy * 100:5.1f}%  {where[:80]:<80}  [{group}]")
    return "\n".join(out)


def handshakes(stats_file: Path) -> int:
    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    return sum(nc for (filename, _line, name), (_cc, nc, *_rest) in stats.items()
               if name == "succeedHandshake" and "sscontrold/" in filename)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=("churn", "relay"))
    p.add_argument("--tls", choices=("ec", "rsa"), help="TLS with this kind of certificate")
    p.add_argument("--resume", action="store_true", help="churn: resume the TLS sessions (tickets)")
    p.add_argument("--conns", type=int, default=2000, help="relay: connections")
    p.add_argument("--window", type=int, default=1, help="relay: messages in flight per connection")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()
    harness.raise_fd_limit(65536)
    api_key = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="sscontrol-profile-") as tmp:
        work = Path(tmp)
        stats_file = work / "daemon.pstats"
        plain_twistd = harness.twistd
        harness.twistd = lambda: plain_twistd() + [f"--profile={stats_file}", "--profiler=cprofile", "--savestats"]
        cert = harness.make_cert(work, args.tls) if args.tls else None
        server = harness.Server("sscontrold", work, api_key, cert, None, "warn")
        if args.workload == "churn":
            gen = ["--workload", "churn", "--concurrency", "64", "--warmup", "1", "--seconds", str(args.seconds),
                   "--src-addrs", harness.SRC_ADDRS] + (["--resume", "1"] if args.resume else [])
        else:
            gen = ["--workload", "relay", "--conns", str(args.conns), "--window", str(args.window),
                   "--warmup", "2", "--seconds", str(args.seconds)]
        try:
            (rec,) = harness.run_loadgen(server, gen, api_key, None, 120 + args.seconds)
        finally:
            server.stop()  # the profile is written as the reactor stops
        if not stats_file.exists():
            print(f"no profile written: see {server.logfile}", file=sys.stderr)
            return 1
        # The profile covers the warm-up and the set-up too: count connections by the
        # daemon's own handshakes; relayed messages by the generator's (warm-up left out).
        if args.workload == "churn":
            ops, unit = handshakes(stats_file), "connections"
        else:
            ops, unit = rec["msgs"], "messages"
        print(f"workload: {args.workload}{' TLS ' + args.tls if args.tls else ''}"
              f"{' resumed' if args.resume else ''}; generator: {rec}")
        print(report(stats_file, ops, unit, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
