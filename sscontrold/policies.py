"""The domain's limits and policies built from the settings: the one place where a
setting becomes a domain value. The domain's dataclasses have no defaults of their
own, so config.FIELDS stays the only source of every default and limit.

Pure: no Twisted import (the domain tests build their limits here too)."""

from __future__ import annotations

from .domain.auth import AuthPolicy
from .domain.client import MessageLimits
from .domain.rooms import HoldLimits
from .domain.sessions import SessionLimits


def auth_policy(settings) -> AuthPolicy:
    return AuthPolicy(
        api_keys=tuple(settings.api_keys),
        window=settings.auth_window,
        clock_skew=settings.auth_clock_skew,
        device_allowlist=frozenset(settings.device_allowlist),
    )


def message_limits(settings) -> MessageLimits:
    return MessageLimits(
        max_id_length=settings.max_id_length,
        max_sdp_bytes=settings.max_sdp_bytes,
        max_candidate_bytes=settings.max_candidate_bytes,
        rate_per_second=settings.rate_limit_per_second,
        rate_burst=settings.rate_limit_burst,
        rate_strikes=settings.rate_limit_strikes,
        auth_timeout=settings.auth_timeout,
    )


def hold_limits(settings) -> HoldLimits:
    return HoldLimits(grace=settings.resume_grace, max_messages=settings.resume_max_messages,
                      max_bytes=settings.resume_max_bytes)


def session_limits(settings) -> SessionLimits:
    return SessionLimits(
        ttl_default=settings.session_ttl,
        ttl_max=settings.session_ttl_max,
        max_attempts=settings.session_max_attempts,
        max_count=settings.session_max_count,
        max_per_owner=settings.session_max_per_address,
        max_sdp_bytes=settings.max_sdp_bytes,
        max_candidate_bytes=settings.max_candidate_bytes,
        max_mid_length=settings.max_id_length,
    )
