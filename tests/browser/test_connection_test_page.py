"""GET /connection-test in headless Chromium against a real coturn
(docs/connection-test.md): all green when everything is up; the right step red with the
right advice when coturn is stopped, when the TURN secret is wrong, and when the
WebSocket path does not lead to the daemon (as behind a proxy that does not forward it).

SSCONTROL_DOC_SCREENSHOTS=docs/images makes the green and the red run save the
screenshots the documentation shows.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from browser.conftest import API_KEY
from conftest import http

pytestmark = pytest.mark.browser

SECRET = "connection-test-secret-0123456789"
RUN = "() => window.connectionTest"


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1100, "height": 900})
    yield context.new_page()
    context.close()


def setup(daemon_factory, coturn_factory, daemon_secret=SECRET, *args, env=None):
    turn = coturn_factory(SECRET)
    uris = f"turn:127.0.0.1:{turn.port}?transport=udp turn:127.0.0.1:{turn.port}?transport=tcp"
    daemon = daemon_factory(*args, env={"SSCONTROL_TURN_SECRETS": daemon_secret, "SSCONTROL_TURN_URIS": uris,
                                        "SSCONTROL_TURN_ALLOW_ANONYMOUS": "true", **(env or {})})
    return turn, daemon


def steps(report: dict) -> dict[str, dict]:
    return {s["step"]: s for s in report["steps"]}


def shoot(page, tmp_path, name: str) -> None:
    shot = page.screenshot(full_page=True)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10000
    (tmp_path / name).write_bytes(shot)
    target = os.environ.get("SSCONTROL_DOC_SCREENSHOTS")
    if target:
        Path(target, name).write_bytes(shot)


def test_all_green_with_auth_and_a_strict_csp(page, daemon_factory, coturn_factory, tmp_path):
    turn, daemon = setup(daemon_factory, coturn_factory, env={"SSCONTROL_API_KEY": API_KEY})
    status, headers, body = http("GET", daemon.base + "/connection-test")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    csp = headers["Content-Security-Policy"]
    assert csp.startswith("default-src 'none'; script-src 'sha256-")
    assert f"connect-src 'self' ws://127.0.0.1:{daemon.port} wss://127.0.0.1:{daemon.port};" in csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert not re.search(rb"<(script|link|img)[^>]+(src|href)=", body)  # self-contained

    page.goto(daemon.base + "/connection-test")
    first = page.evaluate(RUN)  # the run on load: no key entered
    assert steps(first)["auth"]["status"] == "skip"
    assert steps(first)["signaling round trip"]["status"] == "fail"
    assert "enter an API key" in steps(first)["signaling round trip"]["advice"]

    page.fill("#key", API_KEY)
    page.click("#run")
    page.wait_for_function("document.body.dataset.state === 'running'")
    report = page.evaluate(RUN)
    assert report["verdict"] == "pass", json.dumps(report, indent=1)
    by = steps(report)
    assert [s["status"] for s in report["steps"]] == ["pass"] * 7, report
    assert list(by) == ["server clock", "WebSocket", "auth", "signaling round trip", "TURN credentials",
                        f"TURN relay turn:127.0.0.1:{turn.port}?transport=udp",
                        f"TURN relay turn:127.0.0.1:{turn.port}?transport=tcp"]
    assert all(isinstance(s["ms"], int) for s in report["steps"])
    assert "(udp)" in by[f"TURN relay turn:127.0.0.1:{turn.port}?transport=udp"]["detail"]
    assert "(tcp)" in by[f"TURN relay turn:127.0.0.1:{turn.port}?transport=tcp"]["detail"]
    text = page.input_value("#report")
    assert json.loads(text) == report
    assert API_KEY not in text and "password" not in text  # the key and TURN passwords never in it
    assert page.inner_text("#verdict") == "all checks passed"
    page.fill("#key", "")  # the screenshot shows an empty field
    shoot(page, tmp_path, "connection-test-ok.png")


def test_coturn_stopped(page, daemon_factory, coturn_factory):
    turn, daemon = setup(daemon_factory, coturn_factory)
    turn.stop()
    page.goto(daemon.base + "/connection-test")
    report = page.evaluate(RUN)
    by = steps(report)
    assert report["verdict"] == "fail"
    assert [by[n]["status"] for n in ("WebSocket", "signaling round trip", "TURN credentials")] == ["pass"] * 3
    for transport in ("udp", "tcp"):
        relay = by[f"TURN relay turn:127.0.0.1:{turn.port}?transport={transport}"]
        assert relay["status"] == "fail" and relay["detail"].startswith("no relay candidate"), relay
        assert "did not answer" in relay["advice"] and "firewall" in relay["advice"], relay


def test_wrong_turn_secret(page, daemon_factory, coturn_factory, tmp_path):
    turn, daemon = setup(daemon_factory, coturn_factory, daemon_secret="not-coturns-secret-987654321")
    page.goto(daemon.base + "/connection-test")
    report = page.evaluate(RUN)
    by = steps(report)
    assert by["TURN credentials"]["status"] == "pass"
    for transport in ("udp", "tcp"):
        relay = by[f"TURN relay turn:127.0.0.1:{turn.port}?transport={transport}"]
        assert relay["status"] == "fail" and "401" in relay["detail"], relay
        assert "wrong secret" in relay["advice"] and "wrong realm" in relay["advice"], relay
        assert "expired credentials" in relay["advice"], relay
    assert "2 step(s) failed" in page.inner_text("#verdict")
    shoot(page, tmp_path, "connection-test-failed.png")


def test_websocket_path_not_forwarded(page, daemon_factory, coturn_factory):
    turn, daemon = setup(daemon_factory, coturn_factory)
    # The path a proxy in front would not forward: the upgrade gets a 404, no WebSocket.
    page.goto(daemon.base + "/connection-test?ws_path=/signaling")
    report = page.evaluate(RUN)
    by = steps(report)
    assert by["server clock"]["status"] == "pass"
    ws = by["WebSocket"]
    assert ws["status"] == "fail" and f"ws://127.0.0.1:{daemon.port}/signaling" in ws["detail"], ws
    assert "reverse proxy" in ws["advice"] and "firewall" in ws["advice"], ws
    assert [by[n]["status"] for n in ("auth", "signaling round trip", "TURN credentials", "TURN relay")] == \
        ["skip"] * 4
    assert report["verdict"] == "fail"


def test_the_page_can_be_turned_off(daemon_factory):
    daemon = daemon_factory("--connection-test-page", "false")
    status, _, body = http("GET", daemon.base + "/connection-test")
    assert status == 404 and json.loads(body)["code"] == "not_found"
