"""The test suite's layers, fastest first (a pytest plugin loaded by conftest.py).

- ``settings``: the settings table, its parser and the twistd Options, in process;
- ``tree``: the service tree ``makeService(options)`` builds, on a memory reactor (no port);
- ``memory``: the protocol through the real factory over StringTransports and the
  reactor's clock (tests/memory.py);
- ``domain``: the domain (sscontrold/domain/) and other pure units (metrics, cgroup);
- ``process``: the real daemon (twistd) and the real servers it talks to, over sockets;
- ``browser``: Chromium against the real daemon;
- ``system``: the .deb in a booted container (systemd-nspawn).

The first four are also marked ``fast``: ``make check`` (``pytest -m fast``) runs them
alone. A module's layer is named here; anything not named is ``process``. A test of a
fast module that asks for a real daemon or server, or is marked ``process``, is in the
process layer. At the end of a run the counts and test time of each layer are printed.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import pytest

FAST_LAYERS = ("settings", "tree", "memory", "domain")
LAYERS = (*FAST_LAYERS, "process", "browser", "system")

MODULE_LAYERS = {
    "test_config": "settings",
    "test_settings": "settings",
    "test_tree_memory": "tree",
    "test_handshake_memory": "memory",
    "test_protocol_memory": "memory",
    "test_rest_memory": "memory",
    "test_domain": "domain",
    "test_domain_cluster": "domain",
    "test_domain_hostile": "domain",
    "test_sessions_domain": "domain",
    "test_metrics": "domain",
    "test_cgroup": "domain",
    "test_logging": "domain",
}

# Fixtures that start a real process: a test asking for one is a process test.
PROCESS_FIXTURES = {"daemon", "daemon_factory", "redis_server", "coturn_factory", "tls_daemon"}
SYSTEM_FIXTURES = {"system_deb", "system_container", "installed_service"}
FAST_BUDGET_SECONDS = 10.0

_layer_of: dict[str, str] = {}


def layer_of(item) -> str:
    fixtures = set(getattr(item, "fixturenames", ()))
    path = item.path.as_posix()
    if "/tests/system/" in path or item.get_closest_marker("system") or SYSTEM_FIXTURES & fixtures:
        return "system"
    if "/tests/browser/" in path or item.get_closest_marker("browser"):
        return "browser"
    layer = MODULE_LAYERS.get(item.path.stem, "process")
    if layer != "process" and (PROCESS_FIXTURES & fixtures or item.get_closest_marker("process")):
        layer = "process"
    return layer


def pytest_configure(config):
    for layer in LAYERS:
        if layer not in ("system", "browser"):  # those two are registered by their conftest
            config.addinivalue_line("markers", f"{layer}: a test of the {layer} layer (tests/layers.py)")
    config.addinivalue_line("markers", "fast: the settings, tree, memory and domain layers (make check)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        layer = layer_of(item)
        _layer_of[item.nodeid] = layer
        item.add_marker(getattr(pytest.mark, layer))
        if layer in FAST_LAYERS:
            item.add_marker(pytest.mark.fast)


_outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    layer = _layer_of.get(report.nodeid)
    if layer is None:
        return
    _seconds[layer] += report.duration  # set-up, call and tear-down
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _outcomes[layer][report.outcome] += 1
    elif report.when == "teardown" and report.failed:
        _outcomes[layer]["error"] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _outcomes:
        return
    terminalreporter.section("test layers")
    fast_seconds = fast_count = 0
    for layer in LAYERS:
        if layer not in _outcomes:
            continue
        counts = ", ".join(f"{n} {key}" for key, n in sorted(_outcomes[layer].items()))
        terminalreporter.write_line(f"{layer:>9}: {counts:<40} {_seconds[layer]:7.1f} s of test time")
        if layer in FAST_LAYERS:
            fast_seconds += _seconds[layer]
            fast_count += sum(_outcomes[layer].values())
    if fast_count:
        if _under_coverage():  # tracing every line slows them: the budget is make check's
            verdict = f"measured under coverage; `make check` holds them to the {FAST_BUDGET_SECONDS:.0f} s budget"
        else:
            verdict = ("within" if fast_seconds < FAST_BUDGET_SECONDS else "OVER") + \
                f" the {FAST_BUDGET_SECONDS:.0f} s budget"
        terminalreporter.write_line(f"fast layers: {fast_count} tests in {fast_seconds:.1f} s of test time "
                                    f"({verdict})")


def _under_coverage() -> bool:
    coverage = sys.modules.get("coverage")
    return coverage is not None and coverage.Coverage.current() is not None
