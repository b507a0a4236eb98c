"""``GET /connection-test`` (setting ``connection_test_page``): a self-contained page that
checks, in the user's own browser, each step a session needs (docs/connection-test.md).

One HTML document with its script and style inline, allowed by their SHA-256 hashes in a
strict Content-Security-Policy: nothing else loads, and the page may connect only to its
own host (fetch, ws:, wss:). The TURN connections it makes are WebRTC, which CSP does not
govern.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from twisted.web import http
from twisted.web.server import Request

from .web import JSONResource, error_response

_STATIC = Path(__file__).with_name("static")


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _page() -> tuple[bytes, str, str]:
    js = (_STATIC / "connection-test.js").read_text()
    css = (_STATIC / "connection-test.css").read_text()
    html = (_STATIC / "connection-test.html").read_text().replace("{css}", css, 1).replace("{js}", js, 1)
    return html.encode(), _hash(js), _hash(css)


PAGE, SCRIPT_HASH, STYLE_HASH = _page()
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$")


def content_security_policy(host: str | None) -> str:
    """The page's CSP. connect-src names ws:/wss: of the request's Host explicitly
    ('self' covers them in current browsers, not in all)."""
    connect = "'self'"
    if host is not None and _HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return (f"default-src 'none'; script-src {SCRIPT_HASH}; style-src {STYLE_HASH}; connect-src {connect}; "
            "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class ConnectionTestPage(JSONResource):
    def __init__(self, node):
        super().__init__()
        self.node = node

    def render_GET(self, request: Request) -> bytes:
        if not self.node.settings.connection_test_page:  # read per request: a reload applies
            return error_response(request, http.NOT_FOUND, "not found")
        host = request.getHeader(b"host")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy",
                          content_security_policy(None if host is None else host.decode("latin-1")).encode())
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-frame-options", b"DENY")
        return PAGE
