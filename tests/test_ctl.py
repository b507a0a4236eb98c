"""sscontrol-signaling-ctl, run as the installed console script against real daemons:
what it prints must be what the daemon accepts (auth), answers (/turn) or refuses
(configuration), its errors are one line, and it never shows an API key or a TURN secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from certs import PKI
from conftest import ROOT, TWISTD, free_port, http_json
from sscontrold import config
from wsclient import RawPeer, connect

CTL = str(Path(sys.executable).with_name("sscontrol-signaling-ctl"))
PREFIX = "sscontrol-signaling-ctl: "
SHIPPED = str(ROOT / "etc" / "sscontrol" / "signaling.conf")

KEY = "ctl-test-api-key-Vb8q2LmZ"
OTHER_KEY = "ctl-test-api-key-other-Hs3p"
SECRET = "ctl-test-turn-secret-W4nR"
URIS = ["turn:127.0.0.1:3478?transport=udp", "turns:turn.example.com:5349?transport=tcp"]


@dataclass
class Result:
    code: int
    out: str
    err: str


def ctl(*args: str, env: dict | None = None, secrets: tuple[str, ...] = (KEY, OTHER_KEY, SECRET)) -> Result:
    """Run the console script with a clean environment (no settings of this machine or
    of the test run), and check what every run must honour."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("SSCONTROL_", "SIGNALING_"))
                and k not in ("TURN_PASSWORD", "REDIS_PASSWORD", "CREDENTIALS_DIRECTORY")}
    full_env["SSCONTROL_CONFIG"] = os.devnull  # never /etc/sscontrol/signaling.conf of the machine
    full_env.update(env or {})
    p = subprocess.run([CTL, *args], capture_output=True, text=True, timeout=30, env=full_env, cwd=str(ROOT))
    r = Result(p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in r.out + r.err, r
    for secret in secrets:
        assert secret not in r.out + r.err, f"a secret was printed by {args}"
    if r.code != 0:
        assert r.err.startswith(PREFIX) and r.err.count("\n") == 1, r
    return r


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def turn_conf(tmp_path: Path, ttl: int = 3600) -> str:
    secret_file = write(tmp_path / "turn_secrets", f"# current\n{SECRET}\nctl-test-turn-secret-old\n")
    return write(tmp_path / "turn.conf", f"[turn]\nturn_secret_file = {secret_file}\n"
                                         f"turn_uris = {' '.join(URIS)}\nturn_ttl = {ttl}\n"
                                         "turn_allow_anonymous = true\n")


def hmac_sha256_hex(key: str, msg: str) -> str:
    return hmac.new(key.encode(), msg.encode(), hashlib.sha256).hexdigest()


def turn_password(secret: str, username: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


# --- the command line


@pytest.mark.parametrize("command", ["", "check-config", "gen-key", "token", "turn-credentials", "health"])
def test_help_of_every_command(command):
    r = ctl(*filter(None, [command]), "--help")
    assert r.code == 0 and r.err == ""
    assert r.out.startswith(f"usage: sscontrol-signaling-ctl {command}".rstrip())
    if not command:
        for name in ("check-config", "gen-key", "token", "turn-credentials", "health"):
            assert name in r.out


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["gen-key", "--bytes", "8"],
    ["gen-key", "--bytes", "many"],
    ["gen-key", "surplus"],
    ["token"],
    ["token", "--device-id", ""],
    ["token", "--device-id", "d", "--api-key", KEY],  # the key itself is never an argument,
    ["token", "--device-id", "d", f"--api-key={KEY}"],  # not even echoed in the error
    ["token", "--device-id", "d", "--api", KEY],  # nor taken for --api-key-file
    ["turn-credentials", "--ttl", "5"],
    ["health", "--url", "ftp://127.0.0.1/ready"],
    ["health", "--timeout", "0"],
    ["health", "--cacert", "ca.pem", "--insecure"],
    ["check-config", "--no-such-option", "1"],
    ["check-config", "--api-keys", KEY],  # nor for the daemon
])
def test_usage_errors_exit_2_with_one_line(args):
    r = ctl(*args)
    assert r.code == 2 and r.out == ""
    assert "--help" in r.err  # points to the help


