"""systemd integration: sd_notify READY/STATUS/WATCHDOG/RELOADING/STOPPING.

Without NOTIFY_SOCKET (not under systemd) every notification is a no-op.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

import sdnotify
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="sscontrold.systemd")


class Notifier:
    """sd_notify, aimed at ``address`` (default: $NOTIFY_SOCKET): over sdnotify for
    $NOTIFY_SOCKET, over a datagram socket of its own for another address."""

    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.enabled = bool(address)
        self._own: socket.socket | None = None
        self._sdnotify: Any = None  # an sdnotify.SystemdNotifier (untyped) when notifying over $NOTIFY_SOCKET
        if address and address != os.environ.get("NOTIFY_SOCKET"):
            self._own = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._own.connect("\0" + address[1:] if address.startswith("@") else address)
        elif address:
            self._sdnotify = sdnotify.SystemdNotifier()

    def notify(self, *lines: str) -> None:
        if not self.enabled:
            return
        message = "\n".join(lines)
        if self._own is None:
            self._sdnotify.notify(message)
            return
        try:
            self._own.sendall(message.encode())
        except OSError as e:  # as sdnotify does, the daemon runs on; unlike it, says so
            log.warn("sd_notify to the notification socket failed: {error}", error=str(e))

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                    "STATUS=reloading")

    def stopping(self, status: str = "draining") -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")


def watchdog_interval(environ=os.environ, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if not asked."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid and int(watchdog_pid) != (os.getpid() if pid is None else pid):
        return None  # the watchdog is meant for another process
    try:
        return int(usec) / 2 / 1_000_000
    except ValueError:
        return None


class SystemdService(Service):
    """Sends READY=1 once every readiness check passes, then keeps STATUS= current
    and pings the watchdog from the reactor (so a blocked reactor stops the pings)."""

    def __init__(self, notifier: Notifier, is_ready: Callable[[], bool], status: Callable[[], str],
                 clock, environ=os.environ):
        self.notifier = notifier
        self._is_ready = is_ready
        self._status = status
        self._clock = clock
        self._environ = environ
        self._loops: list[LoopingCall] = []
        self.announced_ready = False

    def _loop(self, interval: float, f: Callable[[], None]) -> LoopingCall:
        loop = LoopingCall(f)
        loop.clock = self._clock
        self._loops.append(loop)
        return loop

    def startService(self) -> None:
        Service.startService(self)
        interval = watchdog_interval(self._environ)
        if interval:
            self._loop(interval, self.notifier.watchdog).start(interval, now=True)
        self._waiting = self._loop(0.1, self._await_ready)
        self._waiting.start(0.1, now=True)

    def _await_ready(self) -> None:
        if not self.announced_ready and self._is_ready():
            self.announced_ready = True
            self.notifier.ready(self._status())
            log.info("{sscontrol_event}", sscontrol_event="daemon.ready", sscontrol_fields={})
            self._waiting.stop()
            self._loop(5.0, lambda: self.notifier.status(self._status())).start(5.0, now=False)

    def stopService(self) -> None:
        Service.stopService(self)
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
