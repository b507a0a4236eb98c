"""A real coturn (``turnserver``) for the tests, and ``turnutils_uclient`` to use it.

The fixture writes its own config under tmp_path: loopback only, an unprivileged
port, ``use-auth-secret`` with the given ``static-auth-secret`` lines (several, for
rotation), and every file (userdb, log, pid) under tmp_path, so it needs neither root
nor /var. It waits until coturn answers a STUN Binding request and stops it at the end.

Import the fixtures into a test module: ``from coturn import coturn_factory``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REALM = "sscontrol.test"
TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
UCLIENT = shutil.which("turnutils_uclient") or "/usr/bin/turnutils_uclient"

_STUN_MAGIC = 0x2112A442


def _free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (coturn listens on both)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for coturn")


def stun_binding(port: int, timeout: float = 0.2) -> bool:
    """True if a STUN server answers a Binding request on 127.0.0.1:port (UDP)."""
    tid = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, _STUN_MAGIC) + tid
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(request, ("127.0.0.1", port))
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
    return len(data) >= 20 and struct.unpack("!H", data[:2])[0] == 0x0101 and data[8:20] == tid


@dataclass
class Coturn:
    directory: Path
    secrets: tuple[str, ...]
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None

    @property
    def conf(self) -> Path:
        return self.directory / "turnserver.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "turn.log"

    @property
    def uri(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def config_text(self) -> str:
        d = self.directory
        lines = [
            "listening-ip=127.0.0.1",
            f"listening-port={self.port}",
            "relay-ip=127.0.0.1",
            "min-port=49152",
            "max-port=65535",
            "use-auth-secret",
            *(f"static-auth-secret={secret}" for secret in self.secrets),
            f"realm={REALM}",
            "fingerprint",
            "allow-loopback-peers",  # the peers of the tests are on loopback (403 otherwise)
            "no-tls",
            "no-dtls",
            "no-cli",
            "no-rfc5780",
            "no-multicast-peers",
            f"userdb={d / 'turndb.sqlite'}",  # not /var/lib/turn/turndb
            f"log-file={self.log_path}",
            "simple-log",  # the log file name as given, without a date suffix
            "no-stdout-log",
            "verbose",  # logs each request with its user and result: what the tests read
            f"pidfile={d / 'turnserver.pid'}",
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> "Coturn":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.config_text())
        self.conf.chmod(0o600)
        self._out = open(self.directory / "turnserver.out", "ab")
        self.proc = subprocess.Popen([TURNSERVER, "-c", str(self.conf)], stdout=self._out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=str(self.directory), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnserver exited with {self.proc.returncode}:\n{self.output()}")
            if stun_binding(self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"turnserver did not answer on {self.port}:\n{self.output()}")

    def output(self) -> str:
        out = (self.directory / "turnserver.out")
        parts = [p.read_text(errors="replace") for p in (out, self.log_path) if p.exists()]
        return "\n".join(parts)[-4000:]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        self.proc = None

    # --- what coturn logged about a username (needs "verbose")

    def refused(self, username: str) -> bool:
        """coturn refused this user: a 401 naming the username (the first 401 of every
        client is the nameless challenge and does not count)."""
        pattern = re.compile(r"user <%s>: incoming packet \S+ processed, error 401" % re.escape(username))
        return bool(pattern.search(self.log()))

    def allocated(self, username: str) -> bool:
        return f"user <{username}>: incoming packet ALLOCATE processed, success" in self.log()


@pytest.fixture
def coturn_factory(tmp_path):
    """Start coturns: ``coturn_factory("secret1", "secret2")``; all stopped at the end."""
    started: list[Coturn] = []

    for tool in (TURNSERVER, UCLIENT):
        if not os.access(tool, os.X_OK):
            pytest.fail(f"{tool} not found: install the coturn package (make system-deps)")

    def start(*secrets: str) -> Coturn:
        server = Coturn(tmp_path / f"coturn-{len(started)}", tuple(secrets))
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


# --- turnutils_uclient

@dataclass
class Allocation:
    ok: bool
    returncode: int | None  # None: stopped by us once the evidence was in
    relays: int  # "Received relay addr" lines: relay allocations granted
    channel_binds: int  # channel binds (permissions to the peer's relay) granted
    received: int  # data messages that went client -> relay -> relay -> client
    output: str


def allocate(server: Coturn, username: str, password: str, relay_data: bool = False,
             timeout: float = 15.0) -> Allocation:
    """Allocate relays on ``server`` with turnutils_uclient; True in ``.ok`` only on success.

    The invocation: ``turnutils_uclient -v -y -c -X -n 1 -m 1 -l 64 -p PORT -u USER -w PASS
    127.0.0.1``: client-to-client (-y) over UDP, so two clients each allocate an IPv4
    relay (-X) and channel-bind to the other's relay address (a permission), no RTCP
    pair (-c), one 64-byte message each.

    Refusal: uclient retries the allocate and then prints "Cannot complete Allocation"
    and exits 255 (a few ms). Success: two "Received relay addr" lines and two channel
    bind "success: 0x..." lines, after which it prints "Total connect time"; that is
    where it is stopped, unless ``relay_data``: then it runs until a message has gone
    through the relays (its once-a-second statistics show tot_recv_msgs >= 1) or it
    exits 0 on its own. uclient starts sending 1-6 s after connecting (random), so
    ``relay_data`` costs a few seconds.
    """
    argv = [UCLIENT, "-v", "-y", "-c", "-X", "-n", "1", "-m", "1", "-l", "64",
            "-p", str(server.port), "-u", username, "-w", password, "127.0.0.1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", bufsize=1)
    lines: list[str] = []
    relays = binds = received = 0
    connected = False
    deadline = time.monotonic() + timeout
    stopped = False
    watchdog = threading.Timer(timeout, proc.kill)  # a silent, hung uclient cannot block the test
    watchdog.start()
    try:
        for line in proc.stdout:  # uclient flushes every line
            lines.append(line)
            if "Received relay addr" in line:
                relays += 1
            elif re.search(r": success: 0x[0-9a-f]+", line):
                binds += 1
            elif "Total connect time" in line:
                connected = True
            m = re.search(r"tot_recv_msgs=(\d+)", line)
            if m:
                received = max(received, int(m.group(1)))
            done = connected and relays >= 2 and binds >= 2 and (not relay_data or received >= 1)
            if done or time.monotonic() > deadline:
                stopped = True
                break
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    output = "".join(lines)
    returncode = None if stopped and proc.returncode < 0 else proc.returncode
    failed = "Cannot complete Allocation" in output or (returncode not in (None, 0))
    ok = (not failed and relays >= 2 and binds >= 2 and connected
          and (not relay_data or received >= 1))
    return Allocation(ok, returncode, relays, binds, received, output)
