"""What the package does on install with its default configuration: it listens on loopback
only and says nothing alarming; served on every address without a key, the journal warns
(priority warning); an empty API key file stops the start instead of turning auth off."""

from __future__ import annotations

import time

import pytest

from .sysharness import CONFFILE, UNIT

pytestmark = pytest.mark.system

WARNINGS = ("startup.auth_off", "startup.tls_off", "startup.sessions_open")


def listening_addresses(c, port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) of the sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in c.read_file(table).splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_default_config_listens_on_loopback_only_and_warns_when_opened(installed_service):
    c = installed_service
    port = c.ports["port"]
    try:
        # The package's own configuration, as installed: no SSCONTROL_HOST from the test drop-in.
        c.unset_unit_environment("SSCONTROL_HOST")
        cursor = c.journal_cursor()
        c.ctl("restart", UNIT)
        assert c.is_active() == "active"
        assert "\nhost = 127.0.0.1\n" in c.read_file(CONFFILE)
        assert listening_addresses(c, port) == {"0100007F"}  # 127.0.0.1, nothing else
        log = c.journal(cursor=cursor)
        assert f"listener.ready listener=public url=ws://127.0.0.1:{port}/" in log, log
        assert not any(w in log for w in WARNINGS), log
        check = c.run(["runuser", "-u", "sscontrol-signaling", "--", "sscontrol-signaling-ctl", "check-config"])
        # (the test ports are in the unit's environment, not in the file check-config reads)
        assert "listen 127.0.0.1:8443; TLS off; auth off" in check.stdout and check.stderr == "", check

        # Opened to every address with no key: the journal says so, at priority warning.
        c.set_unit_environment(SSCONTROL_HOST="0.0.0.0")
        c.ctl("restart", UNIT)
        invocation = c.ctl("show", "-p", "InvocationID", "--value", UNIT).stdout.strip()
        deadline = time.monotonic() + 10  # journald may store the lines a little later
        while True:  # this run's lines only, at priority warning or worse
            warned = c.run(["journalctl", "--no-pager", "-q", "-o", "cat", "-p", "warning",
                            f"_SYSTEMD_INVOCATION_ID={invocation}"], check=False).stdout
            if all(f"{w} " in warned for w in WARNINGS) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for warning in WARNINGS:
            assert warned.count(f"warn {warning} message=") == 1, warned

        # An API key file that holds no key: the service does not start (never "auth off").
        c.write_file("/etc/sscontrol/empty_api_keys", "# the new key goes here\n", mode=0o640)
        c.run(["chgrp", "sscontrol-signaling", "/etc/sscontrol/empty_api_keys"])
        c.set_unit_environment(SSCONTROL_HOST="127.0.0.1", SSCONTROL_API_KEY_FILE="/etc/sscontrol/empty_api_keys")
        cursor = c.journal_cursor()
        c.ctl("restart", UNIT, check=False)
        assert c.is_active() != "active"
        log = c.journal(cursor=cursor)
        assert "invalid setting api_key_file from environment variable SSCONTROL_API_KEY_FILE: " \
               "/etc/sscontrol/empty_api_keys holds no API key" in log, log
    finally:
        c.unset_unit_environment("SSCONTROL_API_KEY_FILE")
        c.set_unit_environment(SSCONTROL_HOST="127.0.0.1")
        c.run(["rm", "-f", "/etc/sscontrol/empty_api_keys"])
        c.ctl("reset-failed", UNIT, check=False)
        c.ctl("restart", UNIT, check=False)
