"""Twisted's epoll reactor: a poll loop without the legacy per-event log context.

For every ready socket, Twisted's ``doPoll`` calls ``log.callWithLogger``, which
builds a ``{"system": logPrefix()}`` context for the old ``twisted.python.log``
API: about a tenth of the daemon's time when each read carries one message.
Nothing here logs through that API, so ``do_poll`` (shortcut) calls the handler
directly and keeps the one thing the wrapper also did: an exception escaping a
handler is logged, never raised into the loop. Public path: Twisted's ``doPoll``.
"""

from __future__ import annotations

import errno

from twisted.internet import epollreactor
from twisted.logger import Logger

from ._check import lacking_attributes, lacking_in_source

log = Logger(namespace="sscontrold.reactor")

SHORTCUTS = False
GUARDS = False


def check() -> list[str]:
    return (lacking_attributes(epollreactor.EPollReactor, ("_doReadOrWrite",), "twisted EPollReactor")
            + lacking_in_source(epollreactor.EPollReactor, ("_poller", "_selectables"), "twisted EPollReactor"))


def use(shortcuts: bool, guards: bool) -> None:
    global SHORTCUTS, GUARDS
    SHORTCUTS, GUARDS = shortcuts, guards


def do_poll(reactor, timeout) -> None:
    """One poll of ``reactor`` (an EPollReactor) and the handling of what is ready."""
    if timeout is None:
        timeout = -1  # wait indefinitely
    try:
        events = reactor._poller.poll(timeout, len(reactor._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = reactor._selectables
    handle = reactor._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            handle(selectable, fd, event)
        except Exception:
            log.failure("unhandled error in the event loop, handling {selectable!r}", selectable=selectable)
