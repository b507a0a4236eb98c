"""One rule for the client address on every path (WebSocket, REST, /turn, the Origin
gate): the TCP peer, or what a trusted proxy forwarded, every X-Forwarded-For line read."""

from __future__ import annotations

import http.client
import json
import time

from twisted.internet.address import IPv4Address
from twisted.web.test.requesthelper import DummyRequest

from sscontrold.web import client_address, request_address
from test_rest_api import offer_body


def test_client_address_reads_right_to_left_past_trusted_proxies():
    trusted = frozenset({"10.0.0.1", "10.0.0.2"})
    assert client_address("192.0.2.1", "203.0.113.9", trusted) == "192.0.2.1"  # not a proxy: not believed
    assert client_address("10.0.0.1", "198.51.100.7, 203.0.113.9, 10.0.0.2", trusted) == "203.0.113.9"
    assert client_address("10.0.0.1", None, trusted) == "10.0.0.1"


def test_request_address_reads_every_forwarded_line():
    request = DummyRequest([b"api"])
    request.client = IPv4Address("TCP", "10.0.0.1", 40000)
    request.requestHeaders.setRawHeaders(b"x-forwarded-for", [b"198.51.100.7, 203.0.113.9", b"10.0.0.2"])
    # as the WebSocket handshake reads them: one list, the trusted hop skipped
    assert request_address(request, frozenset({"10.0.0.1", "10.0.0.2"})) == "203.0.113.9"
    assert request_address(request, frozenset()) == "10.0.0.1"


def _post(d, path: str, body: dict, forwarded: list[str], origin: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5)
    data = json.dumps(body).encode()
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(data)))
    for line in forwarded:  # repeated header lines, as a chain of proxies may send them
        conn.putheader("X-Forwarded-For", line)
    if origin is not None:
        conn.putheader("Origin", origin)
    conn.endheaders(data)
    status = conn.getresponse().status
    conn.close()
    return status


def test_rest_and_origin_gate_use_the_forwarded_address(daemon_factory):
    d = daemon_factory("--trusted-proxies", "127.0.0.1", "--session-max-per-address", "1",
                       "--allowed-origins", "https://app.example")
    # The proxy's own hop comes last: the client is the one before it, whichever line it is on.
    assert _post(d, "/api/session", offer_body("addr-a"), ["203.0.113.9", "127.0.0.1"]) == 201
    assert _post(d, "/api/session", offer_body("addr-b"), ["203.0.113.9"]) == 429  # the same client
    assert _post(d, "/api/session", offer_body("addr-c"), ["198.51.100.5"]) == 201  # another one
    assert _post(d, "/api/session", offer_body("addr-d"), ["198.51.100.6", "127.0.0.1"],
                 origin="https://evil.example") == 403
    time.sleep(0.2)
    refused = [line for line in d.log().splitlines() if "origin.refused" in line]
    assert refused and "address=198.51.100.6" in refused[-1], d.log()
