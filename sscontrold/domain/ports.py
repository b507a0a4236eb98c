"""What the domain is given by its adapter (sscontrold.node wires the Twisted ones):
a clock and its timers, where events go, how a coroutine is run, and waiters.

Interfaces only: the domain imports no event loop.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Coroutine, Protocol


class Timer(Protocol):
    """A pending call (Twisted's IDelayedCall)."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    def seconds(self) -> float: ...

    # Answers a Timer; Any, since the adapter's type (IDelayedCall) is a zope interface.
    def callLater(self, delay: float, f: Callable[..., Any], *args: Any) -> Any: ...


class Events(Protocol):
    """Where audit and diagnostic events go (the adapter logs them)."""

    def emit(self, level: str, event: str, **fields: Any) -> None: ...


class Waiter(Protocol):
    """Awaited by a domain coroutine until another event says how it went, or the
    timeout it was made with passes (then ``wait()`` raises TimeoutError)."""

    def wait(self) -> Awaitable[Any]: ...

    def succeed(self, value: Any) -> None: ...

    def fail(self, exception: Exception) -> None: ...


# waiter(timeout): a new Waiter
WaiterFactory = Callable[[float], Waiter]

# Runs a coroutine to its end on the adapter's event loop.
Spawn = Callable[[Coroutine[Any, Any, Any]], None]
