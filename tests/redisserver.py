"""A real redis-server on a free loopback port, for the tests (Debian package
redis-server; `make test` installs it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port


class RedisServer:
    def __init__(self, directory: Path, password: str | None = None):
        self.dir = directory
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no", "--logfile", ""]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def command(self, *args: str) -> bytes:
        """One command over a raw socket (RESP), for checks from the test side."""
        parts = ([("AUTH", self.password)] if self.password else []) + [args]
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            reply = b""
            for cmd in parts:
                s.sendall(b"*%d\r\n" % len(cmd) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode())
                                                           for a in cmd))
                reply = s.recv(65536)
            return reply


@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: `make test` installs the Debian package redis-server")
    servers = []

    def start(password: str | None = None) -> RedisServer:
        d = tmp_path / f"redis{len(servers)}"
        d.mkdir()
        server = RedisServer(d, password).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()
