"""Twisted's TCP transport (``twisted.internet.tcp``/``abstract``): its write buffer.

- ``write_now`` (shortcut): hand bytes to the socket at once when nothing is queued
  before them. Twisted's ``write`` queues and waits for the socket to be reported
  writable: per message, a reactor turn and two epoll_ctl calls. What the socket does
  not take now is queued the usual way, behind what was sent, so order holds.
  Public path: ``transport.write``.
- ``queued`` (guard): how many bytes wait in a transport's write buffer, which the
  outgoing budget (max_queued_bytes) measures. Public path (the check failed): 0,
  and the budget is not enforced (the start-up warning says so).
- ``widen`` (shortcut): a bigger per-turn write (``SEND_LIMIT``) and read
  (``bufferSize``) for a socket that carries many peers' traffic. Public path: the
  defaults.
"""

from __future__ import annotations

from twisted.internet import abstract, tcp

from ._check import lacking_attributes, lacking_in_source

SHORTCUTS = False
GUARDS = False


def check() -> list[str]:
    lacking = (lacking_attributes(tcp.Server, ("dataBuffer", "offset", "SEND_LIMIT", "bufferSize"),
                                  "twisted tcp.Server")
               + lacking_in_source(abstract.FileDescriptor, ("_tempDataLen",), "twisted abstract.FileDescriptor"))
    # FileDescriptor declares it abstract: the socket's own must be there
    if getattr(tcp.Server, "writeSomeData", None) in (None, getattr(abstract.FileDescriptor, "writeSomeData", None)):
        lacking.insert(0, "twisted tcp.Server.writeSomeData")
    return lacking


def use(shortcuts: bool, guards: bool) -> None:
    global SHORTCUTS, GUARDS
    SHORTCUTS, GUARDS = shortcuts, guards


def write_now(transport, data: bytes) -> bool:
    """Write ``data`` to ``transport``, to the socket at once where it can. True when
    the socket took all of it (nothing queued: the caller need not measure)."""
    if (SHORTCUTS and type(transport) is tcp.Server and transport.connected and not transport.disconnecting
            and not transport.dataBuffer and not transport._tempDataLen):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):  # otherwise the connection is lost: the usual path finds out
            if sent == len(data):
                return True
            data = data[sent:]
    transport.write(data)
    return False


def queued(sock) -> int:
    """Bytes waiting in ``sock``'s (a FileDescriptor's) write buffer."""
    if not GUARDS or not (sock._tempDataLen or sock.dataBuffer):
        return 0
    return len(sock.dataBuffer) - sock.offset + sock._tempDataLen


def widen(transport, send_limit: int | None = None, read_size: int | None = None) -> None:
    """Let ``transport`` send ``send_limit`` and read ``read_size`` bytes per reactor turn."""
    if SHORTCUTS:
        if send_limit is not None:
            transport.SEND_LIMIT = send_limit
        if read_size is not None:
            transport.bufferSize = read_size
