"""Per-connection message rate and per-address connection counting."""

from __future__ import annotations

from typing import Callable


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
