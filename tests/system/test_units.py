"""The systemd units and the package metadata: static checks (no root needed) that the
plain and the template unit agree and that the versions match; and, in the container
(system), two template instances running side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import sysharness

SYSTEMD_DIR = sysharness.REPO / "systemd"
PLAIN = SYSTEMD_DIR / "sscontrol-signaling.service"
TEMPLATE = SYSTEMD_DIR / "sscontrol-signaling@.service"


def directives(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith(("#", ";"))]


def test_template_differs_from_the_plain_unit_only_in_description_and_config():
    plain = directives(PLAIN)
    template = directives(TEMPLATE)
    only_plain = [d for d in plain if d not in template]
    only_template = [d for d in template if d not in plain]
    assert [d.split("=", 1)[0] for d in only_plain] == ["Description", "EnvironmentFile"], only_plain
    assert sorted(d.split("=", 1)[0] for d in only_template) == ["Description", "Environment", "EnvironmentFile"], \
        only_template
    assert "Environment=SSCONTROL_CONFIG=/etc/sscontrol/signaling-%i.conf" in only_template


def test_service_contract():
    unit = directives(PLAIN)
    for expected in (
        "Type=notify", "NotifyAccess=main", "WatchdogSec=10", "Restart=on-failure", "TimeoutStopSec=30",
        "ExecStart=/opt/venvs/sscontrol-signaling/bin/twistd --nodaemon --pidfile= "
        "--reactor sscontrol-epoll --logger sscontrold.logging.observer sscontrol-signaling",
        "ExecReload=/bin/kill -HUP $MAINPID", "User=sscontrol-signaling", "Group=sscontrol-signaling",
        "EnvironmentFile=-/etc/default/sscontrol-signaling", "LimitNOFILE=65536", "MemoryMax=1G",
        "NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service", "SystemCallArchitectures=native",
        "LoadCredential=api_keys:/etc/sscontrol/credentials/api_keys",
        "LoadCredential=turn_secrets:/etc/sscontrol/credentials/turn_secrets",
    ):
        assert expected in unit, expected
    # Each LoadCredential= has its SetCredential= fallback (else a missing file fails the start).
    for name in ("api_keys", "turn_secrets"):
        assert any(d.startswith(f"SetCredential={name}:#") for d in unit), name


def test_the_logger_named_by_execstart_exists():
    import sscontrold.logging

    assert callable(sscontrold.logging.observer)


@pytest.mark.system
def test_two_template_instances_run_side_by_side(installed_service):
    c = installed_service
    ports = sysharness.free_ports(4)
    instances = {"alpha": ports[0:2], "beta": ports[2:4]}
    try:
        for name, (port, admin_port) in instances.items():
            c.write_file(f"/etc/sscontrol/signaling-{name}.conf",
                         f"[server]\nhost = 127.0.0.1\nport = {port}\n"
                         f"admin_host = 127.0.0.1\nadmin_port = {admin_port}\n")
            c.ctl("start", f"sscontrol-signaling@{name}.service")
        for name, (port, _) in instances.items():
            assert c.is_active(f"sscontrol-signaling@{name}.service") == "active"
            status, _, body = sysharness.http_get(f"http://127.0.0.1:{port}/health")
            assert status == 200, body
        assert c.is_active() == "active", "the plain unit runs beside the instances"

        # An instance without its own config file fails loudly instead of taking the defaults.
        result = c.ctl("start", "sscontrol-signaling@missing.service", check=False)
        assert result.returncode != 0
        assert "signaling-missing.conf" in c.journal("sscontrol-signaling@missing.service")
    finally:
        for name in (*instances, "missing"):
            c.ctl("stop", f"sscontrol-signaling@{name}.service", check=False)
            c.ctl("reset-failed", f"sscontrol-signaling@{name}.service", check=False)
            c.run(["rm", "-f", f"/etc/sscontrol/signaling-{name}.conf"])


def test_package_version_follows_the_python_package():
    import re

    import sscontrold

    first = (sysharness.REPO / "debian" / "changelog").read_text().splitlines()[0]
    version = re.match(r"^\S+ \(([^)]+)\)", first).group(1)
    upstream = re.split(r"[-+~]", version, maxsplit=1)[0]
    assert upstream == sscontrold.__version__, (
        f"debian/changelog is at {version}, sscontrold.__version__ is {sscontrold.__version__}: "
        "add a changelog entry when the version changes")


def test_the_manual_page_names_every_command_of_the_cli():
    """debian/sscontrol-signaling-ctl.1 (installed with the /usr/bin link) lists each
    sub-command of sscontrol-signaling-ctl, no more, no fewer."""
    import argparse
    import re

    from sscontrold.ctl import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    page = (sysharness.REPO / "debian" / "sscontrol-signaling-ctl.1").read_text()
    section = page.split("\n.SH COMMANDS\n", 1)[1].split("\n.SH ", 1)[0]
    assert set(re.findall(r"(?m)^\.TP\n\.B (\S+)$", section)) == set(subparsers.choices)
    links = (sysharness.REPO / "debian" / "sscontrol-signaling.links").read_text().split()
    assert links == ["opt/venvs/sscontrol-signaling/bin/sscontrol-signaling-ctl", "usr/bin/sscontrol-signaling-ctl"]
