"""Fail closed and tell the operator: a key file or credential that holds nothing is an
error (at start and on reload), loose secret-file permissions are refused or warned about,
the start-up says who can reach what (in the log and in check-config), the daemon logs the
same way however twistd is started, and its start-up errors are one line that names what
to fix."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from certs import PKI
from conftest import ROOT, TWISTD, Daemon, free_port, http
from sscontrold import config
from sscontrold.config import ConfigError, load
from test_ctl import PREFIX, ctl
from test_rest_api import offer_body
from test_tls import run_refused
from wsclient import auth_message, connect

KEY = "fail-closed-test-key-Jq4vR8"
SECRET = "fail-closed-test-turn-secret-Zp2"
UNIT = ROOT / "systemd" / "sscontrol-signaling.service"


def write(path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- a key file, a secret file or a credential that holds nothing


def test_empty_api_key_file_is_refused_at_start(tmp_path):
    keys = write(tmp_path / "keys", "# the new key goes here\n\n   \n")
    with pytest.raises(ConfigError) as e:
        load({"api_key_file": keys}, {}, os.devnull)
    assert str(e.value) == (f"invalid setting api_key_file from command line --api-key-file: {keys} holds no "
                            "API key (only blank or comment lines): put one per line, or unset api_key_file")
    result = run_refused("--api-key-file", keys)  # the daemon: one line, nothing bound
    assert result.returncode != 0 and result.stderr.strip() == f"sscontrol-signaling: {e.value}"
    r = ctl("check-config", "--api-key-file", keys)  # check-config no longer says "auth off"
    assert r.code == 1 and r.out == "" and "holds no API key" in r.err


def test_empty_turn_secret_file_is_refused_at_start(tmp_path):
    secrets = write(tmp_path / "turn_secrets", "\n# rotated out\n")
    conf = write(tmp_path / "c.conf", f"[turn]\nturn_secret_file = {secrets}\nturn_uris = turn:t:3478\n")
    with pytest.raises(ConfigError, match=rf"invalid setting turn_secret_file from {conf} \[turn\] "
                                          rf"turn_secret_file: {secrets} holds no TURN secret"):
        load({}, {}, conf)
    password = write(tmp_path / "redis_password", "\n")
    with pytest.raises(ConfigError, match="redis_password_file .* holds no Redis password"):
        load({"redis_password_file": password}, {}, os.devnull)


def test_empty_credential_is_refused_but_the_units_placeholder_is_none(tmp_path):
    creds = tmp_path / "credentials"
    creds.mkdir()
    write(creds / "api_keys", "# emptied by mistake\n")
    with pytest.raises(ConfigError, match="invalid setting api_keys from systemd credential api_keys: "
                                          "it holds no API key"):
        load({}, {"CREDENTIALS_DIRECTORY": str(creds)}, os.devnull)
    # The unit hands this text in when the operator gave no credential: that is "none given".
    placeholder = re.search(r"^SetCredential=api_keys:(.*)$", UNIT.read_text(), re.M).group(1)
    assert placeholder.startswith(config.CREDENTIAL_PLACEHOLDER)
    write(creds / "api_keys", placeholder)
    assert load({}, {"CREDENTIALS_DIRECTORY": str(creds)}, os.devnull).api_keys == ()


def test_reload_with_emptied_secret_files_is_refused_and_the_running_keys_stay(daemon_factory, tmp_path):
    keys = tmp_path / "keys"
    secrets = tmp_path / "turn_secrets"
    write(keys, f"{KEY}\n")
    write(secrets, f"{SECRET}\n")
    d = daemon_factory("--api-key-file", str(keys), "--turn-secret-file", str(secrets),
                       "--turn-uris", "turn:127.0.0.1:3478")
    for emptied, key, what in ((keys, "api_key_file", "API key"), (secrets, "turn_secret_file", "TURN secret")):
        original = emptied.read_text()
        emptied.write_text("# half-done rotation\n")
        before = d.log().count("reload.failed")
        d.signal(signal.SIGHUP)
        wait_for(lambda before=before: d.log().count("reload.failed") > before)
        failed = [line for line in d.log().splitlines() if "reload.failed" in line][-1]
        assert f"invalid setting {key}" in failed and f"holds no {what}" in failed and str(emptied) in failed
        assert "kept the running configuration" in failed
        # still closed: no credentials, no join; the running key still authenticates
        anonymous = connect(d.ws)
        anonymous.send({"type": "join", "room_id": "r"})
        assert anonymous.recv()["type"] == "error"
        keyed = connect(d.ws)
        keyed.send(auth_message(KEY))
        assert keyed.recv()["type"] == "auth_success"
        status, _, body = http("GET", d.base + "/turn", headers={"authorization": f"Bearer {KEY}"})
        assert status == 200 and json.loads(body)["uris"] == ["turn:127.0.0.1:3478"]
        emptied.write_text(original)
    assert "reload.done" not in d.log()
    assert KEY not in d.log() and SECRET not in d.log()


# --- permissions of secret files (as OpenSSH's StrictModes)


@pytest.mark.parametrize("mode, who", [(0o666, "group and others"), (0o620, "group"), (0o602, "others")])
def test_writable_secret_file_is_refused_with_the_chmod(tmp_path, mode, who):
    keys = write(tmp_path / "keys", f"{KEY}\n", mode)
    with pytest.raises(ConfigError) as e:
        load({"api_key_file": keys}, {}, os.devnull)
    assert str(e.value) == (f"invalid setting api_key_file from command line --api-key-file: {keys} is writable "
                            f"by {who} (mode {mode:04o}): run chmod go-w {keys}")
    r = ctl("check-config", "--api-key-file", keys)
    assert r.code == 1 and f"run chmod go-w {keys}" in r.err


def test_world_readable_secret_files_are_warned_about(tmp_path):
    pki = PKI(tmp_path / "pki")
    chain, tls_key, _ = pki.server()
    os.chmod(tls_key, 0o644)
    keys = write(tmp_path / "keys", f"{KEY}\n", 0o644)
    secrets = write(tmp_path / "turn", f"{SECRET}\n", 0o640)  # group-readable: fine
    password = write(tmp_path / "redis", "pw\n", 0o604)
    flags = {"api_key_file": keys, "turn_secret_file": secrets, "turn_uris": "turn:t", "host": "127.0.0.1",
             "redis_password_file": password, "tls_cert": str(chain), "tls_key": str(tls_key)}
    warnings = load(flags, {}, os.devnull).warnings
    assert [(w.event, w.message) for w in warnings] == [
        ("config.secret_readable", f"api_key_file file {keys} is readable by every user (mode 0644): "
                                   f"run chmod o-rwx {keys}"),
        ("config.secret_readable", f"redis_password_file file {password} is readable by every user (mode 0604): "
                                   f"run chmod o-rwx {password}"),
        ("config.secret_readable", f"tls_key file {tls_key} is readable by every user (mode 0644): "
                                   f"run chmod o-rwx {tls_key}"),
    ]
    os.chmod(tls_key, 0o664)
    with pytest.raises(ConfigError, match=rf"invalid setting tls_key .* run chmod go-w {tls_key}"):
        load(flags, {}, os.devnull)
    os.chmod(tls_key, 0o600)
    # check-config: still OK, the warning on stderr
    r = ctl("check-config", "--api-key-file", keys, "--host", "127.0.0.1", secrets=(KEY,))
    assert r.code == 0 and r.out.startswith("configuration OK")
    assert r.err == f"{PREFIX}warning: config.secret_readable: {warnings[0].message}\n"


# --- start-up warnings


def warning_lines(log: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in re.finditer(r"^.*warn (startup\.\w+|config\.\w+) .*$", log, re.M)}


@pytest.fixture
def journal_daemon(tmp_path):
    """A daemon whose stdout is what $JOURNAL_STREAM names, as under systemd."""
    d = Daemon(tmp_path, ["--host", "0.0.0.0"], {})  # the later --host wins
    d.log_path.touch()
    st = os.stat(d.log_path)
    d.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    yield d.start()
    d.stop()
    assert "Traceback" not in d.log()


def test_startup_warnings_in_the_journal_format_and_in_check_config(journal_daemon):
    d = journal_daemon
    lines = warning_lines(d.log())
    assert sorted(lines) == ["startup.auth_off", "startup.sessions_open", "startup.tls_off"]
    for event, line in lines.items():
        assert line.startswith(f"<4>warn {event} message=")  # priority 4: journalctl -p warning
        assert d.log().count(f" {event} ") == 1  # one event each
    assert f"on 0.0.0.0:{d.port}" in lines["startup.auth_off"]

    r = ctl("check-config", "--host", "0.0.0.0", "--port", str(d.port))
    assert r.code == 0 and r.out.startswith("configuration OK")
    printed = [line.removeprefix(f"{PREFIX}warning: ") for line in r.err.splitlines()]
    assert [line.split(":")[0] for line in printed] == ["startup.auth_off", "startup.tls_off",
                                                        "startup.sessions_open"]
    for line in printed:  # the same text as in the log
        event, _, message = line.partition(": ")
        assert message.replace('"', "") in lines[event].replace('\\"', "").replace('"', "")


def test_startup_warnings_say_only_what_is_true(daemon_factory):
    quiet = daemon_factory()  # loopback, no proxy: nothing reaches it from elsewhere
    assert warning_lines(quiet.log()) == {}
    # behind a proxy on this host: reachable, but TLS is the proxy's
    r = ctl("check-config", "--host", "127.0.0.1", "--trusted-proxies", "127.0.0.1")
    assert [line.split(": ")[2] for line in r.err.splitlines()] == ["startup.auth_off", "startup.sessions_open"]
    # auth on, sessions authenticated, TLS proxy: nothing to say
    r = ctl("check-config", "--host", "0.0.0.0", "--trusted-proxies", "10.0.0.2", "--session-auth", "true",
            env={"SSCONTROL_API_KEY": KEY})
    assert r.code == 0 and r.err == ""


# --- one logging set-up however twistd is started


def test_plain_twistd_logs_with_fields_in_the_configured_format(daemon_factory):
    d = daemon_factory("--log-format", "json", env={"SSCONTROL_API_KEY": KEY}, logger=False)
    peer = connect(d.ws)
    peer.send(auth_message("not-the-key"))
    assert peer.recv()["type"] == "error"
    wait_for(lambda: "auth.refused" in d.log())
    records = [json.loads(line) for line in d.log().splitlines() if line.strip()]  # every line is JSON
    refused = next(r for r in records if r["event"] == "auth.refused")
    assert refused["level"] == "warn" and refused["address"] == "127.0.0.1" and refused["reason"]
    assert all(isinstance(r["time"], float) for r in records)  # not under the journal: a time
    assert "not-the-key" not in d.log()


def test_plain_twistd_text_has_timestamps_and_honours_log_level(daemon_factory):
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}"
    info = daemon_factory(logger=False, env={"JOURNAL_STREAM": "1:2"})  # inherited, but not our stdout
    debug = daemon_factory("--log-level", "debug", logger=False)
    for d in (info, debug):
        assert http("GET", d.base + "/health")[0] == 200
    wait_for(lambda: "http.request" in debug.log())
    time.sleep(0.2)
    assert "http.request" not in info.log()  # debug events are not logged at info
    for d in (info, debug):
        lines = d.log().splitlines()
        assert lines and all(re.match(rf"^{stamp} (debug|info|warn|error|critical) [a-z_]+\.[a-z_.]+", line)
                             or re.match(rf"^{stamp} info log namespace=", line) for line in lines), lines
        assert any(re.match(rf"^{stamp} info listener\.ready listener=public url=ws://", line) for line in lines)


# --- start-up errors: one line, naming what to fix


def test_unknown_flag_is_one_line_first_with_a_suggestion():
    result = run_refused("--prot", "1")
    assert result.stdout == ""
    assert result.stderr == ("sscontrol-signaling: option --prot not recognized, did you mean --port? "
                             "(see 'twistd sscontrol-signaling --help')\n")
    assert run_refused("--frobnicate", "1").stderr == ("sscontrol-signaling: option --frobnicate not recognized "
                                                       "(see 'twistd sscontrol-signaling --help')\n")


def test_typo_in_the_config_file_gets_did_you_mean(tmp_path):
    conf = write(tmp_path / "c.conf", "[limits]\nmax_peer_per_room = 3\n")
    with pytest.raises(ConfigError) as e:
        load({}, {}, conf)
    assert str(e.value) == (f"invalid setting max_peer_per_room from {conf} [limits] max_peer_per_room: "
                            "unknown key, did you mean max_peers_per_room?")
    conf = write(tmp_path / "d.conf", "[server]\nfrobnicate = 1\n")
    with pytest.raises(ConfigError, match="frobnicate: unknown key$"):
        load({}, {}, conf)


@pytest.mark.parametrize("taken", ["public", "admin"])
def test_address_in_use_names_it_and_no_listener_says_ready(tmp_path, taken):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        other = free_port()
        port, admin_port = (busy, other) if taken == "public" else (other, busy)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SSCONTROL_", "SIGNALING_"))}
        env["SSCONTROL_CONFIG"] = os.devnull
        result = subprocess.run([TWISTD, "--nodaemon", "--pidfile=", "sscontrol-signaling", "--host", "127.0.0.1",
                                 "--port", str(port), "--admin-port", str(admin_port)],
                                capture_output=True, text=True, timeout=30, env=env, cwd=str(ROOT))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    keys = "host/port" if taken == "public" else "admin_host/admin_port"
    assert f"cannot listen for {taken} on 127.0.0.1:{busy} ({keys}): Address already in use" in output
    assert "listener.ready" not in output and "daemon.ready" not in output and "Traceback" not in output


# --- the REST session API: open by default, authenticated on demand


def test_session_api_is_open_by_default_and_session_auth_closes_it(daemon_factory):
    headers = {"content-type": "application/json"}
    open_api = daemon_factory(env={"SSCONTROL_API_KEY": KEY})
    body = json.dumps(offer_body("open-session-1")).encode()
    assert http("POST", open_api.base + "/api/session", body, headers)[0] == 201  # the sscontrol clients' way

    d = daemon_factory("--session-auth", "true", env={"SSCONTROL_API_KEY": KEY})
    body = json.dumps(offer_body("closed-session-1")).encode()
    for extra in ({}, {"authorization": "Bearer wrong-key"}, {"authorization": f"Basic {KEY}"}):
        status, got, data = http("POST", d.base + "/api/session", body, {**headers, **extra})
        assert status == 401 and json.loads(data)["success"] is False
        assert "Authorization: Bearer" in json.loads(data)["error"]
        assert {k.lower(): v for k, v in got.items()}["www-authenticate"] == 'Bearer realm="sscontrol"'
    assert http("GET", d.base + "/api/session/closed-session-1")[0] == 401
    bearer = {"authorization": f"Bearer {KEY}"}
    assert http("POST", d.base + "/api/session", body, {**headers, **bearer})[0] == 201
    assert http("GET", d.base + "/api/session/closed-session-1", headers=bearer)[0] == 200
    preflight = http("OPTIONS", d.base + "/api/session", headers={"origin": "https://app.example",
                                                                   "access-control-request-method": "POST"})
    assert preflight[0] == 204  # browsers send no credentials on a preflight
    wait_for(lambda: "via=rest" in d.log())
    assert re.search(r"warn auth\.refused address=127\.0\.0\.1 reason=missing_credentials via=rest", d.log())
    assert KEY not in d.log()


def test_session_auth_needs_api_keys():
    result = run_refused("--session-auth", "true")
    assert result.returncode != 0 and result.stderr.strip() == (
        "sscontrol-signaling: invalid setting session_auth from command line --session-auth: needs API keys "
        "(api_key_file, api_keys or the credential api_keys)")


# --- what the operator reads: the settings reference, make run, the release notes


def test_configuration_reference_is_the_settings_table():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == config.with_reference_table(doc), "regenerate it: .venv/bin/python -m sscontrold.config"
    rows = {line.split("`")[1]: line for line in doc.splitlines() if line.startswith("| `")}
    assert list(rows) == [field.name for field in config.FIELDS]
    for field in config.FIELDS:
        cells = [cell.strip() for cell in rows[field.name].split(" | ")]
        assert cells[1] == field.section
        assert cells[4] == ", ".join(f"`{name}`" for name in field.env_names)
        assert cells[5] == ("restart" if field.name in config.RESTART_ONLY else "reload")
    assert "`0.0.0.0 (packaged file: 127.0.0.1)`" in rows["host"]
    assert "`(none)`" in rows["api_keys"]  # never a secret's value, not even a default


def make_dry_run(*args: str) -> str:
    result = subprocess.run(["make", "-n", "-B", *args], capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_run_prints_a_command_that_works_and_takes_the_admin_port(daemon_factory):
    out = make_dry_run("run", "PORT=8555", "ADMIN_PORT=9555")
    assert "python -m websockets" not in out
    assert "connect: .venv/bin/websockets ws://127.0.0.1:8555/ws" in out
    assert "curl http://127.0.0.1:9555/metrics" in out
    assert re.search(r"twistd .*sscontrol-signaling --host 127\.0\.0\.1 --port 8555 --admin-port 9555$", out, re.M)
    # the printed client, as printed, talks to a daemon
    d = daemon_factory()
    client = subprocess.Popen([str(ROOT / ".venv" / "bin" / "websockets"), d.ws], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
    try:
        client.stdin.write('{"type": "join", "room_id": "demo"}\n')
        client.stdin.flush()
        seen = ""
        while '"type":"peers"' not in seen:  # the CLI prints each message it receives
            line = client.stdout.readline()
            assert line, seen
            seen += line
    finally:
        client.stdin.close()
        client.wait(10)


def test_make_installs_python_venv_when_missing():
    out = make_dry_run("venv")
    guard, _, install = out.partition("import ensurepip")
    assert install and "apt-get install" in install and "python3.11-venv" in install
    assert install.index("python3.11-venv") < install.index("-m venv .venv")


def test_release_notes_mark_breaking_changes():
    notes = (ROOT / "NEWS.md").read_text()
    changelog_version = (ROOT / "debian" / "changelog").read_text().split("(", 1)[1].split(")", 1)[0]
    assert f"\n## {changelog_version}\n" in notes
    latest = notes.split("\n## ")[1]
    assert latest.startswith("Unreleased") or latest.startswith(changelog_version)
    for change in ("api_key_file", "host = 127.0.0.1", "session_auth", "chmod go-w"):
        assert change in latest
    assert "**Breaking**" in latest