# --- check-config


def test_check_config_shipped_file():
    r = ctl("check-config", "--config", SHIPPED)
    assert r.code == 0 and r.err == ""
    # the packaged file listens on loopback only: nothing to warn about on a fresh install
    assert r.out == (f"configuration OK: file {SHIPPED}; listen 127.0.0.1:8443; TLS off; auth off; TURN off; "
                     "redis off; admin 127.0.0.1:9464\n")


def test_check_config_reads_file_env_credentials_and_flags(tmp_path):
    pki = PKI(tmp_path / "pki")
    chain, key, _ = pki.server()
    keys = write(tmp_path / "api_keys", f"{KEY}\n")
    creds = tmp_path / "credentials"
    creds.mkdir()
    write(creds / "turn_secrets", f"{SECRET}\n")
    write(creds / "api_keys", "ctl-test-credential-key\n")
    conf = write(tmp_path / "c.conf", f"[server]\nport = 9000\ntls_cert = {chain}\ntls_key = {key}\n"
                                      f"[auth]\napi_key_file = {keys}\n[turn]\nturn_uris = {' '.join(URIS)}\n")
    r = ctl("check-config", "--config", conf, "--admin-port", "9100", "--host=127.0.0.2",
            env={"SSCONTROL_API_KEY": OTHER_KEY, "CREDENTIALS_DIRECTORY": str(creds),
                 "SSCONTROL_REDIS_URL": "redis://:ctl-test-redis-pw@10.0.0.5:6380/1"},
            secrets=(KEY, OTHER_KEY, SECRET, "ctl-test-credential-key", "ctl-test-redis-pw"))
    assert r.code == 0, r
    assert r.out == (f"configuration OK: file {conf}; listen 127.0.0.2:9000; TLS on; auth on (3 API keys); "
                     "TURN on (1 secret, 2 URIs); redis on (10.0.0.5:6380); admin 127.0.0.1:9100\n")
    # SSCONTROL_CONFIG names the file when --config does not, as for the daemon
    r = ctl("check-config", env={"SSCONTROL_CONFIG": SHIPPED, "SSCONTROL_ADMIN_ENABLED": "false"})
    assert r.code == 0 and f"file {SHIPPED};" in r.out and r.out.endswith("admin off\n")


