"""The Debian package in a booted Debian 12: install, start, the CLI and the examples,
credentials, upgrade (template instances restarted one at a time), purge.

Runs in file order on one session container; each test brings the package to the state
it needs itself (``ensure_installed`` / ``purge``), so any one of them also runs alone.
"""

from __future__ import annotations

import json
import uuid

import pytest

from wsclient import connect

from . import sysharness
from .sysharness import CONFFILE, CREDENTIALS_DIR, UNIT, VENV

pytestmark = pytest.mark.system

CTL_LINK = "/usr/bin/sscontrol-signaling-ctl"
EXAMPLES_DIR = "/usr/share/doc/sscontrol-signaling/examples"
# The operations files the package ships as examples (debian/sscontrol-signaling.examples):
# path under EXAMPLES_DIR -> the source tree's file.
EXAMPLES = {
    "sysctl.d/60-sscontrol-signaling.conf": "etc/sysctl.d/60-sscontrol-signaling.conf",
    "systemd/journald.conf.d/sscontrol-signaling.conf": "etc/systemd/journald.conf.d/sscontrol-signaling.conf",
    "prometheus/prometheus.yml": "etc/prometheus/prometheus.yml",
    "prometheus/sscontrol-signaling.rules.yml": "etc/prometheus/sscontrol-signaling.rules.yml",
    "prometheus/sscontrol-signaling.rules.test.yml": "etc/prometheus/sscontrol-signaling.rules.test.yml",
    "grafana/sscontrol-signaling.json": "etc/grafana/sscontrol-signaling.json",
    "nginx/sscontrol-signaling.conf": "etc/nginx/sscontrol-signaling.conf",
    "haproxy/sscontrol-signaling.cfg": "etc/haproxy/sscontrol-signaling.cfg",
}


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


def test_the_cli_is_on_the_path_and_the_examples_are_shipped_but_not_applied(installed_service, system_deb):
    c = installed_service
    owned = set(c.run(["dpkg", "-L", sysharness.PACKAGE]).stdout.splitlines())

    # /usr/bin/sscontrol-signaling-ctl: the package's link to the venv's console script, on
    # the PATH of root and of the service's user, with its manual page.
    assert CTL_LINK in owned
    assert c.run(["readlink", CTL_LINK]).stdout.strip() == f"{VENV}/bin/sscontrol-signaling-ctl"
    version = sysharness.deb_field(system_deb, "Version")
    assert c.run(["sscontrol-signaling-ctl", "--version"]).stdout.strip() == f"sscontrol-signaling-ctl {version}"
    assert c.run(["sh", "-c", "command -v sscontrol-signaling-ctl"]).stdout.strip() == CTL_LINK
    check = c.run(["runuser", "-u", "sscontrol-signaling", "--", "sscontrol-signaling-ctl", "check-config"])
    assert "configuration OK" in check.stdout, check.stdout + check.stderr
    assert "/usr/share/man/man1/sscontrol-signaling-ctl.1.gz" in owned

    # The operations files: in the package, under the examples directory, uncompressed and
    # the same as in the source tree...
    for example, source in EXAMPLES.items():
        path = f"{EXAMPLES_DIR}/{example}"
        assert path in owned, f"{path} is not in dpkg -L {sysharness.PACKAGE}"
        assert c.read_file(path) == (sysharness.REPO / source).read_text(), path
    shipped = {p[len(EXAMPLES_DIR) + 1:] for p in owned if p.startswith(EXAMPLES_DIR + "/")
               and c.run(["test", "-f", p], check=False).returncode == 0}
    assert shipped == set(EXAMPLES), shipped ^ set(EXAMPLES)
    # ... and never applied: nothing of them where sysctl, journald, Prometheus, nginx or
    # HAProxy would read it, and the package's only conffiles are its own two.
    found = c.run(["sh", "-c", "ls -d /etc/sysctl.d/*sscontrol* /usr/lib/sysctl.d/*sscontrol* "
                   "/etc/systemd/journald.conf.d/*sscontrol* /usr/lib/systemd/journald.conf.d/*sscontrol* "
                   "/etc/prometheus /etc/grafana /etc/nginx /etc/haproxy 2>/dev/null"], check=False).stdout
    assert not found, f"applied by the package: {found}"
    assert not [p for p in owned if p.startswith(("/etc/sysctl.d/", "/etc/systemd/", "/usr/lib/sysctl.d/"))]
    conffiles = c.run(["dpkg-query", "-W", "-f=${Conffiles}", sysharness.PACKAGE]).stdout.split()
    assert sorted(f for f in conffiles if f.startswith("/")) == sorted([CONFFILE, "/etc/default/sscontrol-signaling"])


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

        # Changed: a reload does not copy credentials again (systemd 252), so the daemon,
        # which re-reads $CREDENTIALS_DIRECTORY on reload, still sees the old key; a restart
        # does (docs/packaging.md: credentials change on restart, *_file settings on reload).
        rotated = "systest-" + uuid.uuid4().hex
        c.write_file(f"{CREDENTIALS_DIR}/api_keys", rotated + "\n", mode=0o600)
        pid = c.main_pid()
        c.ctl("reload", UNIT)
        assert c.main_pid() == pid and c.is_active() == "active"
        assert c.read_file(f"{run_dir}/api_keys").strip() == key
        c.ctl("restart", UNIT)
        assert c.read_file(f"{run_dir}/api_keys").strip() == rotated
        journal = c.journal()
        assert key not in journal and rotated not in journal, "a secret must never reach the journal"
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


