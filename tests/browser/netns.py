"""A private network namespace for the browser tests.

Chromium's WebRTC gathers no candidate at all, not even a relay one, when the only
interface is loopback, and outside a namespace it sends mDNS and DNS queries. So the
browser tests run in a network namespace of their own: loopback, plus a veth pair with
a private address that gives Chromium "a network". Nothing can leave it: TURN traffic
to 127.0.0.1 goes over the namespace's own loopback.

``unshare(CLONE_NEWNET)`` moves the calling thread (pytest's main thread) into a new
namespace; every process it starts from then on (the daemon, coturn, Playwright's
driver and Chromium) is born there. ``setns`` brings the thread back afterwards. Root
only (CI runs as root).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# Inside the namespace only: never routed anywhere.
VETH_ADDRESS = "10.254.77.1/30"


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


@contextmanager
def private_network():
    """Run the body in a new network namespace with lo and a veth pair up."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET) (the browser tests need root)")
        try:
            for command in (["ip", "link", "set", "lo", "up"],
                            ["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"],
                            ["ip", "addr", "add", VETH_ADDRESS, "dev", "veth0"],
                            ["ip", "link", "set", "veth0", "up"],
                            ["ip", "link", "set", "veth1", "up"]):
                subprocess.run(command, check=True, capture_output=True)
            yield
        finally:
            _check(_libc.setns(original, CLONE_NEWNET), "setns back to the original network namespace")
    finally:
        os.close(original)
