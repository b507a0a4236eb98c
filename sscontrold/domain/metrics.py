"""What the domain counts, and the interface it counts through.

The domain says what happened (one method per kind of event, with its labels);
the adapter decides where it goes: ``sscontrold.metrics.PrometheusRecorder``
exports it, ``MemoryRecorder`` (the default) keeps it for tests and for objects
built without one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import MutableMapping
from typing import Protocol


class Recorder(Protocol):
    @property
    def messages(self) -> MutableMapping[str, int]:
        """Messages received, by type label: a plain mapping the domain increments
        itself, since a call per message would cost the relay path (docs/performance.md)."""

    def error(self, reason: str) -> None:
        """An error answered to a client, or an internal one, by reason."""

    def auth(self, result: str, reason: str) -> None:
        """An authentication attempt: ``accepted`` or ``refused``, and why."""

    def resume(self, result: str) -> None:
        """A resume attempt, by result."""

    def rooms(self, delta: int) -> None:
        """Rooms with a member on this node went up (1) or down (-1)."""

    def relay_failure(self, code: str) -> None:
        """A message to a peer on another node was not delivered (its sender is told)."""

    def sessions(self, held: int) -> None:
        """REST pairing sessions held now."""


class MemoryRecorder:
    """Keeps the counts in memory: the default, and what tests read."""

    def __init__(self) -> None:
        self.messages: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.auths: Counter[tuple[str, str]] = Counter()
        self.resumes: Counter[str] = Counter()
        self.room_count = 0
        self.relay_failures: Counter[str] = Counter()
        self.sessions_held = 0

    def error(self, reason: str) -> None:
        self.errors[reason] += 1

    def auth(self, result: str, reason: str) -> None:
        self.auths[result, reason] += 1

    def resume(self, result: str) -> None:
        self.resumes[result] += 1

    def rooms(self, delta: int) -> None:
        self.room_count += delta

    def relay_failure(self, code: str) -> None:
        self.relay_failures[code] += 1

    def sessions(self, held: int) -> None:
        self.sessions_held = held
