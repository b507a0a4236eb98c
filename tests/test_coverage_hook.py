"""Coverage reaches the daemons the tests start (docs/testing.md, "Coverage"): a daemon
stopped with SIGTERM, which twistd reports by killing itself with that signal, leaves
its coverage data behind."""

from __future__ import annotations

import signal
import sysconfig
from pathlib import Path

import coverage
import pytest

SITE = Path(sysconfig.get_paths()["purelib"])


@pytest.mark.skipif(not (SITE / "zz_sscontrol_coverage.pth").exists(),
                    reason="make coverage-hook (part of make test) installs the hook")
def test_a_daemon_stopped_with_sigterm_saves_its_coverage(daemon_factory, tmp_path):
    config = tmp_path / "coverage.ini"
    config.write_text("[run]\nsource = sscontrold\nparallel = True\n")
    data = tmp_path / "cov" / "data"
    data.parent.mkdir()
    d = daemon_factory(env={"COVERAGE_PROCESS_START": str(config), "COVERAGE_FILE": str(data)})
    assert d.stop() == -signal.SIGTERM  # the exit status still reports the signal
    [saved] = list(data.parent.glob("data.*"))
    measured = coverage.CoverageData(basename=str(saved))
    measured.read()
    tap = [f for f in measured.measured_files() if f.endswith("sscontrold/tap.py")]
    assert tap and measured.lines(tap[0]), "the daemon's own lines were measured"
