"""Fixtures that start the real daemon (``twistd -n sscontrol-signaling``) on free
loopback ports and talk to it over real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

# Fixtures of real servers the tests start: redis-server and coturn.
pytest_plugins = ["redisserver", "coturn", "memory", "layers"]

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).with_name("twistd"))


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together while chosen, so no two are
    the same)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         context=None, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """One HTTP request; returns (status, headers, body), also for 4xx/5xx."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def http_json(method: str, url: str, payload=None, **kw) -> tuple[int, dict]:
    body = None if payload is None else json.dumps(payload).encode()
    headers = {"content-type": "application/json"} if body is not None else {}
    status, _, data = http(method, url, body, headers, **kw)
    return status, json.loads(data)


class Daemon:
    """A running ``twistd -n sscontrol-signaling`` process."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str], tls: bool = False,
                 port: int | None = None, logger: bool = True):
        self.port, self.admin_port = free_ports(2)
        if port is not None:  # a port another daemon shares (reuse_port)
            self.port = port
        self.tls = tls
        self.log_path = tmp / f"daemon-{self.port}-{self.admin_port}.log"
        # logger=False: as README says to start it, without --logger (the plugin installs its own)
        self.argv = [TWISTD, "--nodaemon", "--pidfile=", "--reactor", "sscontrol-epoll",
                     *(["--logger", "sscontrold.logging.observer"] if logger else []),
                     "sscontrol-signaling", "--host", "127.0.0.1", "--port", str(self.port),
                     "--admin-port", str(self.admin_port), *args]
        if "--overload-lag" not in args and "SSCONTROL_OVERLOAD_LAG" not in env:
            # Shedding upgrades when the reactor runs late depends on how loaded the
            # machine running the tests is, not on what a test checks: off, unless a
            # test (tests/test_admission.py) asks for it.
            self.argv += ["--overload-lag", "0"]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SSCONTROL_", "SIGNALING_"))}
        if "SSCONTROL_SHORTCUTS" in os.environ:  # make test runs the suite once more with them off
            self.env["SSCONTROL_SHORTCUTS"] = os.environ["SSCONTROL_SHORTCUTS"]
        if "--config" not in args:  # never pick up /etc/sscontrol/signaling.conf of the machine
            empty = tmp / "empty.conf"
            empty.touch()
            self.env["SSCONTROL_CONFIG"] = str(empty)
        self.env.update(env)
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/ws"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, wait: bool = True) -> "Daemon":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=str(ROOT))
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"daemon did not listen on {self.port}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def daemon_factory(tmp_path):
    """Start daemons with the given flags and environment; all stopped at the end."""
    started: list[Daemon] = []

    def start(*args: str, env: dict[str, str] | None = None, tls: bool = False, wait: bool = True,
              port: int | None = None, logger: bool = True) -> Daemon:
        d = Daemon(tmp_path, list(args), env or {}, tls=tls, port=port, logger=logger)
        started.append(d)
        return d.start(wait=wait)

    yield start
    for d in started:
        d.stop()
        # Whatever a test did, the daemon must never have crashed or leaked a traceback.
        assert "Traceback" not in d.log(), d.log()


@pytest.fixture
def daemon(daemon_factory):
    """A daemon with auth off (the development default)."""
    return daemon_factory()
