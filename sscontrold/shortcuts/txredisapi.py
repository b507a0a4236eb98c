"""Guards on txredisapi's connection factories (not speed: the link's recovery).

- ``KeepTrying``: txredisapi stops reconnecting for good when AUTH or SELECT fails while a
  connection is being set up, a timeout included, by calling its factory's
  ``stopTrying``: a Redis paused longer than the reply timeout (SIGSTOP, a long fork, a
  stalled VM) would leave the node without Redis until it restarts. Only a deliberate
  disconnect (``disconnectCalled``) stops a factory that mixes this in.
- ``abort_connections``: drop the factory's connections (its ``pool``), so that a
  connection that stopped answering is not waited on for ever.

Public path: none for either; ``check()`` names what the installed version lacks, and
without them the link recovers only as txredisapi itself does.
"""

from __future__ import annotations

from ._check import lacking_attributes

SHORTCUTS = False  # none here: guards only
GUARDS = True


def use(shortcuts: bool, guards: bool) -> None:
    global GUARDS
    GUARDS = guards


def check() -> list[str]:
    # Imported here: txredisapi installs the default reactor when imported, and this
    # package is read before twistd installs the one it was asked for.
    import txredisapi

    factory = txredisapi.RedisFactory("127.0.0.1:6379", None, 1, isLazy=True)
    return (lacking_attributes(txredisapi.RedisFactory, ("stopTrying",), "txredisapi RedisFactory")
            + [f"txredisapi RedisFactory().{name}" for name in ("pool", "disconnectCalled")
               if not hasattr(factory, name)])


class KeepTrying:
    """Mix into a ``txredisapi.RedisFactory`` subclass: keep reconnecting (with its
    back-off) until a deliberate disconnect. ``on_setup_failed()`` is told each time."""

    def on_setup_failed(self) -> None:
        pass

    def stopTrying(self):
        if not GUARDS or getattr(self, "disconnectCalled", False):
            return super().stopTrying()
        self.on_setup_failed()
        return None


def abort_connections(factory) -> None:
    if not GUARDS:
        return
    for protocol in list(getattr(factory, "pool", ())):
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.abortConnection()