def daemon_refusal(*args: str, env: dict | None = None) -> str:
    """The daemon's own one-line error for the same settings (it exits before binding)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SSCONTROL_", "SIGNALING_"))}
    full_env.update({"SSCONTROL_CONFIG": os.devnull, **(env or {})})
    p = subprocess.run([TWISTD, "--nodaemon", "--pidfile=", "sscontrol-signaling", *args],
                       capture_output=True, text=True, timeout=30, env=full_env, cwd=str(ROOT))
    assert p.returncode != 0
    return p.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("text, key", [
    ("[limits]\nmax_peers_per_room = zero\n", "max_peers_per_room"),
    ("[server]\nfrobnicate = 1\n", "frobnicate"),
    ("[auth]\nport = 1\n", "port"),
    ("[auth]\napi_key_file = {tmp}/no-such-keys\n", "api_key_file"),
    ("[turn]\nturn_secret_file = {tmp}\nturn_uris = turn:t:3478\n", "turn_secret_file"),
    ("[server]\ntls_cert = {tmp}/no-such-cert.pem\ntls_key = {tmp}/no-such-key.pem\n", "tls_cert"),
    ("not an ini file\n", "config"),
])
def test_check_config_bad_file_is_the_daemons_error(tmp_path, text, key):
    conf = write(tmp_path / "bad.conf", text.format(tmp=tmp_path))
    r = ctl("check-config", "--config", conf)
    assert r.code == 1 and r.out == ""
    assert r.err.startswith(f"{PREFIX}invalid setting {key}") and (conf in r.err or str(tmp_path) in r.err)
    assert r.err.strip().removeprefix(PREFIX) == daemon_refusal("--config", conf).removeprefix("sscontrol-signaling: ")


def test_check_config_bad_secret_file_from_env_and_bad_flag(tmp_path):
    missing = str(tmp_path / "no-such-turn-secrets")
    r = ctl("check-config", env={"SSCONTROL_TURN_SECRET_FILE": missing, "SSCONTROL_TURN_URIS": "turn:t"})
    assert r.code == 1
    assert r.err.startswith(f"{PREFIX}invalid setting turn_secret_file from environment variable "
                            f"SSCONTROL_TURN_SECRET_FILE: cannot read {missing}: No such file or directory")
    r = ctl("check-config", "--config", SHIPPED, "--port", "70000")
    assert r.code == 1 and r.err.startswith(f"{PREFIX}invalid setting port from command line --port:")
    r = ctl("check-config", "--config", str(tmp_path / "absent.conf"))
    assert r.code == 1 and f"file {tmp_path / 'absent.conf'} does not exist" in r.err


# --- gen-key


def test_gen_key_is_random_url_safe_and_a_valid_setting():
    keys = [ctl("gen-key").out for _ in range(4)]
    assert len(set(keys)) == 4
    for key in keys:
        key = key.removesuffix("\n")
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key)
        assert len(base64.urlsafe_b64decode(key + "=")) == 32
        assert config.load({}, {"SSCONTROL_API_KEY": key}, os.devnull).api_keys == (key,)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}\n", ctl("gen-key", "--bytes", "16").out)
    assert re.fullmatch(r"[A-Za-z0-9_-]{86}\n", ctl("gen-key", "--bytes", "64").out)
    r = ctl("gen-key", "--bytes", "8")
    assert r.code == 2 and r.out == "" and "at least 16" in r.err


# --- token


def test_token_authenticates_once_over_the_websocket(daemon_factory, tmp_path):
    key = ctl("gen-key").out.strip()
    keyfile = write(tmp_path / "api_keys", f"{key}\n")
    d = daemon_factory("--api-key-file", keyfile)
    r = ctl("token", "--device-id", "ctl-device", "--api-key-file", keyfile, secrets=(key,))
    assert r.code == 0 and r.err == "" and r.out.count("\n") == 1
    message = json.loads(r.out)
    assert set(message) == {"type", "device_id", "timestamp", "nonce", "token"}  # no "api_key": ""
    assert (message["type"], message["device_id"]) == ("auth", "ctl-device")
    assert abs(message["timestamp"] - time.time()) < 5

    first = connect(d.ws)
    first.send(r.out.strip())  # exactly the printed line
    assert first.recv()["type"] == "auth_success"
    assert first.join("room-1")["type"] == "peers"  # authenticated for real
    replay = connect(d.ws)
    replay.send(r.out.strip())
    refused = replay.recv()
    assert refused["type"] == "error" and "nonce already used" in refused["message"]
    # a new token (a new nonce) is accepted
    again = connect(d.ws)
    again.send(ctl("token", "--device-id", "ctl-device", "--api-key-file", keyfile, secrets=(key,)).out)
    assert again.recv()["type"] == "auth_success"


def test_token_key_sources_in_order(tmp_path):
    fixed = ("--device-id", "dev-7", "--timestamp", "1700000000", "--nonce", "n-1")
    expected = hmac_sha256_hex(KEY, "dev-7:1700000000:n-1")
    keyfile = write(tmp_path / "keys", f"# rotated\n{KEY}\n{OTHER_KEY}\n")
    creds = tmp_path / "credentials"
    creds.mkdir()
    write(creds / "api_keys", f"{KEY}\n")
    conf = write(tmp_path / "c.conf", f"[auth]\napi_key_file = {keyfile}\n")
    runs = [
        ctl("token", *fixed, "--api-key-file", keyfile, env={"SSCONTROL_API_KEY": OTHER_KEY}),  # file first
        ctl("token", *fixed, env={"SSCONTROL_API_KEY": KEY}),
        ctl("token", *fixed, "--config", conf),
        ctl("token", *fixed, env={"CREDENTIALS_DIRECTORY": str(creds)}),
    ]
    for r in runs:
        assert r.code == 0, r
        assert json.loads(r.out) == {"type": "auth", "device_id": "dev-7",
                                     "timestamp": 1700000000, "nonce": "n-1", "token": expected}


def test_token_without_a_key_fails(tmp_path):
    r = ctl("token", "--device-id", "d")
    assert r.code == 1 and r.out == "" and "no API key" in r.err
    empty = write(tmp_path / "empty-keys", "# nothing yet\n\n")
    r = ctl("token", "--device-id", "d", "--api-key-file", empty)
    assert r.code == 1 and f"no API key in {empty}" in r.err
    missing = str(tmp_path / "missing-keys")
    r = ctl("token", "--device-id", "d", "--api-key-file", missing)
    assert r.code == 1 and "api_key_file" in r.err and missing in r.err
    bad = write(tmp_path / "bad.conf", "[auth]\nauth_window = soon\n")
    r = ctl("token", "--device-id", "d", "--config", bad)
    assert r.code == 1 and "auth_window" in r.err and bad in r.err


# --- turn-credentials


def test_turn_credentials_as_the_daemon_answers(daemon_factory, tmp_path):
    conf = turn_conf(tmp_path)
    before = int(time.time())
    r = ctl("turn-credentials", "--config", conf, "--user", "alice")
    after = int(time.time())
    assert r.code == 0 and r.err == "" and r.out.count("\n") == 1
    mine = json.loads(r.out)
    expiry, user = mine["username"].split(":")
    assert user == "alice" and before + 3600 <= int(expiry) <= after + 3600
    assert mine["password"] == turn_password(SECRET, mine["username"])  # the first secret signs
    assert (mine["ttl"], mine["uris"]) == (3600, URIS)
    assert mine["iceServers"] == [{"urls": URIS, "username": mine["username"], "credential": mine["password"]}]

    d = daemon_factory("--config", conf)
    status, theirs = http_json("GET", d.base + "/turn?username=alice")
    assert status == 200
    assert set(theirs) == set(mine) and (theirs["ttl"], theirs["uris"]) == (mine["ttl"], mine["uris"])
    assert re.fullmatch(r"\d+:alice", theirs["username"])
    assert abs(int(theirs["username"].split(":")[0]) - int(expiry)) <= 2
    assert theirs["password"] == turn_password(SECRET, theirs["username"])

    # the configured user and ttl by default, --ttl overriding
    r = ctl("turn-credentials", "--config", conf, "--ttl", "120")
    short = json.loads(r.out)
    assert short["ttl"] == 120 and short["username"].endswith(":sscontrol")
    assert int(short["username"].split(":")[0]) - time.time() <= 121
    assert short["password"] == turn_password(SECRET, short["username"])
    assert ctl("turn-credentials", "--config", conf, "--user", "a:b").code == 2


def test_turn_credentials_not_configured(tmp_path):
    r = ctl("turn-credentials")
    assert r.code == 1 and r.out == "" and "TURN is not configured" in r.err
    r = ctl("turn-credentials", "--config", SHIPPED)
    assert r.code == 1 and "TURN is not configured" in r.err and SHIPPED in r.err


# --- health


def test_health_of_a_live_daemon(daemon_factory, tmp_path):
    d = daemon_factory(env={"SSCONTROL_API_KEY": KEY, "SSCONTROL_TURN_SECRETS": SECRET,
                            "SSCONTROL_TURN_URIS": URIS[0]})
    r = ctl("health", "--url", d.admin + "/ready")
    assert r.code == 0 and r.err == ""
    assert json.loads(r.out)["status"] == "ready"
    r = ctl("health", "--url", d.admin + "/health", "--timeout", "3")
    assert r.code == 0 and json.loads(r.out)["status"] == "ok"


def test_health_finds_the_admin_listener_in_the_configuration(daemon_factory, tmp_path):
    d = daemon_factory()
    conf = write(tmp_path / "c.conf", f"[server]\nadmin_port = {d.admin_port}\n")
    for r in (ctl("health", "--config", conf), ctl("health", env={"SSCONTROL_CONFIG": conf}),
              ctl("health", env={"SSCONTROL_ADMIN_PORT": str(d.admin_port)})):
        assert r.code == 0 and json.loads(r.out)["status"] == "ready", r
    everywhere = write(tmp_path / "all.conf", f"[server]\nadmin_host = 0.0.0.0\nadmin_port = {d.admin_port}\n")
    assert ctl("health", "--config", everywhere).code == 0  # asked on loopback
    off = write(tmp_path / "off.conf", "[server]\nadmin_enabled = false\n")
    r = ctl("health", "--config", off)
    assert r.code == 1 and f"the admin listener is off (admin_enabled) in {off}" in r.err
    port = free_port()
    r = ctl("health", "--config", write(tmp_path / "none.conf", f"[server]\nadmin_port = {port}\n"))
    assert r.err == f"{PREFIX}http://127.0.0.1:{port}/ready: Connection refused\n"


def test_health_of_nothing_listening():
    url = f"http://127.0.0.1:{free_port()}/ready"
    r = ctl("health", "--url", url)
    assert r.code == 1 and r.out == ""
    assert r.err == f"{PREFIX}{url}: Connection refused\n"


def test_health_of_a_server_that_never_answers():
    with socket.socket() as silent:  # accepts connections (in the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/ready"
        started = time.monotonic()
        r = ctl("health", "--url", url, "--timeout", "0.5")
    assert r.code == 1 and r.err == f"{PREFIX}{url}: no answer within 0.5 s\n"
    assert time.monotonic() - started < 10


def test_health_of_a_draining_daemon_is_not_ready(daemon_factory):
    d = daemon_factory("--drain-timeout", "15")
    stubborn = RawPeer("127.0.0.1", d.port)  # ignores the close frame: keeps the drain going
    stubborn.send_json({"type": "join", "room_id": "r"})
    stubborn.recv_json()
    assert ctl("health", "--url", d.admin + "/ready").code == 0
    d.signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:
        r = ctl("health", "--url", d.admin + "/ready")
        if r.code != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.code == 1
    assert json.loads(r.out)["failing"] == ["draining"]  # the body is still printed
    assert r.err == f"{PREFIX}{d.admin}/ready: HTTP 503 (not ready: draining)\n"
    stubborn.drop()  # the last client gone, the drain ends
    assert d.proc.wait(10) in (0, -signal.SIGTERM)


def test_health_over_tls(daemon_factory, tmp_path):
    pki = PKI(tmp_path / "pki")
    chain, key, _ = pki.server()
    d = daemon_factory(env={"SSCONTROL_TLS_CERT": str(chain), "SSCONTROL_TLS_KEY": str(key)}, tls=True)
    r = ctl("health", "--url", d.base + "/health", "--cacert", str(pki.ca_path))
    assert r.code == 0 and json.loads(r.out)["status"] == "ok"
    r = ctl("health", "--url", d.base + "/health")  # the system's CAs do not know the test CA
    assert r.code == 1 and r.out == "" and ": TLS error: " in r.err
    assert ctl("health", "--url", d.base + "/health", "--insecure").code == 0
    r = ctl("health", "--url", d.base + "/health", "--cacert", str(tmp_path / "no-such-ca.pem"))
    assert r.code == 1 and "no-such-ca.pem" in r.err
