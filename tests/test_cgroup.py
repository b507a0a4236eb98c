"""sscontrol_memory_usage_bytes and sscontrol_memory_limit_bytes: reading the cgroup,
against hand-made /proc/self/cgroup files and /sys/fs/cgroup trees."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from sscontrold.cgroup import CgroupMemoryCollector, Memory, read_memory

UNIT = "/system.slice/sscontrol-signaling.service"
TEMPLATE = "/system.slice/system-sscontrol\\x2dsignaling.slice/sscontrol-signaling@a.service"

V1_PROC = """12:pids:/system.slice/sscontrol-signaling.service
11:cpu,cpuacct:/system.slice/sscontrol-signaling.service
4:memory:/system.slice/sscontrol-signaling.service
1:name=systemd:/system.slice/sscontrol-signaling.service
0::/system.slice/sscontrol-signaling.service
"""


def tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A /proc/self/cgroup with ``proc`` and a cgroup root holding ``files`` (path: text)."""
    proc_cgroup = tmp_path / "proc-self-cgroup"
    proc_cgroup.write_text(proc)
    root = tmp_path / "sys-fs-cgroup"
    root.mkdir()
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return proc_cgroup, root


def test_v2_usage_and_the_units_memory_max(tmp_path):
    proc, root = tree(tmp_path, f"0::{UNIT}\n", {
        f"{UNIT[1:]}/memory.current": "123456789\n", f"{UNIT[1:]}/memory.max": "1073741824\n",
        "system.slice/memory.current": "999999999\n"})  # the parent's: not ours
    assert read_memory(proc, root) == Memory(usage=123456789, limit=1073741824)


def test_v2_max_means_no_limit(tmp_path):
    proc, root = tree(tmp_path, f"0::{UNIT}\n", {f"{UNIT[1:]}/memory.current": "4096\n",
                                                 f"{UNIT[1:]}/memory.max": "max\n"})
    assert read_memory(proc, root) == Memory(usage=4096, limit=None)


def test_v2_template_unit_path_is_taken_literally(tmp_path):
    proc, root = tree(tmp_path, f"0::{TEMPLATE}\n", {f"{TEMPLATE[1:]}/memory.current": "10\n",
                                                     f"{TEMPLATE[1:]}/memory.max": "20\n"})
    assert read_memory(proc, root) == Memory(usage=10, limit=20)


def test_v1_and_hybrid_hosts_use_the_memory_controller(tmp_path):
    # hybrid: the "0::" line exists, but the v2 tree has no memory files
    files = {f"memory{UNIT}/memory.usage_in_bytes": "5000\n", f"memory{UNIT}/memory.limit_in_bytes": "8192\n",
             f"unified{UNIT}/cgroup.procs": "1\n"}
    proc, root = tree(tmp_path, V1_PROC, files)
    assert read_memory(proc, root) == Memory(usage=5000, limit=8192)


def test_v1_page_counter_max_means_no_limit(tmp_path):
    proc, root = tree(tmp_path, V1_PROC, {f"memory{UNIT}/memory.usage_in_bytes": "5000\n",
                                          f"memory{UNIT}/memory.limit_in_bytes": "9223372036854771712\n"})
    assert read_memory(proc, root) == Memory(usage=5000, limit=None)


def test_nothing_readable_gives_nothing(tmp_path):
    assert read_memory(tmp_path / "missing", tmp_path) == Memory(None, None)
    # the root cgroup (or a container without a cgroup namespace): no memory files
    proc, root = tree(tmp_path, "0::/\n", {"cgroup.procs": "1\n"})
    assert read_memory(proc, root) == Memory(None, None)
    # garbage is not a number: nothing rather than an exception at scrape time
    (tmp_path / "g").mkdir()
    proc, root = tree(tmp_path / "g", f"0::{UNIT}\n", {f"{UNIT[1:]}/memory.current": "lots\n"})
    assert read_memory(proc, root) == Memory(None, None)
    proc.write_text("not a cgroup file\n")
    assert read_memory(proc, root) == Memory(None, None)


def test_the_collector_reads_at_each_scrape_and_leaves_out_what_is_not_there(tmp_path):
    proc, root = tree(tmp_path, f"0::{UNIT}\n", {f"{UNIT[1:]}/memory.current": "1000\n",
                                                 f"{UNIT[1:]}/memory.max": "max\n"})
    registry = CollectorRegistry()
    registry.register(CgroupMemoryCollector(proc, root))
    text = generate_latest(registry).decode()
    assert "\nsscontrol_memory_usage_bytes 1000.0\n" in text
    assert "\nsscontrol_memory_limit_bytes " not in text  # no limit: no sample, not a made-up one
    (root / UNIT[1:] / "memory.max").write_text("1073741824\n")  # e.g. MemoryMax= set at run time
    (root / UNIT[1:] / "memory.current").write_text("2000\n")
    text = generate_latest(registry).decode()
    assert "\nsscontrol_memory_usage_bytes 2000.0\n" in text
    assert "\nsscontrol_memory_limit_bytes 1.073741824e+09\n" in text
    # no cgroup at all: neither has a sample
    registry = CollectorRegistry()
    registry.register(CgroupMemoryCollector(tmp_path / "missing", root))
    assert "\nsscontrol_memory_" not in generate_latest(registry).decode()
