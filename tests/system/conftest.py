"""Fixtures of the system tests (marker ``system``): the package installed into a booted
Debian 12 container, its service reached from here over the shared network.

- ``system_deb``: the .deb from ``make deb`` (rebuilt only when a source is newer).
- ``system_container``: one booted container for the whole session (``sysharness.Container``:
  ``run``, ``ctl``, ``journal``, ``install_deb``, ``purge``, ``path``...), torn down at the end.
- ``installed_service``: that container with the package of ``system_deb`` installed and the
  service active on free loopback ports (``container.ports``, ``container.url(path)``).

Any test using one of them is marked ``system`` and given a long timeout automatically
(the first use builds the .deb and may debootstrap the cached root file system).
Tests that leave the service changed (stopped, reconfigured, another version) should
restore it or leave it to ``installed_service``, which re-installs / restarts as needed.
"""

from __future__ import annotations

import os
import shutil

import pytest

from . import sysharness

SYSTEM_FIXTURES = {"system_deb", "system_container", "installed_service"}
SYSTEM_TIMEOUT = 900  # seconds; the first test pays for make deb and, once, debootstrap


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "system: boots a Debian 12 container (systemd-nspawn, needs root) and installs the .deb "
        "into it; select with -m system, leave out with -m 'not system'")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SYSTEM_FIXTURES & set(getattr(item, "fixturenames", ())):
            if item.get_closest_marker("system") is None:
                item.add_marker(pytest.mark.system)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(SYSTEM_TIMEOUT))


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("system tests need root (apt-get, debootstrap, dpkg-buildpackage, systemd-nspawn)")


@pytest.fixture(scope="session")
def system_deb():
    _require_root()
    return sysharness.build_deb()  # make deb installs the build and container tools when missing


@pytest.fixture(scope="session")
def system_container(system_deb):
    _require_root()
    if shutil.which("systemd-nspawn") is None:
        pytest.skip("systemd-nspawn cannot run here: not installed (make packaging-deps installs systemd-container)")
    rootfs = sysharness.ensure_rootfs(sysharness.deb_dependencies(system_deb))
    container = sysharness.Container(rootfs)
    try:
        container.boot()
        yield container
    finally:
        container.shutdown()


@pytest.fixture
def installed_service(system_container, system_deb):
    system_container.ensure_installed(system_deb)
    return system_container
