"""The Debian package in a booted Debian 12: install, start, credentials, upgrade, purge.

Runs in file order on one session container; each test brings the package to the state
it needs itself (``ensure_installed`` / ``purge``), so any one of them also runs alone.
"""

from __future__ import annotations

import uuid

import pytest

from . import sysharness
from .sysharness import CONFFILE, CREDENTIALS_DIR, UNIT, VENV

pytestmark = pytest.mark.system


def test_install_enables_and_starts_the_service(system_container, system_deb):
    c = system_container
    c.purge()
    c.configure_test_ports()
    cursor = c.journal_cursor()

    c.install_deb(system_deb)  # postinst creates the user and starts the unit

    assert c.installed_version() == sysharness.deb_field(system_deb, "Version")
    assert c.ctl("is-enabled", UNIT).stdout.strip() == "enabled"
    c.ctl("start", UNIT)  # Type=notify: returns once the daemon has sent READY=1
    assert c.is_active() == "active"

    status, body = c.health()
    assert status == 200, body
    assert body.get("status") == "ok", body

    log = c.journal(cursor=cursor)
    assert "Started sscontrol-signaling.service" in log, log
    assert "dropin.cache" not in log, "the plugin cache should be fresh and never written by the service"

    # Its own system user, no login, no home; the process runs as that user.
    passwd = c.run(["getent", "passwd", "sscontrol-signaling"]).stdout.strip().split(":")
    assert passwd[5:] == ["/nonexistent", "/usr/sbin/nologin"], passwd
    uid = passwd[2]
    status_lines = c.read_file(f"/proc/{c.main_pid()}/status").splitlines()
    uid_line = next(line for line in status_lines if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [uid] * 4, uid_line

    # The credentials directory, the plugin cache, the unit files as systemd sees them.
    assert c.run(["stat", "-c", "%a %U %G", CREDENTIALS_DIR]).stdout.split() == \
        ["750", "root", "sscontrol-signaling"]
    assert c.run(["sh", "-c", f"ls {VENV}/lib/python3*/site-packages/twisted/plugins/dropin.cache"]).returncode == 0
    c.run(["systemd-analyze", "verify", UNIT, "sscontrol-signaling@example.service"])
    exposure = c.run(["systemd-analyze", "security", "--no-pager", UNIT]).stdout
    assert "Overall exposure level" in exposure
    level = float(exposure.rsplit("Overall exposure level", 1)[1].split(":", 1)[1].split()[0])
    assert level <= 2.0, exposure[-2000:]


def test_credentials_are_optional_and_handed_to_the_daemon(installed_service):
    c = installed_service
    run_dir = f"/run/credentials/{UNIT}"
    key = "systest-" + uuid.uuid4().hex
    try:
        # None given: the unit starts with the fallback, a comment line (no keys).
        c.run(["rm", "-f", f"{CREDENTIALS_DIR}/api_keys", f"{CREDENTIALS_DIR}/turn_secrets"])
        c.ctl("restart", UNIT)
        assert c.is_active() == "active"
        assert c.read_file(f"{run_dir}/api_keys").startswith("#")

        # Given: loaded from the root-only file, readable by the service only.
        c.write_file(f"{CREDENTIALS_DIR}/api_keys", key + "\n", mode=0o600)
        c.ctl("restart", UNIT)
        assert c.is_active() == "active"
        assert c.read_file(f"{run_dir}/api_keys").strip() == key
        owner = c.run(["stat", "-c", "%U", f"{run_dir}/api_keys"]).stdout.strip()
        assert owner == "sscontrol-signaling"
        assert key not in c.journal(), "a secret must never reach the journal"
    finally:
        c.run(["rm", "-f", f"{CREDENTIALS_DIR}/api_keys"])
        c.ctl("restart", UNIT, check=False)


def test_upgrade_keeps_the_operators_config(installed_service, system_deb, tmp_path):
    c = installed_service
    version = sysharness.deb_field(system_deb, "Version")
    edit = f"# operator edit {uuid.uuid4().hex}\n"
    c.write_file(CONFFILE, c.read_file(CONFFILE) + edit)
    pid_before = c.main_pid()

    # 1. The new version ships the same conffile: dpkg keeps the edited one without asking
    #    (stdin is /dev/null and no --force-conf* option is given: a question would fail).
    newer = sysharness.repack_deb(system_deb, tmp_path, f"{version}+systest1")
    c.install_deb(newer)
    assert c.installed_version() == f"{version}+systest1"
    assert c.read_file(CONFFILE).endswith(edit)
    assert not c.exists(CONFFILE + ".dpkg-dist") and not c.exists(CONFFILE + ".dpkg-new")
    assert c.is_active() == "active"
    assert c.main_pid() != pid_before, "the upgrade should restart the service"
    assert c.health()[0] == 200

    # 2. The new version also changes the conffile: both changed, so dpkg would ask.
    #    Unattended upgrades answer with --force-confold (apt: -o Dpkg::Options::=--force-confold):
    #    the operator's file stays, the new one is put beside it as .dpkg-dist.
    upstream = "# changed upstream\n"
    newest = sysharness.repack_deb(system_deb, tmp_path, f"{version}+systest2", {CONFFILE: upstream})
    c.install_deb(newest, "--force-confold")
    assert c.installed_version() == f"{version}+systest2"
    current = c.read_file(CONFFILE)
    assert current.endswith(edit) and upstream not in current
    assert c.read_file(CONFFILE + ".dpkg-dist").endswith(upstream)
    assert c.is_active() == "active"
    assert c.health()[0] == 200

    # Back to the package under test with its own conffile (the edit goes to .dpkg-old).
    c.install_deb(system_deb, "--force-confnew")
    c.run(["rm", "-f", CONFFILE + ".dpkg-dist", CONFFILE + ".dpkg-old"])
    assert edit not in c.read_file(CONFFILE)
    assert c.is_active() == "active"


def test_purge_removes_user_venv_and_config(installed_service):
    c = installed_service
    c.run(["dpkg", "--purge", sysharness.PACKAGE], timeout=180)

    assert c.run(["dpkg-query", "-W", sysharness.PACKAGE], check=False).returncode != 0
    assert c.run(["getent", "passwd", "sscontrol-signaling"], check=False).returncode == 2
    assert c.run(["getent", "group", "sscontrol-signaling"], check=False).returncode == 2
    for gone in (VENV, "/opt/venvs", "/etc/sscontrol", "/etc/default/sscontrol-signaling",
                 f"/lib/systemd/system/{UNIT}", f"/etc/systemd/system/multi-user.target.wants/{UNIT}"):
        assert not c.exists(gone), f"{gone} left after purge"
    assert c.is_active() in ("inactive", "unknown")
    # Nothing listens on the service's port any more.
    with pytest.raises(OSError):
        sysharness.http_get(c.url("/health"), timeout=2)


def test_purge_keeps_credentials_the_operator_left(installed_service):
    c = installed_service
    c.write_file(f"{CREDENTIALS_DIR}/api_keys", "k\n", mode=0o600)
    try:
        c.run(["dpkg", "--purge", sysharness.PACKAGE], timeout=180)
        assert c.exists(f"{CREDENTIALS_DIR}/api_keys"), "purge must not delete an operator's secrets"
        assert c.run(["getent", "passwd", "sscontrol-signaling"], check=False).returncode == 2
    finally:
        c.run(["rm", "-rf", "/etc/sscontrol"])


def test_lintian_reports_no_errors(system_deb):
    result = sysharness.host_run(["lintian", "--fail-on", "error", "--no-tag-display-limit", system_deb],
                                 check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
