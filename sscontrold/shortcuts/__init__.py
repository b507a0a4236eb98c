"""The daemon's only ways into the internals of the libraries it runs on.

Every use of a private attribute of a Twisted or Autobahn object lives in
this package, one module per library (sdnotify needs none: the daemon uses its public
API only), each with a small interface, a public-API path,
and ``check()``: what the installed version lacks of what the module relies on.
(A test greps ``sscontrold/`` for the private names and allows them here alone.)

Two kinds of entry:

- shortcuts: speed or memory only (the hot read and write paths, the reactor's poll
  loop, wider transports for the Redis sockets, the protocol class with its options baked in). The
  ``shortcuts`` setting turns them off; the public path then does the same work.
- guards: bounds the daemon holds that Twisted and Autobahn offer no public hook for
  (the outgoing budget's measure of a socket's queue, close codes other than
  1000/3000-4999, the HTTP channel's pipelining stall). Turning the shortcuts off
  keeps them, since it would lift a bound; only a failed check replaces them with
  the public behaviour.

``configure`` runs the checks at start (``makeService``); whatever is missing is
named in one warning and its module falls back to the public path.
"""

from __future__ import annotations

from . import autobahn, twisted_reactor, twisted_tcp, twisted_web, txredisapi

# The versions (requirements.txt) every private name used here was verified on.
# An upgrade of any of them: read its changes for these names, run the suite with the
# shortcuts on and off (make test does both), then update this table.
VERIFIED = {"Twisted": "26.10.0", "autobahn": "26.10.2", "txredisapi": "1.6.0"}

MODULES = (twisted_tcp, twisted_reactor, twisted_web, autobahn, txredisapi)

WARNING = ("the installed Twisted/Autobahn/txredisapi lack what the daemon's shortcuts use: their public path "
           "is used instead")


def check() -> list[str]:
    """What the installed libraries lack of what this package relies on ("" if all there)."""
    return [missing for module in MODULES for missing in module.check()]


def configure(enabled: bool) -> list[str]:
    """Turn the shortcuts on (``enabled``) or off; guards stay on. A module whose
    check fails takes its public path either way. Returns what is missing."""
    missing: list[str] = []
    for module in MODULES:
        lacking = module.check()
        module.use(shortcuts=enabled and not lacking, guards=not lacking)
        missing += lacking
    return missing


def state() -> dict[str, bool]:
    """Which modules run their shortcuts now (for /health-like diagnostics and tests)."""
    return {module.__name__.rsplit(".", 1)[1]: module.SHORTCUTS for module in MODULES}
