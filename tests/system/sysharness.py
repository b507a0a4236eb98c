"""Harness of the system tests: the .deb, a Debian 12 root file system, and a container
booted from it with systemd-nspawn, driven from the host through nsenter.

Used by conftest.py (the fixtures) and by the tests (``from . import sysharness``).
Facts it relies on (see docs/packaging.md): PID 1 of the build host need not be systemd,
so nspawn runs with --register=no --keep-unit; the container shares the host's network,
so a port the daemon binds inside is reachable from here on 127.0.0.1; nspawn mounts a
tmpfs on the container's /tmp, so files are handed in under /root.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO / ".cache"
ROOTFS_TAR = CACHE_DIR / "rootfs-bookworm.tar"
SUITE = "bookworm"
# What every container has besides the .deb's own dependencies (added at run time).
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "adduser", "ca-certificates", "openssl")

PACKAGE = "sscontrol-signaling"
UNIT = "sscontrol-signaling.service"
VENV = "/opt/venvs/sscontrol-signaling"
CONFFILE = "/etc/sscontrol/signaling.conf"
CREDENTIALS_DIR = "/etc/sscontrol/credentials"
# The test's own settings for the unit: a drop-in, not package-owned (so installing,
# upgrading and purging never touch it), in place before the first install so that the
# start done by postinst already uses free ports on loopback.
TEST_DROPIN = f"/etc/systemd/system/{UNIT}.d/50-systest.conf"

CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


class CommandError(AssertionError):
    """A command failed; the message carries its output (shown by pytest as is)."""

    def __init__(self, argv: Sequence[str], result: subprocess.CompletedProcess | None, note: str = ""):
        self.argv = list(argv)
        self.result = result
        text = f"command failed{': ' + note if note else ''}: {' '.join(map(str, argv))}"
        if result is not None:
            text += f"\nexit status {result.returncode}"
            for name, data in (("stdout", result.stdout), ("stderr", result.stderr)):
                if data:
                    text += f"\n--- {name} (last 4000 characters)\n{data[-4000:]}"
        super().__init__(text)


def host_run(argv: Sequence[str], *, check: bool = True, timeout: float = 600, cwd: Path | None = None,
             env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(list(map(str, argv)), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise CommandError(argv, None, f"timed out after {timeout:g} s") from e
    if check and result.returncode != 0:
        raise CommandError(argv, result)
    return result


# --- small helpers for tests


def free_ports(count: int = 1, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``host`` right now (held open until all are
    picked, so they differ). The container shares the host's network: they are free there too."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket())
            s.bind((host, 0))
            ports.append(s.getsockname()[1])
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.1,
             what: str = "condition"):
    """Polls ``predicate`` until it returns a true value (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported below if it never succeeds
            last_error = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                                 + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """GET ``url``; (status, headers, body), also for 4xx/5xx answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# --- the .deb


def build_deb() -> Path:
    """``make deb`` (a no-op when the .deb is newer than its sources); the .deb's path."""
    host_run(["make", "--no-print-directory", "-C", REPO, "deb"], timeout=900)
    path = host_run(["make", "-s", "--no-print-directory", "-C", REPO, "print-deb"]).stdout.strip()
    deb = REPO / path
    if not deb.is_file():
        raise AssertionError(f"make deb did not produce {deb}")
    return deb


def deb_field(deb: Path, field: str) -> str:
    return host_run(["dpkg-deb", "-f", deb, field]).stdout.strip()


def deb_dependencies(deb: Path) -> list[str]:
    """Package names of the .deb's Depends (first of each alternative, no versions)."""
    names = []
    for clause in deb_field(deb, "Depends").split(","):
        first = clause.split("|")[0].strip()
        name = re.split(r"[\s(:]", first, maxsplit=1)[0]
        if name:
            names.append(name)
    return names


def repack_deb(deb: Path, out_dir: Path, version: str, conffile_appends: dict[str, str] | None = None) -> Path:
    """A copy of ``deb`` with Version ``version`` and, optionally, text appended to some of
    its files (e.g. a conffile changed "upstream"): the same package content otherwise,
    built in seconds instead of a second dpkg-buildpackage run."""
    work = Path(tempfile.mkdtemp(prefix="repack-", dir=out_dir))
    try:
        tree = work / "tree"
        host_run(["dpkg-deb", "-R", deb, tree])
        control = tree / "DEBIAN" / "control"
        text = control.read_text()
        text, count = re.subn(r"(?m)^Version: .*$", f"Version: {version}", text)
        assert count == 1, "no Version field in the control file"
        control.write_text(text)
        if conffile_appends:
            md5sums = (tree / "DEBIAN" / "md5sums")
            sums = md5sums.read_text() if md5sums.exists() else ""
            for path, extra in conffile_appends.items():
                target = tree / path.lstrip("/")
                target.write_text(target.read_text() + extra)
                digest = hashlib.md5(target.read_bytes()).hexdigest()
                sums = re.sub(rf"(?m)^[0-9a-f]{{32}}  {re.escape(path.lstrip('/'))}$",
                              f"{digest}  {path.lstrip('/')}", sums)
            if md5sums.exists():
                md5sums.write_text(sums)
        out = out_dir / f"{PACKAGE}_{version}_{deb_field(deb, 'Architecture')}.deb"
        host_run(["dpkg-deb", "-Zgzip", "-z1", "--root-owner-group", "-b", tree, out])
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- the root file system


def debian_mirror() -> str:
    """The Debian mirror the host's apt uses for the main archive (debootstrap reuses it)."""
    if os.environ.get("SSCONTROL_DEBIAN_MIRROR"):
        return os.environ["SSCONTROL_DEBIAN_MIRROR"]
    sources = Path("/etc/apt")
    files = sorted(sources.glob("sources.list.d/*.sources")) + [sources / "sources.list"] \
        + sorted(sources.glob("sources.list.d/*.list"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":  # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                uris = re.search(r"(?mi)^URIs:\s*(.+)$", stanza)
                suites = re.search(r"(?mi)^Suites:\s*(.+)$", stanza)
                if uris and suites and SUITE in suites.group(1).split():
                    for uri in uris.group(1).split():
                        if "security" not in uri:
                            return uri.rstrip("/")
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb":
                    rest = [p for p in parts[1:] if not p.startswith("[")]
                    if len(rest) >= 2 and rest[1] == SUITE and "security" not in rest[0]:
                        return rest[0].rstrip("/")
    return "http://deb.debian.org/debian"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_rootfs(extra_packages: Sequence[str] = ()) -> Path:
    """``.cache/rootfs-bookworm.tar``: a debootstrap --variant=minbase of bookworm with
    BASE_PACKAGES and ``extra_packages`` (the .deb's dependencies, so that it installs
    without network). Rebuilt only when a package is missing from the cached one (the
    list is kept beside it, in ``.packages``)."""
    wanted = sorted(set(BASE_PACKAGES) | set(extra_packages))
    listing = ROOTFS_TAR.with_name(ROOTFS_TAR.name + ".packages")
    with _locked(ROOTFS_TAR.with_name(ROOTFS_TAR.name + ".lock")):
        if ROOTFS_TAR.is_file() and listing.is_file() and set(wanted) <= set(listing.read_text().split()):
            return ROOTFS_TAR
        build = CACHE_DIR / "rootfs-build"
        shutil.rmtree(build, ignore_errors=True)
        mirror = debian_mirror()
        host_run(["debootstrap", "--variant=minbase", f"--include={','.join(wanted)}", SUITE, build, mirror],
                 timeout=900)
        # Downloaded .debs only make the tarball bigger; apt's lists stay (apt can then
        # resolve a local .deb's dependencies against what is installed, offline).
        for deb in (build / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        (build / "etc/hostname").write_text("systest\n")
        tmp = ROOTFS_TAR.with_name(ROOTFS_TAR.name + ".tmp")
        host_run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", build, "-cf", tmp, "."],
                 timeout=600)
        os.replace(tmp, ROOTFS_TAR)
        listing.write_text("\n".join(wanted) + "\n")
        shutil.rmtree(build, ignore_errors=True)
        return ROOTFS_TAR


# --- the container


class Container:
    """A Debian 12 system booted with ``systemd-nspawn --boot`` from a fresh copy of the
    cached root file system, sharing the host's network.

    ``run`` runs a command in it (every namespace of its PID 1, entered with nsenter),
    ``ctl`` is systemctl there, ``journal`` journalctl; ``path`` maps a container path
    to the host path under the root directory (to hand in or read files directly).
    """

    def __init__(self, rootfs_tar: Path, workdir: Path | None = None, name: str = "systest"):
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix="sscontrol-systest-", dir=workdir or "/var/tmp"))
        self.log_path = self.root.with_name(self.root.name + ".console.log")
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None  # the container's systemd, as seen from the host
        self.ports: dict[str, int] = {}
        host_run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", rootfs_tar, "-C", self.root],
                 timeout=600)

    # lifetime

    def boot(self, timeout: float = 90.0) -> None:
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--register=no", "--keep-unit", "--boot", "--quiet",
             f"--machine={self.name}", "-D", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout

        def systemd_pid() -> int | None:
            if self.proc.poll() is not None:
                raise CommandError(["systemd-nspawn"], None, f"exited with {self.proc.returncode} during boot:\n"
                                   + self.console_log()[-3000:])
            found = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-x", "systemd"],
                                   capture_output=True, text=True).stdout.split()
            return int(found[0]) if found else None

        self.pid = wait_for(systemd_pid, timeout=timeout, interval=0.05, what="the container's systemd")
        # Until systemd has set up its private bus, systemctl answers nothing: ask again.
        state, result = "", None
        while time.monotonic() < deadline:
            left = max(1.0, deadline - time.monotonic())
            result = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=left)
            state = result.stdout.strip()
            if state in ("running", "degraded", "maintenance", "stopping"):
                break
            time.sleep(0.1)
        if state not in ("running", "degraded"):
            raise AssertionError(f"container did not boot: system state {state!r} "
                                 f"({result.stderr.strip() if result else ''})\n" + self.console_log()[-3000:])
        if state == "degraded":  # worth seeing, not fatal: the tests look at their own unit
            print(self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout)

    def shutdown(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.pid is not None:
                self.run(["systemctl", "poweroff", "--no-block"], check=False, timeout=10)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)  # nspawn: poweroff the container
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
        self.pid = None
        self.remove()

    def remove(self) -> None:
        root = str(self.root)
        with open("/proc/self/mountinfo") as f:
            mounted = [line.split()[4] for line in f if line.split()[4].startswith(root + "/")
                       or line.split()[4] == root]
        for mountpoint in sorted(mounted, reverse=True):
            subprocess.run(["umount", "-l", mountpoint], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            self.log_path.unlink()
        except FileNotFoundError:
            pass

    def console_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # commands

    def run(self, cmd: str | Sequence[str], *, check: bool = True, timeout: float = 120.0,
            env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess:
        """Runs ``cmd`` (a list, or a string for ``sh -c``) inside the container, as root."""
        assert self.pid is not None, "container is not running"
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(map(str, cmd))
        environment = [f"{k}={v}" for k, v in {**CONTAINER_ENV, **(env or {})}.items()]
        full = ["nsenter", "-t", str(self.pid), "-a", "-r", "-w", "env", "-i", *environment, *argv]
        try:
            result = subprocess.run(full, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise CommandError(argv, None, f"timed out after {timeout:g} s") from e
        if check and result.returncode != 0:
            raise CommandError(argv, result)
        return result

    def ctl(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """``systemctl ARGS`` in the container."""
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def journal(self, unit: str = UNIT, *args: str, cursor: str | None = None) -> str:
        """``journalctl -u UNIT`` text (all of it, or what came after ``cursor``)."""
        argv = ["journalctl", "--no-pager", "-q", "-o", "short-iso", "-u", unit, *args]
        if cursor:
            argv.append(f"--after-cursor={cursor}")
        return self.run(argv, check=False).stdout

    def journal_cursor(self) -> str:
        """Where the journal ends now: pass to ``journal(cursor=...)`` to see only newer lines."""
        out = self.run(["journalctl", "-q", "-n", "0", "--show-cursor"], check=False).stdout
        match = re.search(r"-- cursor: (\S+)", out)
        return match.group(1) if match else ""

    def unit_property(self, name: str, unit: str = UNIT) -> str:
        return self.ctl("show", "-p", name, "--value", unit).stdout.strip()

    def main_pid(self, unit: str = UNIT) -> int:
        return int(self.unit_property("MainPID", unit) or 0)

    def is_active(self, unit: str = UNIT) -> str:
        return self.ctl("is-active", unit, check=False).stdout.strip()

    # files

    def path(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    def exists(self, container_path: str) -> bool:
        return self.run(["test", "-e", container_path], check=False).returncode == 0

    def read_file(self, container_path: str) -> str:
        return self.run(["cat", container_path]).stdout

    def write_file(self, container_path: str, text: str, mode: int = 0o644) -> None:
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"', "sh",
                  container_path, f"{mode:o}"], input=text)

    # the package

    def installed_version(self) -> str | None:
        out = self.run(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", PACKAGE], check=False)
        status, _, version = out.stdout.partition(" ")
        return version if out.returncode == 0 and status == "installed" else None

    def install_deb(self, deb: Path, *dpkg_options: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
        """``dpkg [OPTIONS] -i`` the .deb (an install, upgrade or downgrade). Standard input
        is /dev/null: a conffile question from dpkg fails the install instead of hanging."""
        target = f"/root/{deb.name}"
        shutil.copyfile(deb, self.path(target))
        try:
            return self.run(["dpkg", *dpkg_options, "-i", target], timeout=timeout)
        finally:
            self.path(target).unlink(missing_ok=True)

    def purge(self) -> None:
        if self.run(["dpkg-query", "-W", PACKAGE], check=False).returncode == 0:
            self.run(["dpkg", "--purge", PACKAGE], timeout=180)

    def configure_test_ports(self) -> dict[str, int]:
        """Free loopback ports for the service, in the test drop-in (kept across installs).
        Returns ``{"port": ..., "admin_port": ...}``; ``self.ports`` keeps them."""
        if not self.ports:
            port, admin_port = free_ports(2)
            self.ports = {"port": port, "admin_port": admin_port}
            self.set_unit_environment(SSCONTROL_HOST="127.0.0.1", SSCONTROL_PORT=str(port),
                                      SSCONTROL_ADMIN_HOST="127.0.0.1", SSCONTROL_ADMIN_PORT=str(admin_port))
        return self.ports

    def set_unit_environment(self, **env: str) -> None:
        """Adds ``Environment=`` lines to the test drop-in and reloads systemd (restart the
        unit to apply). Extra unit settings for debugging come from $SSCONTROL_SYSTEST_DROPIN."""
        current = self._dropin_environment()
        current.update(env)
        lines = ["[Service]"] + [f'Environment="{k}={v}"' for k, v in current.items()]
        extra = os.environ.get("SSCONTROL_SYSTEST_DROPIN", "").replace("\\n", "\n").strip()
        if extra:
            lines.append(extra)
        self.write_file(TEST_DROPIN, "\n".join(lines) + "\n")
        self.ctl("daemon-reload")

    def unset_unit_environment(self, *names: str) -> None:
        """Removes ``Environment=`` lines from the test drop-in (restart the unit to apply)."""
        current = {k: v for k, v in self._dropin_environment().items() if k not in names}
        lines = ["[Service]"] + [f'Environment="{k}={v}"' for k, v in current.items()]
        self.write_file(TEST_DROPIN, "\n".join(lines) + "\n")
        self.ctl("daemon-reload")

    def _dropin_environment(self) -> dict[str, str]:
        path = self.path(TEST_DROPIN)
        env = {}
        if path.exists():
            for line in path.read_text().splitlines():
                match = re.fullmatch(r'Environment="([^=]+)=(.*)"', line.strip())
                if match:
                    env[match.group(1)] = match.group(2)
        return env

    def ensure_installed(self, deb: Path) -> None:
        """The package of ``deb`` installed (its version; a differing one is replaced) and
        the service active on the test ports."""
        self.configure_test_ports()
        if self.installed_version() != deb_field(deb, "Version"):
            self.install_deb(deb)
        if self.is_active() != "active":
            self.ctl("start", UNIT)

    def url(self, path: str = "/", admin: bool = False) -> str:
        port = self.ports["admin_port" if admin else "port"]
        return f"http://127.0.0.1:{port}{path}"

    def health(self, timeout: float = 5.0) -> tuple[int, dict]:
        status, _, body = http_get(self.url("/health"), timeout=timeout)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {"raw": body.decode(errors="replace")}
