"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, in a private
network namespace (netns.py) together with the daemons and coturn it talks to.

Everything here is started after the namespace is entered, so it lives there; the
namespace (and all in it) is left when the package's tests are done.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from browser.netns import private_network
from conftest import Daemon

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SIGNALING_JS = (Path(__file__).with_name("signaling.js")).read_text()
API_KEY = "browser-test-key-0123456789"

# Chromium honours only the last --disable-features switch, so Playwright's own
# argument list is replaced by this one, whole.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-dev-shm-usage",
    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
    "--disable-breakpad", "--disable-client-side-phishing-detection", "--disable-domain-reliability",
    "--metrics-recording-only", "--password-store=basic", "--use-mock-keychain", "--mute-audio",
    "--disable-features=WebRtcHideLocalIpsWithMdns,Translate,MediaRouter,OptimizationHints,"
    "DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
    # No DNS: every name but the loopback ones fails at once.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
    # wss:// to the daemon's test certificate (its CA is not in Chromium's store).
    "--ignore-certificate-errors",
    "--remote-debugging-pipe", "--no-startup-window",
]


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives Debian's Chromium (root: runs in a private "
                            "network namespace)")


@pytest.fixture(scope="package")
def network():
    """The private network namespace every browser test runs in."""
    with private_network():
        yield


@pytest.fixture(scope="package")
def chromium(network, tmp_path_factory):
    """Debian's Chromium, headless, launched by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `make test` installs Debian's chromium package")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, ignore_default_args=True,
            args=[*CHROMIUM_ARGS, f"--user-data-dir={profile}"], timeout=30000)
        try:
            yield browser
        finally:
            browser.close()


class Tab:
    """A page on the daemon's own origin with signaling.js loaded."""

    def __init__(self, browser, daemon):
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.page.goto(daemon.base + "/")  # the banner: a same-origin, secure-context page
        self.page.evaluate(SIGNALING_JS)
        self.daemon = daemon

    def evaluate(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tabs(chromium):
    """Open pages: ``tabs(daemon)``; all closed at the end."""
    opened: list[Tab] = []

    def open_tab(daemon) -> Tab:
        tab = Tab(chromium, daemon)
        opened.append(tab)
        return tab

    yield open_tab
    for tab in opened:
        tab.close()


@pytest.fixture(scope="package")
def package_daemons(network, tmp_path_factory):
    """Daemons shared by the package's tests: ``package_daemons(key, *args, env=...)``."""
    started: dict[tuple, Daemon] = {}

    def get(key: tuple, *args: str, env: dict[str, str] | None = None, tls: bool = False) -> Daemon:
        if key not in started:
            d = Daemon(tmp_path_factory.mktemp("daemon"), list(args), env or {}, tls=tls)
            started[key] = d
            d.start()
        return started[key]

    yield get
    for d in started.values():
        d.stop()
    for d in started.values():
        assert "Traceback" not in d.log(), d.log()
