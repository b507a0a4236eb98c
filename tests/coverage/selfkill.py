"""Run at start-up of every Python process of the venv (through the .pth file that
``make coverage-hook`` writes) while COVERAGE_PROCESS_START is set: a process that kills
itself with a signal saves its coverage data first.

twistd stops on SIGTERM by stopping the reactor, then puts the default handler back and
sends itself the same signal so that its exit status reports it
(twisted.application.app._exitWithSignal): no atexit handler runs then, and coverage's
data of the daemon would be lost. os.kill is wrapped for the process itself only; any
other kill goes straight through.
"""

import os

if os.environ.get("COVERAGE_PROCESS_START"):
    _kill = os.kill

    def _kill_saving_coverage(pid, sig, _kill=_kill):
        if pid == os.getpid():
            import coverage

            current = coverage.Coverage.current()
            if current is not None:
                current.stop()
                current.save()
        _kill(pid, sig)

    os.kill = _kill_saving_coverage
