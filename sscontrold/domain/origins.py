"""Origin policy (docs/origin-policy.md): which web origins may open a WebSocket or
call the REST API and /turn from a browser.

``allowed_origins`` patterns: ``*`` (any), an exact origin ``https://app.example.com``
(``:port`` when not the scheme's default), ``null`` (sandboxed and file pages), or a
wildcard ``https://*.example.com`` / ``*.example.com`` matching sub-domains at any depth
(not example.com itself); without a scheme, http and https both match. A page of the
daemon's own origin (Origin's host is the request's Host) is always admitted.

Pure; ``sscontrold.origin_gate.OriginGate`` puts it in front of the public site.
"""

from __future__ import annotations

from dataclasses import dataclass

_SCHEMES = ("http", "https")

@dataclass(frozen=True)
class Pattern:
    schemes: tuple[str, ...]
    host: str  # lower case; for a wildcard, the parent domain
    port: str | None
    wildcard: bool

    def matches(self, scheme: str, host: str, port: str | None) -> bool:
        if scheme not in self.schemes or port != self.port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def parse_pattern(raw: str) -> Pattern | str:
    """A pattern, or the literal ``*`` / ``null``; raises ValueError naming the problem."""
    text = raw.strip()
    if text in ("*", "null"):
        return text
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    scheme = scheme.lower()
    if scheme and scheme not in _SCHEMES:
        raise ValueError(f"{raw!r}: an origin is http:// or https://")
    if not rest or any(c in rest for c in "/?#@ "):
        raise ValueError(f"{raw!r}: an origin is scheme://host[:port], without a path")
    if rest.startswith("["):  # an IPv6 literal: [::1] or [::1]:8443
        host, _, tail = rest.partition("]")
        host += "]"
        colon, port = (":", tail[1:]) if tail.startswith(":") else ("", tail)
        if port and not colon:
            raise ValueError(f"{raw!r}: an origin is scheme://host[:port], without a path")
    else:
        host, colon, port = rest.rpartition(":")
        if not colon:
            host, port = rest, ""
    if colon and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{raw!r}: bad port")
    host = host.lower()
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if not host or "*" in host:
        raise ValueError(f"{raw!r}: a wildcard is a leading '*.' before a domain")
    return Pattern((scheme,) if scheme else _SCHEMES, host, port or None, wildcard)


def parse_origins(raw: str) -> tuple[str, ...]:
    """The config parser of allowed_origins: comma or space separated, each checked."""
    items = tuple(item for item in raw.replace(",", " ").split() if item)
    for item in items:
        parse_pattern(item)
    return items


def split_origin(origin: str) -> tuple[str, str, str | None] | None:
    """(scheme, host, port or None) of an Origin header; None if it is not one."""
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme.lower() not in _SCHEMES or not rest or "/" in rest:
        return None
    host, colon, port = rest.rpartition(":")
    if not colon or "]" in port:
        host, port = rest, ""
    return scheme.lower(), host.lower(), port or None


class OriginPolicy:
    def __init__(self, allowed: tuple[str, ...], require_origin: bool = False):
        self.any = "*" in allowed
        self.null = "null" in allowed
        self.patterns = [p for p in map(parse_pattern, allowed) if isinstance(p, Pattern)]
        self.require_origin = require_origin
        self.admits_all = self.any and not require_origin  # the default: nothing to read per request

    def allows(self, origin: str | None, host: str | None = None) -> bool:
        """Whether a request with this Origin header (None: none) to this Host may go on."""
        if origin is None:
            return not self.require_origin
        if self.any:
            return True
        if origin == "null":
            return self.null
        parts = split_origin(origin)
        if parts is None:
            return False
        scheme, name, port = parts
        if host is not None and host.lower() == (name if port is None else f"{name}:{port}"):
            return True  # the daemon's own pages (the connection test)
        return any(p.matches(scheme, name, port) for p in self.patterns)
