"""Twisted services of the daemon: listeners and the WebSocket factory's lifetime."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import Service
from twisted.internet.defer import fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

if TYPE_CHECKING:
    from twisted.internet.tcp import Port

log = Logger(namespace="sscontrold")


def server_endpoint(reactor, host: str, port: int, backlog: int = 1024):
    """A TCP endpoint on ``host`` (an IPv4 or IPv6 address)."""
    return TCP4ServerEndpoint(reactor, port, backlog=backlog, interface=host)


class SharedPortEndpoint:
    """A TCP server endpoint whose socket has SO_REUSEPORT: several processes bind
    the same address and port, and the kernel spreads new connections among them."""

    def __init__(self, reactor, host: str, port: int, backlog: int = 1024):
        self._reactor, self._host, self._port, self._backlog = reactor, host, port, backlog

    def listen(self, factory):
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self._host, self._port))
            sock.listen(self._backlog)
            sock.setblocking(False)
            return succeed(self._reactor.adoptStreamPort(sock.fileno(), family, factory))
        except OSError as e:
            return fail(CannotListenError(self._host, self._port, e))
        finally:
            sock.close()  # the reactor's port has its own copy of the descriptor


class TLSFactory(TLSMemoryBIOFactory):
    """TLS around a factory that may refuse a connection (None: closed at accept)."""

    def buildProtocol(self, addr):
        wrapped = self.wrappedFactory.buildProtocol(addr)
        return None if wrapped is None else self.protocol(self, wrapped)


def with_tls(factory, tls):
    """Wrap ``factory`` in TLS when ``tls`` (a connection creator) is given."""
    return factory if tls is None else TLSFactory(tls, False, factory)


class Listener(Service):
    """Binds at start-up (failing the start, before READY, when it cannot) and
    unbinds on stop."""

    def __init__(self, name: str, endpoint, factory, scheme: str, host: str = "?", port: int = 0):
        self.setName(name)  # Service.name, which Twisted leaves unannotated (None)
        self.host, self.requested_port = host, port
        self._endpoint = endpoint
        self._factory = factory
        self._scheme = scheme
        self._port: Port | None = None  # what both endpoints here listen with

    def check(self) -> str | None:
        """Readiness: None when bound."""
        return None if self._port is not None else "not bound"

    def startService(self) -> None:
        Service.startService(self)
        outcome: list[Any] = []  # the port, or the Failure
        self._endpoint.listen(self._factory).addBoth(outcome.append)
        result = outcome[0] if outcome else None  # TCP listening is synchronous
        if result is None or not hasattr(result, "getHost"):
            reason = result.value if result is not None and hasattr(result, "value") else "did not bind"
            if isinstance(reason, CannotListenError):
                reason = getattr(reason.socketError, "strerror", None) or reason.socketError
            host = f"[{self.host}]" if ":" in self.host else self.host
            address = f"{host}:{self.requested_port}"
            key = "admin_host/admin_port" if self.name == "admin" else "host/port"
            raise SystemExit(f"sscontrol-signaling: cannot listen for {self.name} on {address} ({key}): {reason}")
        self._port = result

    def log_ready(self) -> None:
        # ListenersReady calls it once every listener is bound.
        host = cast("Port", self._port).getHost()
        log.info("{sscontrol_event}", sscontrol_event="listener.ready", sscontrol_fields={
            "listener": self.name, "url": f"{self._scheme}://{host.host}:{host.port}/"})

    def stopService(self):
        Service.stopService(self)
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()
        return None


class ListenersReady(Service):
    """Logs listener.ready for every listener once all of them are bound: when one cannot
    bind, the start fails before any says ready."""

    def __init__(self, listeners: list[Listener]):
        self._listeners = listeners

    def startService(self) -> None:
        Service.startService(self)
        for listener in self._listeners:
            listener.log_ready()


class FactoryLifetime(Service):
    """Starts and stops a factory that a Site does not start itself (a WebSocket
    factory inside a WebSocketResource)."""

    def __init__(self, factory):
        self._factory = factory

    def startService(self) -> None:
        Service.startService(self)
        self._factory.doStart()

    def stopService(self):
        Service.stopService(self)
        self._factory.doStop()
