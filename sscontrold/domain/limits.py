"""Per-connection message rate and per-address connection counting."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

from .ports import Events


class TokenBucket:
    """Allows ``rate`` messages per second with bursts of ``burst``.

    ``take()`` answers "ok", "refuse" (answer with an error) or "close" once
    ``strikes`` messages in a row have been refused.
    """

    __slots__ = ("_rate", "_burst", "_strikes_max", "_tokens", "_last", "_strikes", "_clock")

    def __init__(self, rate: float, burst: int, strikes: int, clock: Callable[[], float]):
        self._rate = rate
        self._burst = float(burst)
        self._strikes_max = strikes
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        self._strikes = 0

    def take(self) -> str:
        now = self._clock()
        tokens = self._tokens + (now - self._last) * self._rate
        self._last = now
        if tokens > self._burst:
            tokens = self._burst
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            self._strikes = 0
            return "ok"
        self._tokens = tokens
        self._strikes += 1
        return "close" if self._strikes >= self._strikes_max else "refuse"


class ConnectionCounter:
    """Counts open connections, in total and per client address."""

    def __init__(self, max_total: int, max_per_address: int):
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self._per_address: dict[str, int] = {}

    def try_open(self, address: str, per_address: bool = True) -> str | None:
        """Count a new connection; return None, or why it is refused ("total", "per_address").
        ``per_address`` False: counted, but not held to the per-address limit (a trusted proxy)."""
        if self.total >= self.max_total:
            return "total"
        count = self._per_address.get(address, 0)
        if per_address and count >= self.max_per_address:
            return "per_address"
        self._per_address[address] = count + 1
        self.total += 1
        return None

    def close(self, address: str) -> None:
        count = self._per_address.get(address, 0) - 1
        if count > 0:
            self._per_address[address] = count
        else:
            self._per_address.pop(address, None)
        self.total -= 1


class FailureThrottle:
    """Failed authentications per client address, a leaky bucket each: ``limit``
    failures within ``window`` seconds, and the address is refused (without its
    credentials even being checked) until the bucket has leaked below the limit.
    Attempts refused meanwhile count too (up to twice the limit): guessing on only
    pushes the wait further out."""

    MAX_ADDRESSES = 100_000  # least recently failed forgotten first

    def __init__(self, clock: Callable[[], float], limit: int, window: float):
        self._clock = clock
        self.limit = limit
        self.window = window
        self._entries: OrderedDict[str, list[float]] = OrderedDict()  # address -> [level, when]

    def __len__(self) -> int:
        return len(self._entries)

    def configure(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window

    def _level(self, address: str, now: float) -> float:
        entry = self._entries.get(address)
        if entry is None:
            return 0.0
        level = max(0.0, entry[0] - (now - entry[1]) * self.limit / self.window)
        if level == 0.0:
            del self._entries[address]
        return level

    def retry_after(self, address: str) -> float:
        """0 when ``address`` may try; else the seconds until it may."""
        excess = self._level(address, self._clock()) - (self.limit - 1)
        return excess * self.window / self.limit if excess > 0 else 0.0

    def failed(self, address: str) -> None:
        now = self._clock()
        level = min(self._level(address, now) + 1.0, 2.0 * self.limit)
        self._entries.pop(address, None)
        self._entries[address] = [level, now]
        while len(self._entries) > self.MAX_ADDRESSES:
            self._entries.popitem(last=False)


class LogBudget:
    """At most ``per_minute`` lines of one kind per minute; the first line let
    through after some were left out says how many (``suppressed``)."""

    def __init__(self, clock: Callable[[], float], per_minute: int):
        self._clock = clock
        self.per_minute = per_minute
        self._start = clock()
        self._lines = 0
        self._suppressed = 0

    def take(self) -> int | None:
        """None: leave this line out; else write it, with the count left out before it."""
        now = self._clock()
        if now - self._start >= 60.0:
            self._start, self._lines = now, 0
        if self._lines >= self.per_minute:
            self._suppressed += 1
            return None
        self._lines += 1
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


class FailureGuard:
    """What a node keeps of failed authentications: the per-address throttle and the
    budget of the log lines they write."""

    def __init__(self, clock: Callable[[], float], limit: int, window: float, log_per_minute: int):
        self.throttle = FailureThrottle(clock, limit, window)
        self.log = LogBudget(clock, log_per_minute)

    def configure(self, limit: int, window: float, log_per_minute: int) -> None:
        self.throttle.configure(limit, window)
        self.log.per_minute = log_per_minute

    def emit(self, events: Events, level: str, event: str, **fields: Any) -> None:
        """Emit a failure line within the budget."""
        suppressed = self.log.take()
        if suppressed is not None:
            events.emit(level, event, **fields, suppressed=suppressed or None)
