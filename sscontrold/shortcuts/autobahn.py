"""Autobahn's WebSocket protocol (``autobahn.websocket.protocol``).

- ``at_frame_border`` (shortcut): whether a read starts at a frame border of an open
  connection with nothing buffered, so that the daemon's hot path may read whole
  single-frame text messages itself (sscontrold/protocol.py). Public path: never;
  Autobahn reads every frame and calls ``onMessage``.
- ``feed`` (shortcut): hand bytes to Autobahn's frame parser without the debug line
  its ``dataReceived`` formats first. Public path: ``dataReceived``.
- ``send_close`` (guard): a close frame with any code (the public ``sendClose`` takes
  only 1000 and 3000-4999; the protocol closes with 1008, 1009, 1011, 1012).
  Public path (the check failed): ``sendClose`` with 1000 for a code it refuses.
- ``protocol_class`` (shortcut): a protocol class with the factory's options as
  class attributes, so that Autobahn does not copy (and pformat for a debug line)
  its ~30 options onto each new connection. Public path: the class as it is.
- ``forget_handshake`` (shortcut): drop the handshake's key, kept for the life of the
  connection. Public path: keep it.
- debug names (shortcut): Autobahn formats ``hltype(method)`` for a debug line about
  seven times per connection whether or not the line is written (a tenth of a
  plain connection's cost in the daemon); the modules that do get ``_TypeName``,
  which formats it only if the line is written. Public path: ``autobahn.util.hltype``;
  a version without it in those modules is left as it is (nothing to check).
"""

from __future__ import annotations

from types import FunctionType
from typing import TypeVar, cast

from autobahn import util as ab_util
from autobahn.twisted import websocket as ab_twisted
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket import protocol as ab_protocol

from ._check import lacking_attributes, lacking_in_source

SHORTCUTS = False
GUARDS = False

OPEN = WebSocketServerProtocol.STATE_OPEN
_PUBLIC_CLOSE_CODES = frozenset({1000, *range(3000, 5000)})


_HLTYPE_USERS = (ab_protocol, ab_twisted)  # the modules that format hltype() for debug lines per connection


class _TypeName:
    """``autobahn.util.hltype(obj)`` for a debug line, worked out only when the line
    is written (the log formats it with ``str``)."""

    __slots__ = ("_obj",)

    def __init__(self, obj: object):
        self._obj = obj

    def __str__(self) -> str:
        return str(ab_util.hltype(self._obj))


def check() -> list[str]:
    return (lacking_attributes(WebSocketServerProtocol, ("_dataReceived", "sendCloseFrame", "CONFIG_ATTRS"),
                               "autobahn WebSocketServerProtocol")
            + lacking_in_source(ab_protocol, ("data", "current_frame", "inside_message", "_wskey"),
                                "autobahn WebSocketProtocol"))


def use(shortcuts: bool, guards: bool) -> None:
    global SHORTCUTS, GUARDS
    SHORTCUTS, GUARDS = shortcuts, guards
    _lazy_debug_names(shortcuts)


def _lazy_debug_names(on: bool) -> None:
    """Give the modules that format ``hltype`` per connection the lazy one (or theirs
    back). Only where a module still holds Autobahn's own (or ours): a version that
    formats its debug lines some other way is left as it is, and the rest of this
    module's shortcuts and guards do not depend on it."""
    original = getattr(ab_util, "hltype", None)
    if original is None:
        return
    for module in _HLTYPE_USERS:
        if getattr(module, "hltype", None) in (original, _TypeName):
            module.hltype = _TypeName if on else original  # type: ignore[attr-defined]


def at_frame_border(protocol) -> bool:
    return (SHORTCUTS and protocol.state == OPEN and not protocol.data and protocol.current_frame is None
            and not protocol.inside_message)


def feed(protocol, data: bytes) -> None:
    if SHORTCUTS:
        protocol._dataReceived(data)  # what Autobahn's dataReceived does after its debug line
    else:
        WebSocketServerProtocol.dataReceived(protocol, data)


def send_close(protocol, code: int, reason: str) -> None:
    reason_utf8 = reason.encode()[:123]
    if GUARDS:
        protocol.sendCloseFrame(code=code, reasonUtf8=reason_utf8, isReply=False)
    else:
        protocol.sendClose(code=code if code in _PUBLIC_CLOSE_CODES else 1000,
                           reason=reason_utf8.decode("utf-8", "ignore"))


_Protocol = TypeVar("_Protocol")


def protocol_class(factory, base: type[_Protocol]) -> type[_Protocol]:
    """``base``, or (shortcut) a subclass of it holding ``factory``'s options."""
    if not SHORTCUTS:
        return base
    # A function among the options must stay a plain function on the class, not
    # become a method (Autobahn calls perMessageCompressionAccept with the offers alone).
    options = {name: getattr(factory, name) for name in WebSocketServerProtocol.CONFIG_ATTRS}
    options = {name: staticmethod(value) if isinstance(value, FunctionType) else value
               for name, value in options.items()}
    # type() builds a subclass of base, which the type checker only knows as a type.
    return cast("type[_Protocol]", type(base.__name__, (base,), {**options, "CONFIG_ATTRS": ()}))


def forget_handshake(protocol) -> None:
    if SHORTCUTS:
        protocol._wskey = None
