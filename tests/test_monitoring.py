"""The monitoring that ships beside the daemon: the Prometheus alert rules (checked and
unit-tested by promtool), the example Prometheus configuration, the Grafana dashboard,
and, against a real daemon under traffic, that every metric they name is exported."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest

from conftest import ROOT, http
from sscontrold.cgroup import read_memory
from test_admin import present, scrape, value
from wsclient import RawPeer, auth_message, connect

PROMETHEUS_DIR = ROOT / "etc" / "prometheus"
RULES = PROMETHEUS_DIR / "sscontrol-signaling.rules.yml"
RULES_TEST = PROMETHEUS_DIR / "sscontrol-signaling.rules.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "sscontrol-signaling.json"
JOB = "sscontrol-signaling"

KEY = "monitoring-test-key-8Hq2"
TURN_SECRET = "monitoring-turn-secret-Vd51"

# A metric name of the daemon or of prometheus_client's process collector. Recording
# rule names (sscontrol:errors:rate5m) contain colons and are not metric names.
METRIC_NAME = re.compile(r"(?<![\w:])((?:sscontrol|process)_[A-Za-z0-9_]*)(?!\w|:\w)")

REQUIRED_ALERTS = {
    "SscontrolInstanceDown", "SscontrolNotReady", "SscontrolRedisDown", "SscontrolHighErrorRate",
    "SscontrolHighMemory", "SscontrolHighCpu", "SscontrolFileDescriptorsExhausted",
    "SscontrolAuthFailureSurge", "SscontrolAuthFailureRatioHigh",
}
# The metrics the dashboard must show (each per node).
REQUIRED_PANEL_METRICS = {
    "sscontrol_active_connections", "sscontrol_messages_total", "sscontrol_errors_total",
    "sscontrol_relay_latency_seconds_bucket", "sscontrol_auth_total", "sscontrol_turn_credentials_issued_total",
    "sscontrol_rooms", "sscontrol_sessions", "sscontrol_requests_total", "sscontrol_redis_up",
    "sscontrol_ready", "sscontrol_ready_check", "sscontrol_memory_usage_bytes", "sscontrol_memory_limit_bytes",
    "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
}


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is missing: `make system-deps` installs the Debian package prometheus")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def rule_metric_names() -> set[str]:
    """Every metric name in the rules file: expressions, and the queries the
    annotations tell operators to run."""
    return set(METRIC_NAME.findall(without_comments(RULES.read_text())))


def alerts() -> dict[str, str]:
    """alert name -> its block of the rules file (the file is ours: one `- alert:` per rule)."""
    text = RULES.read_text()
    blocks = re.split(r"\n(?=\s*- (?:alert|record): )", text)
    found = {}
    for block in blocks:
        m = re.match(r"\s*- alert: (\w+)\n", block)
        if m:
            found[m.group(1)] = block
    return found


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> list[dict]:
    """The panels, those inside collapsed rows included, rows themselves left out."""
    found = []
    for panel in board["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def dashboard_exprs(board: dict) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels(board) for target in panel["targets"]]


def dashboard_metric_names() -> set[str]:
    return {name for _, expr in dashboard_exprs(dashboard()) for name in METRIC_NAME.findall(expr)}


# --- the rules, with promtool


def test_promtool_checks_the_rules():
    check = promtool("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout


def test_promtool_unit_tests_of_the_rules_pass():
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_checks_the_example_prometheus_config():
    check = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "1 rule files found" in check.stdout  # the rules are loaded by it
    assert f"job_name: {JOB}" in PROMETHEUS_CONFIG.read_text()


def test_every_alert_is_complete_and_unit_tested():
    found = alerts()
    assert REQUIRED_ALERTS <= set(found), REQUIRED_ALERTS - set(found)
    tested = set(re.findall(r"alertname: (\w+)", RULES_TEST.read_text()))
    assert set(found) == tested, f"alerts without a promtool test: {set(found) - tested}"
    for name, block in found.items():
        assert re.search(r"\n\s+for: \d+[smh]\n", block), f"{name}: no for:"
        assert re.search(r"\n\s+severity: (critical|warning)\n", block), f"{name}: no severity label"
        for annotation in ("summary", "description"):
            assert re.search(rf"\n\s+{annotation}: ", block), f"{name}: no {annotation}"
        runbook = re.search(r'\n\s+runbook_url: "docs/operations/(troubleshooting|incident-response)\.md#(\S+)"', block)
        assert runbook and runbook.group(2) == name.lower(), f"{name}: runbook_url missing or not #{name.lower()}"
        # the daemon's metrics are always taken from its own job
        expr = re.search(r"\n\s+expr: (.*?)\n\s+for: ", block, re.S).group(1)
        for selector in re.findall(r"\b(?:sscontrol|process)_\w+(\{[^}]*\})?", expr):
            assert f'job="{JOB}"' in selector, f"{name}: a selector without job={JOB}: {expr}"


def test_runbook_anchors_exist_in_the_operations_docs():
    docs = ROOT / "docs" / "operations"
    targets = {}
    for block in alerts().values():
        doc, anchor = re.search(r'runbook_url: "docs/operations/([\w-]+\.md)#(\S+)"', block).groups()
        targets.setdefault(doc, set()).add(anchor)
    missing_docs = [doc for doc in targets if not (docs / doc).exists()]
    if missing_docs:
        pytest.skip(f"docs/operations/{', '.join(missing_docs)} not written yet")
    for doc, anchors in targets.items():
        text = (docs / doc).read_text()
        # GitHub's heading slugs, and explicit anchors
        slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                 for h in re.findall(r"^#+\s+(.*)$", text, re.M)}
        slugs |= set(re.findall(r'<a (?:id|name)="([^"]+)"', text)) | set(re.findall(r"\{#([\w-]+)\}", text))
        assert anchors <= slugs, f"docs/operations/{doc} lacks the anchors {sorted(anchors - slugs)}"


def test_the_alerts_use_what_the_daemon_exports_not_workarounds():
    """No constant to keep in step with MemoryMax=, no counting of /ready answers, no
    guessing from history whether a node has Redis: the daemon exports each directly."""
    found = alerts()

    def expr(name):
        return " ".join(re.search(r"\n\s+expr: \|?(.*?)\n\s+for: ", found[name], re.S).group(1).split())

    assert expr("SscontrolNotReady") == 'sscontrol_ready{job="sscontrol-signaling"} == 0'
    assert expr("SscontrolRedisDown") == 'sscontrol_redis_up{job="sscontrol-signaling"} == 0'
    assert expr("SscontrolHighMemory") == ('sscontrol_memory_usage_bytes{job="sscontrol-signaling"} / '
                                           'sscontrol_memory_limit_bytes{job="sscontrol-signaling"} > 0.8')


# --- the dashboard


def test_dashboard_is_an_importable_per_node_grafana_dashboard(tmp_path):
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 30
    assert board["uid"] == JOB and board["title"] and board.get("id") is None
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["job"]["current"]["value"] == JOB
    assert variables["instance"]["type"] == "query" and variables["instance"]["multi"]
    assert variables["instance"]["includeAll"] and variables["instance"]["allValue"] == ".*"

    ids = [p["id"] for p in board["panels"]] + [p["id"] for row in board["panels"] for p in row.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cell = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & cell, f"{panel['title']} overlaps another panel"
        cells |= cell

    for panel in panels(board):
        title = panel["title"]
        assert panel["type"] in {"timeseries", "stat", "table", "state-timeline", "bargauge"}, title
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, title
        assert panel["targets"], title
        for target in panel["targets"]:
            expr = target["expr"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", title
            # per node: every selector filters by the variables, every series is named by its node
            for selector in re.findall(r"(?<![\w:])(?:sscontrol|process|up)\w*(\{[^}]*\})?", expr):
                assert 'job="$job"' in selector and 'instance=~"$instance"' in selector, f"{title}: {expr}"
            for by in re.findall(r"\bby \(([^)]*)\)", expr):
                assert "instance" in [label.strip() for label in by.split(",")], f"{title}: {expr}"
            assert "{{instance}}" in target["legendFormat"], f"{title}: legend without {{{{instance}}}}"
    assert REQUIRED_PANEL_METRICS <= dashboard_metric_names(), REQUIRED_PANEL_METRICS - dashboard_metric_names()

    # Every panel's PromQL parses: promtool checks them as recording rules (JSON is YAML).
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{i}",
         "expr": expr.replace("$__rate_interval", "5m").replace("$job", JOB).replace("$instance", ".*")}
        for i, (_, expr) in enumerate(dashboard_exprs(board))]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps(rules))
    check = promtool("check", "rules", str(path))
    assert check.returncode == 0, check.stdout + check.stderr


# --- against a real daemon


def exported(text: str) -> set[str]:
    """The metric names of a scrape that have at least one sample."""
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][\w:]*)(?:\{.*\})? \S+$", text, re.M)}


def wait_ready(d, want: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http("GET", d.admin + "/ready")[0] == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"/ready did not answer {want}:\n{d.log()}")


def test_every_metric_of_the_rules_and_the_dashboard_is_exported(daemon_factory, redis_server):
    redis = redis_server()
    d = daemon_factory("--resume-grace", "5", env={
        "SSCONTROL_API_KEY": KEY, "SSCONTROL_REDIS_URL": redis.url, "SSCONTROL_TURN_SECRETS": TURN_SECRET,
        "SSCONTROL_TURN_URIS": "turn:127.0.0.1:3478?transport=udp"})
    wait_ready(d, 200)

    # Traffic that moves every metric: auth accepted and refused, a room, relays, an
    # error, a TURN credential, a REST request, a dropped peer that resumes.
    host = connect(d.ws)
    assert host.request(auth_message(KEY, "host"))["type"] == "auth_success"
    host_id = host.join("monitoring")["peer_id"]
    raw = RawPeer("127.0.0.1", d.port)
    raw.send_json(auth_message(KEY, "viewer"))
    assert raw.recv_json()["type"] == "auth_success"
    raw.send_json({"type": "join", "room_id": "monitoring"})
    joined = raw.recv_json()
    viewer_id, token = joined["peer_id"], joined["resume_token"]
    assert host.recv() == {"type": "new_peer", "peer_id": viewer_id}
    host.send({"type": "offer", "to": viewer_id, "sdp": "v=0"})
    assert raw.recv_json()["type"] == "offer"
    assert host.request({"type": "no_such_type"})["code"] == "unknown_type"
    assert host.request({"type": "turn"})["type"] == "turn_credentials"
    raw.drop()
    time.sleep(0.3)
    viewer = connect(d.ws)
    assert viewer.request(auth_message(KEY, "viewer"))["type"] == "auth_success"
    assert viewer.request({"type": "resume", "resume_token": token})["type"] == "resumed"
    viewer.send({"type": "answer", "to": host_id, "sdp": "v=0"})
    assert host.recv()["type"] == "answer"
    wrong = connect(d.ws)
    assert wrong.request(auth_message("not-the-key"))["type"] == "error"
    assert http("GET", d.base + "/api/session/does-not-exist")[0] in (401, 404)

    text = scrape(d)
    names = exported(text)
    for name in ("sscontrol_auth_total", "sscontrol_resumes_total", "sscontrol_errors_total"):
        assert name in names, f"the traffic did not move {name}"
    assert value(text, "sscontrol_redis_up") == 1
    assert value(text, "sscontrol_ready") == 1
    assert value(text, "sscontrol_turn_credentials_issued_total", via="websocket") == 1

    # The cgroup memory: the daemon (the test's child) is in the test's cgroup. Where the
    # tests run without a memory limit (or without a cgroup to read), the daemon rightly
    # exports no limit: tests/test_cgroup.py covers the limit against a made-up tree.
    memory = read_memory()
    cannot_have = set()
    if memory.usage is None:
        cannot_have |= {"sscontrol_memory_usage_bytes", "sscontrol_memory_limit_bytes"}
    elif memory.limit is None:
        cannot_have.add("sscontrol_memory_limit_bytes")
    assert not cannot_have & names, f"exported without a cgroup limit to read: {cannot_have & names}"

    from_rules, from_dashboard = rule_metric_names(), dashboard_metric_names()
    assert from_rules and from_dashboard
    missing = from_rules - names - cannot_have
    assert not missing, f"the rules name metrics the daemon does not export: {missing}"
    missing = from_dashboard - names - cannot_have
    assert not missing, f"the dashboard names metrics the daemon does not export: {missing}"

    # The premise of SscontrolRedisDown: with Redis gone, sscontrol_redis_up drops to 0 at
    # the next scrape; the node stays ready, degraded (it still serves: docs/cluster-faults.md).
    redis.kill()
    from test_redis import wait_degraded
    wait_degraded(d)
    after = scrape(d)
    assert value(after, "sscontrol_redis_up") == 0 and present(after, "sscontrol_redis_up")
    assert value(after, "sscontrol_cluster_degraded") == 1
    assert value(after, "sscontrol_ready") == 1 and present(after, "sscontrol_ready")
    assert value(after, "sscontrol_ready_check", check="listener_public") == 1
    for peer in (host, viewer, wrong):
        peer.close()