def _unit_events(c, cursor: str, units: list[str]) -> list[tuple[str, str, int]]:
    """(kind, unit, microseconds) of systemd's "Stopping UNIT..." and "Started UNIT" lines
    about ``units`` after ``cursor``, in journal order. "Started" of a Type=notify unit is
    logged when its READY=1 came."""
    argv = ["journalctl", "--no-pager", "-o", "json", "_PID=1"]
    if cursor:
        argv.append(f"--after-cursor={cursor}")
    events = []
    for line in c.run(argv, check=False).stdout.splitlines():
        entry = json.loads(line)
        unit, message = entry.get("UNIT"), entry.get("MESSAGE")
        if unit in units and isinstance(message, str):
            for kind in ("Stopping", "Started"):
                if message.startswith(f"{kind} {unit}"):
                    events.append((kind, unit, int(entry["__REALTIME_TIMESTAMP"])))
    return events


def test_upgrade_restarts_template_instances_one_after_another(installed_service, system_deb, tmp_path):
    """postinst restarts the running sscontrol-signaling@NAME instances one at a time, after
    the plain unit: an instance stops (and drains, close 1012) only once the one before it
    is READY again, so its clients always have another instance to reconnect to."""
    c = installed_service
    version = sysharness.deb_field(system_deb, "Version")
    ports = sysharness.free_ports(4)
    instances = {"alpha": ports[0:2], "beta": ports[2:4]}
    units = {name: f"sscontrol-signaling@{name}.service" for name in instances}
    try:
        for name, (port, admin_port) in instances.items():
            c.write_file(f"/etc/sscontrol/signaling-{name}.conf",
                         f"[server]\nhost = 127.0.0.1\nport = {port}\n"
                         f"admin_host = 127.0.0.1\nadmin_port = {admin_port}\n")
            c.ctl("start", units[name])
        pids = {name: c.main_pid(units[name]) for name in instances}
        peer = connect(f"ws://127.0.0.1:{instances['alpha'][0]}/ws")
        peer.join("rolling-upgrade")
        newer = sysharness.repack_deb(system_deb, tmp_path, f"{version}+rolling1")
        cursor = c.journal_cursor()

        out = c.install_deb(newer).stdout

        assert c.installed_version() == f"{version}+rolling1"
        assert peer.closed_with(timeout=5) == 1012, "alpha's client was not told to reconnect"
        for name, (port, _) in instances.items():
            assert c.is_active(units[name]) == "active"
            assert c.main_pid(units[name]) not in (0, pids[name]), f"{name} was not restarted"
            assert sysharness.http_get(f"http://127.0.0.1:{port}/health")[0] == 200
        events = _unit_events(c, cursor, [UNIT, *units.values()])
        order = [(kind, unit) for kind, unit, _ in events]
        # Exactly one stop and one start each, strictly in turn: plain, alpha, beta.
        assert order == [("Stopping", UNIT), ("Started", UNIT),
                         ("Stopping", units["alpha"]), ("Started", units["alpha"]),
                         ("Stopping", units["beta"]), ("Started", units["beta"])], events
        when = {(kind, unit): t for kind, unit, t in events}
        # ... with the pause for the proxies' health checks in between.
        gap = when[("Stopping", units["beta"])] - when[("Started", units["alpha"])]
        assert gap >= 4_000_000, f"beta stopped {gap / 1e6:.1f} s after alpha was ready"
        assert [line for line in out.splitlines() if "restarting" in line] == [
            f"sscontrol-signaling: restarting {units['alpha']}",
            f"sscontrol-signaling: restarting {units['beta']}"], out
    finally:
        for name, unit in units.items():
            c.ctl("stop", unit, check=False)
            c.run(["rm", "-f", f"/etc/sscontrol/signaling-{name}.conf"])
        if c.installed_version() != version:
            c.install_deb(system_deb)


def test_purge_removes_user_venv_and_config(installed_service):
    c = installed_service
    c.run(["dpkg", "--purge", sysharness.PACKAGE], timeout=180)

    assert c.run(["dpkg-query", "-W", sysharness.PACKAGE], check=False).returncode != 0
    assert c.run(["getent", "passwd", "sscontrol-signaling"], check=False).returncode == 2
    assert c.run(["getent", "group", "sscontrol-signaling"], check=False).returncode == 2
    for gone in (VENV, "/opt/venvs", "/etc/sscontrol", "/etc/default/sscontrol-signaling",
                 f"/lib/systemd/system/{UNIT}", f"/etc/systemd/system/multi-user.target.wants/{UNIT}",
                 CTL_LINK, EXAMPLES_DIR):
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
