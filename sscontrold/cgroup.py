"""The memory of the daemon's cgroup (under systemd: its unit's, where MemoryMax= is
the limit), read at scrape time: sscontrol_memory_usage_bytes and
sscontrol_memory_limit_bytes.

cgroup v2: /proc/self/cgroup's ``0::<path>`` line, then memory.current and
memory.max ("max": no limit) in /sys/fs/cgroup/<path>. Hosts still on cgroup v1
(or hybrid, where the v2 tree has no memory controller): the ``memory``
controller's line, then memory.usage_in_bytes and memory.limit_in_bytes in
/sys/fs/cgroup/memory/<path>. No cgroup to read (or no limit set): the sample is
left out rather than made up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily

PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")

# cgroup v1 says "no limit" with PAGE_COUNTER_MAX in bytes (9223372036854771712 with
# 4 KiB pages): no machine has 2**62 bytes of memory.
V1_UNLIMITED = 2 ** 62


@dataclass(frozen=True)
class Memory:
    usage: int | None  # bytes charged to the cgroup (page cache included)
    limit: int | None  # None: no limit, or no cgroup to read


def _paths(proc_cgroup_text: str) -> tuple[str | None, str | None]:
    """(the cgroup v2 path, the v1 memory controller's path) of /proc/self/cgroup's text."""
    v2 = v1 = None
    for line in proc_cgroup_text.splitlines():
        hierarchy, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep and sep2):
            continue
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def read_memory(proc_cgroup: Path = PROC_SELF_CGROUP, root: Path = CGROUP_ROOT) -> Memory:
    """The usage and limit of the cgroup ``proc_cgroup`` names, read under ``root``
    (cgroup v2 first, then v1). Never raises: what cannot be read is None."""
    text = _read(proc_cgroup)
    if text is None:
        return Memory(None, None)
    v2, v1 = _paths(text)
    try:
        if v2 is not None:
            directory = _under(root, v2)
            current = _read(directory / "memory.current")
            if current is not None:
                limit = _read(directory / "memory.max")
                return Memory(int(current), None if limit in (None, "max") else int(limit))
        if v1 is not None:
            directory = _under(root / "memory", v1)
            usage = _read(directory / "memory.usage_in_bytes")
            if usage is not None:
                limit = _read(directory / "memory.limit_in_bytes")
                limit_bytes = None if limit is None else int(limit)
                return Memory(int(usage), None if limit_bytes is None or limit_bytes >= V1_UNLIMITED else limit_bytes)
    except ValueError:  # not a number: not a cgroup file as we know them
        pass
    return Memory(None, None)


class CgroupMemoryCollector:
    """sscontrol_memory_usage_bytes and sscontrol_memory_limit_bytes, read at each scrape."""

    USAGE = ("sscontrol_memory_usage_bytes",
             "Memory charged to the daemon's cgroup, page cache included (memory.current; "
             "memory.usage_in_bytes on cgroup v1).")
    LIMIT = ("sscontrol_memory_limit_bytes",
             "The memory limit of the daemon's cgroup (memory.max, i.e. the unit's MemoryMax=); "
             "absent when there is none.")

    def __init__(self, proc_cgroup: Path = PROC_SELF_CGROUP, root: Path = CGROUP_ROOT):
        self._proc_cgroup = proc_cgroup
        self._root = root

    def describe(self):
        return [GaugeMetricFamily(*self.USAGE), GaugeMetricFamily(*self.LIMIT)]

    def collect(self):
        memory = read_memory(self._proc_cgroup, self._root)
        if memory.usage is not None:
            yield GaugeMetricFamily(*self.USAGE, value=memory.usage)
        if memory.limit is not None:
            yield GaugeMetricFamily(*self.LIMIT, value=memory.limit)


REGISTRY.register(CgroupMemoryCollector())
