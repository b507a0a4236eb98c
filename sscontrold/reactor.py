"""The reactor sscontrold runs on: Twisted's epoll reactor, minus the legacy
per-event log context when the shortcuts are on (sscontrold/shortcuts/twisted_reactor.py
says why and how); with them off, Twisted's own poll loop.

Installed by twistd's ``--reactor sscontrol-epoll`` (twisted/plugins/sscontrol_reactor.py).
"""

from __future__ import annotations

from twisted.internet import epollreactor
from twisted.internet.main import installReactor

from .shortcuts import twisted_reactor


class EPollReactor(epollreactor.EPollReactor):
    def doPoll(self, timeout):
        if twisted_reactor.SHORTCUTS:
            twisted_reactor.do_poll(self, timeout)
        else:
            super().doPoll(timeout)

    doIteration = doPoll


def install() -> EPollReactor:
    reactor = EPollReactor()
    installReactor(reactor)
    return reactor
