"""Twisted's HTTP channel (``twisted.web.http.HTTPChannel``): its pipelining state.

All guards (sscontrold/web.py's GuardedChannel holds its bounds with them):

- ``handling_request``: whether a request is being answered (the deadline of the
  next one starts with its first byte, not while this one is answered). Public path
  (the check failed): the channel's own count of open requests.
- ``hold_pipelined`` / ``release_pipelined``: when a client does not read the
  answers to the requests it pipelines, keep what it sent next unparsed and stop
  reading its socket until it reads. Public path: Twisted's own (it parses what it
  buffered and answers into a full socket).
- ``current_path``: the path of a request still being received (for the endpoint
  label of a refusal). Public path: none known ("other").
- ``stop_reading_as_producer`` / ``abort_later``: a refusal's lingering close, the
  way Twisted's own timeouts do it. Public path: the transport's producer calls and
  a call the channel's ``connectionLost`` does not cancel (harmless: it aborts a
  closed transport).
"""

from __future__ import annotations

from twisted.web import http

from ._check import lacking_attributes, lacking_in_source

SHORTCUTS = False
GUARDS = False


def check() -> list[str]:
    return (lacking_attributes(http.HTTPChannel, ("_waitingForTransport", "_savedTimeOut", "_abortingCall",
                                                  "forceAbortClient", "setLineMode"),
                               "twisted HTTPChannel")
            + lacking_in_source(http.HTTPChannel, ("_handlingRequest", "_dataBuffer", "_networkProducer", "_path"),
                                "twisted HTTPChannel"))


def use(shortcuts: bool, guards: bool) -> None:
    global SHORTCUTS, GUARDS
    SHORTCUTS, GUARDS = shortcuts, guards


def handling_request(channel) -> bool:
    if GUARDS:
        return channel._handlingRequest
    return bool(channel.requests)


def hold_pipelined(channel, request) -> bool:
    """On ``request`` done: if the client is not reading, hold what it sent next and
    stop reading it (True); otherwise leave it to Twisted (False)."""
    if not (GUARDS and channel._waitingForTransport and channel.persistent and channel.requests
            and request is channel.requests[0]):
        return False
    del channel.requests[0]
    channel._networkProducer.pauseProducing()
    if channel._savedTimeOut:  # idle now: the idle timeout ends a client that never reads
        channel.setTimeout(channel._savedTimeOut)
    return True


def release_pipelined(channel) -> bool:
    """Once the client reads again: parse what it sent meanwhile. False while it
    still does not read."""
    if channel._waitingForTransport:
        return False
    channel._handlingRequest = False
    channel._networkProducer.resumeProducing()
    data, channel._dataBuffer = b"".join(channel._dataBuffer), []
    channel.setLineMode(data)
    return True


def current_path(channel) -> bytes:
    return getattr(channel, "_path", b"") if GUARDS else b""


def stop_reading_as_producer(channel) -> None:
    if GUARDS:
        channel._networkProducer.unregisterProducer()
    else:
        channel.transport.unregisterProducer()


def abort_later(channel, seconds: float) -> None:
    call = channel.callLater(seconds, channel.forceAbortClient)
    if GUARDS:
        channel._abortingCall = call  # Twisted cancels it when the connection is lost
