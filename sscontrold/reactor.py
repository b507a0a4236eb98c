"""The reactor sscontrold runs on: Twisted's epoll reactor, minus the legacy
per-event log context.

For every ready socket, Twisted's ``doPoll`` calls ``log.callWithLogger``, which
builds a ``{"system": logPrefix()}`` context for the old ``twisted.python.log``
API: about a tenth of the daemon's time when each read carries one message.
Nothing here logs through that API (``twisted.logger`` events carry their own
namespace), so this reactor calls the handler directly and keeps the one thing
the wrapper also did: an exception escaping a handler is logged, never raised
into the loop.

Installed by twistd's ``--reactor sscontrol-epoll`` (twisted/plugins/sscontrol_reactor.py).
"""

from __future__ import annotations

import errno

from twisted.internet import epollreactor
from twisted.internet.main import installReactor
from twisted.logger import Logger

log = Logger(namespace="sscontrold.reactor")


class EPollReactor(epollreactor.EPollReactor):
    def doPoll(self, timeout):
        if timeout is None:
            timeout = -1  # wait indefinitely
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                handle(selectable, fd, event)
            except Exception:
                log.failure("unhandled error in the event loop, handling {selectable!r}", selectable=selectable)

    doIteration = doPoll


def install() -> EPollReactor:
    reactor = EPollReactor()
    installReactor(reactor)
    return reactor
