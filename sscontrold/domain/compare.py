"""The one comparison of secrets (API keys, HMAC tokens, resume tokens): constant
time in their content and their length."""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable


def _digest(value: str | bytes) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    return hashlib.sha256(value).digest()


def same_secret(a: str | bytes | None, b: str | bytes | None) -> bool:
    """Whether two secrets are equal. Both are hashed first, so the time taken says
    nothing of where they differ nor of how long either is. None equals only None."""
    if a is None or b is None:
        return a is None and b is None
    return hmac.compare_digest(_digest(a), _digest(b))


def any_secret(secrets: Iterable[str | bytes], given: str | bytes | None) -> bool:
    """Whether ``given`` equals one of ``secrets`` (several during a rotation). Every one
    is compared, no early exit: the time taken does not say which matched."""
    matched = False
    for secret in secrets:
        matched |= same_secret(secret, given)
    return matched
