"""The domain's limits at the settings' built-in defaults (config.FIELDS), with
changes: tests never restate a default."""

from __future__ import annotations

from dataclasses import replace

from sscontrold import config, policies

DEFAULTS = config.defaults()


def message_limits(**changes):
    return replace(policies.message_limits(DEFAULTS), **changes)


def hold_limits(**changes):
    return replace(policies.hold_limits(DEFAULTS), **changes)


def session_limits(**changes):
    return replace(policies.session_limits(DEFAULTS), **changes)


def auth_policy(**changes):
    return replace(policies.auth_policy(DEFAULTS), **changes)
