"""HMAC device authentication with a timestamp window and replay protection.

token = hex(HMAC-SHA256(key=API_KEY, msg=f"{device_id}:{timestamp}:{nonce}"))
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, Iterable, Protocol

from .compare import any_secret


class AuthRefused(Exception):
    """The credentials were refused; ``reason`` is a stable, low-cardinality label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class NonceStore(Protocol):
    def add(self, key: bytes, expires_at: float) -> bool | Awaitable[bool]:
        """Remember ``key`` until ``expires_at``; False if it is already remembered.

        A shared store answers with an awaitable of that bool."""


class MemoryNonceStore:
    """Nonces seen within the auth window, bounded in size.

    Entries are forgotten once their token could no longer pass the timestamp check,
    so the store holds at most one window's worth of auths. When it is full a new auth
    is refused (failing closed) rather than forgetting a nonce that could be replayed.
    """

    def __init__(self, clock: Callable[[], float], max_entries: int):
        self._clock = clock
        self._max = max_entries
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def _expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            self._expiry.pop(key, None)

    def add(self, key: bytes, expires_at: float) -> bool:
        self._expire(self._clock())
        if key in self._expiry:
            return False
        if len(self._expiry) >= self._max:
            raise AuthRefused("nonce_store_full", "server busy, try again later")
        self._expiry[key] = expires_at
        heapq.heappush(self._heap, (expires_at, key))
        return True


def compute_token(api_key: str, device_id: str, timestamp: int, nonce: str) -> str:
    msg = f"{device_id}:{timestamp}:{nonce}".encode()
    return hmac.new(api_key.encode(), msg, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuthPolicy:
    api_keys: tuple[str, ...]
    window: float  # built from the settings by sscontrold.policies
    clock_skew: float
    device_allowlist: frozenset[str]

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys)


class Authenticator:
    """Checks auth messages against the current policy (swappable on reload)."""

    def __init__(self, policy: AuthPolicy, nonces: NonceStore, clock: Callable[[], float]):
        self.policy = policy
        self._nonces = nonces
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    def verify(self, device_id: str, timestamp: int, nonce: str, token: str) -> Coroutine[Any, Any, None] | None:
        """Raise AuthRefused if the credentials are bad. Good ones return None, or,
        when the nonce store answers later (Redis), an awaitable that raises
        AuthRefused on a replay."""
        policy = self.policy
        now = self._clock()
        if policy.device_allowlist and device_id not in policy.device_allowlist:
            raise AuthRefused("device_not_allowed", "authentication failed: device not allowed")
        if timestamp > now + policy.clock_skew:
            raise AuthRefused("timestamp_future", "authentication failed: timestamp is in the future")
        if timestamp < now - policy.window:
            raise AuthRefused("timestamp_expired", "authentication failed: timestamp is too old")
        if not _matches_any(policy.api_keys, device_id, timestamp, nonce, token):
            raise AuthRefused("bad_token", "authentication failed: invalid token")
        # Only a valid token consumes its nonce, so garbage cannot fill the store.
        key = hashlib.sha256(f"{device_id}:{timestamp}:{nonce}".encode()).digest()
        fresh = self._nonces.add(key, timestamp + policy.window + policy.clock_skew)
        if isinstance(fresh, bool):
            if not fresh:
                raise AuthRefused("replay", "authentication failed: nonce already used")
            return None
        return _refuse_replay(fresh)


async def _refuse_replay(fresh: Awaitable[bool]) -> None:
    if not await fresh:
        raise AuthRefused("replay", "authentication failed: nonce already used")


def _matches_any(keys: Iterable[str], device_id: str, timestamp: int, nonce: str, token: str) -> bool:
    return any_secret([compute_token(key, device_id, timestamp, nonce) for key in keys], token)
