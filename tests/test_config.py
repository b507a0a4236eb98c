"""Settings: precedence, secret sources, and one-line errors that name the key and
where the value came from."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import ROOT, TWISTD
from sscontrold import config
from sscontrold.config import ConfigError, load
from test_tls import run_refused


def write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults():
    s = load({}, {}, os.devnull)
    assert (s.host, s.port, s.api_keys, s.auth_enabled, s.tls_enabled) == ("0.0.0.0", 8443, (), False, False)
    assert s.max_message_bytes == 65536 and s.max_peers_per_room == 16


def test_precedence_file_env_flags(tmp_path):
    path = write(tmp_path / "c.conf", "[server]\nport = 1000\nhost = 10.0.0.1\n[limits]\nmax_peers_per_room = 3\n")
    s = load({}, {}, path)
    assert (s.port, s.host, s.max_peers_per_room) == (1000, "10.0.0.1", 3)
    s = load({}, {"SIGNALING_PORT": "2000", "SSCONTROL_MAX_PEERS_PER_ROOM": "4"}, path)
    assert (s.port, s.host, s.max_peers_per_room) == (2000, "10.0.0.1", 4)
    s = load({"port": "3000"}, {"SIGNALING_PORT": "2000"}, path)
    assert s.port == 3000
    # SSCONTROL_<KEY> wins over the legacy name when both are set
    assert load({}, {"SSCONTROL_PORT": "5", "SIGNALING_PORT": "6"}, os.devnull).port == 5


def test_config_file_from_environment_and_default(tmp_path, monkeypatch):
    path = write(tmp_path / "c.conf", "[server]\nport = 1234\n")
    assert load({}, {"SSCONTROL_CONFIG": path}).port == 1234
    monkeypatch.setattr(config, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent.conf"))
    assert load({}, {}).port == 8443  # the default file is optional
    with pytest.raises(ConfigError, match="does not exist"):
        load({}, {}, str(tmp_path / "absent.conf"))  # a named one is not


def test_api_keys_from_env_file_and_systemd_credentials(tmp_path):
    keyfile = write(tmp_path / "keys", "# rotated 2026-11\nkey-b\n\nkey-c\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "api_keys", "key-d\nkey-a\n")
    write(creds / "turn_secrets", "turn-1\n")
    s = load({"api_key_file": keyfile}, {"SSCONTROL_API_KEY": "key-a", "CREDENTIALS_DIRECTORY": str(creds),
                                          "SSCONTROL_TURN_URIS": "turn:t:3478"}, os.devnull)
    assert s.api_keys == ("key-a", "key-b", "key-c", "key-d")
    assert s.turn_secrets == ("turn-1",) and s.auth_enabled
    assert "key-a" not in repr(s) and "turn-1" not in repr(s)


@pytest.mark.parametrize("source, expected", [
    (({}, {"SIGNALING_PORT": "abc"}), "invalid setting port from environment variable SIGNALING_PORT: "
                                      "expected a whole number, got 'abc'"),
    (({"port": "70000"}, {}), "invalid setting port from command line --port: expected a whole number "
                              "from 0 to 65535, got '70000'"),
    (({"rate_limit_per_second": "fast"}, {}), "invalid setting rate_limit_per_second from command line "
                                              "--rate-limit-per-second: expected a rate, in messages per second"),
    (({"rate_limit_per_second": "0"}, {}), "invalid setting rate_limit_per_second from command line "
                                           "--rate-limit-per-second: expected a rate of at least 0.01 "
                                           "messages per second, got '0'"),
    (({"admin_enabled": "maybe"}, {}), "expected true or false"),
    (({"log_level": "loud"}, {}), "invalid setting log_level"),
    (({"max_frame_bytes": "100000"}, {}), "invalid setting max_frame_bytes from command line --max-frame-bytes: "
                                          "must not exceed max_message_bytes"),
    (({}, {"SSCONTROL_TURN_SECRETS": "s"}), "invalid setting turn_uris from the built-in default: must be set"),
    (({"redis_url": "redis://:hunter2@127.0.0.1:6379"}, {}), "invalid setting redis_url from command line "
                                                           "--redis-url: a password on the command line"),
    (({"redis_url": "http://127.0.0.1"}, {}), "expected redis://HOST"),
    (({"api_key_file": "/nonexistent/keys"}, {}), "invalid setting api_key_file from command line --api-key-file: "
                                                  "cannot read /nonexistent/keys"),
])
def test_errors_name_key_source_and_problem(source, expected):
    flags, env = source
    with pytest.raises(ConfigError) as e:
        load(flags, env, os.devnull)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_file_errors_name_the_file_section_and_key(tmp_path):
    path = write(tmp_path / "c.conf", "[limits]\nmax_peers_per_room = many\n")
    with pytest.raises(ConfigError, match=rf"max_peers_per_room from {path} \[limits\] max_peers_per_room"):
        load({}, {}, path)
    path = write(tmp_path / "d.conf", "[limits]\nmax_peers = 3\n")
    with pytest.raises(ConfigError, match="max_peers .*unknown key"):
        load({}, {}, path)
    path = write(tmp_path / "e.conf", "[server]\nmax_peers_per_room = 3\n")
    with pytest.raises(ConfigError, match=r"belongs in section \[limits\]"):
        load({}, {}, path)
    path = write(tmp_path / "f.conf", "port = 3\n")
    with pytest.raises(ConfigError, match="not a valid INI file"):
        load({}, {}, path)


def test_secret_values_never_in_errors():
    with pytest.raises(ConfigError) as e:
        load({}, {"SSCONTROL_TURN_SECRETS": "hunter2-secret"}, os.devnull)
    assert "hunter2" not in str(e.value)


def test_shipped_example_documents_every_key_and_parses(tmp_path):
    shipped = (ROOT / "etc/sscontrol/signaling.conf").read_text()
    assert shipped == config.example_file(), "regenerate etc/sscontrol/signaling.conf from config.example_file()"
    for field in config.FIELDS:
        assert f"#{field.name} = " in shipped
    # uncommented, every default parses back to itself (the keys the package sets give way)
    uncommented = tmp_path / "uncommented.conf"
    uncommented.write_text("\n".join(line[1:] if line.startswith("#") and " = " in line else line
                                     for line in shipped.splitlines()
                                     if line.partition(" = ")[0] not in config.SHIPPED_VALUES))
    from_file, defaults = load({}, {}, str(uncommented)), load({}, {}, os.devnull)
    for field in config.FIELDS:
        assert getattr(from_file, field.name) == getattr(defaults, field.name), field.name
    # as shipped: loopback only, so a fresh install is not open to the network
    packaged = load({}, {}, str(ROOT / "etc/sscontrol/signaling.conf"))
    assert packaged.host == "127.0.0.1" and packaged.warnings == ()
    for field in config.FIELDS:  # which keys take a restart, said next to each
        comment = shipped.split(f"\n#{field.name} = ")[0].rsplit("\n", 1)[1]
        assert comment.endswith("(restart)") == (field.name in config.RESTART_ONLY), field.name


@pytest.mark.process  # runs twistd
def test_help_documents_every_option():
    result = subprocess.run([TWISTD, "sscontrol-signaling", "--help"], capture_output=True, text=True,
                            cwd=str(ROOT), timeout=30)
    assert result.returncode == 0
    # each option's block: its line and the wrapped lines under it, joined
    blocks: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if line.lstrip().startswith("-"):
            flag, _, text = line.strip().partition("=")
            blocks[flag.split()[-1]] = text
        elif line.startswith(" ") and blocks:
            blocks[next(reversed(blocks))] += " " + line.strip()
    blocks = {flag: " ".join(text.split()) for flag, text in blocks.items()}
    for field in config.FIELDS:
        if field.secret:
            assert f"--{field.flag}" not in blocks  # secrets never on argv
            continue
        text = blocks[f"--{field.flag}"]
        # the table's help and default, and whether a reload applies it (usage wraps lines
        # at spaces and after hyphens: compare without the white space)
        assert "".join(text.split()).startswith("".join(field.help.split())), field.name
        default = config.default_text(field.default) or ("(none)" if isinstance(field.default, tuple) else "(unset)")
        assert f"[default: {default}]" in text, (field.name, text)
        assert text.endswith("[restart only]") == field.restart, field.name
    assert "--config" in blocks


@pytest.mark.process  # runs twistd
def test_bad_value_exits_with_one_line_before_binding():
    result = run_refused(env={"SIGNALING_PORT": "abc"})
    assert result.returncode != 0
    assert result.stderr.strip() == ("sscontrol-signaling: invalid setting port from environment variable "
                                     "SIGNALING_PORT: expected a whole number, got 'abc'")
    result = run_refused("--max-peers-per-room", "0")
    assert result.returncode != 0 and "max_peers_per_room" in result.stderr and len(
        result.stderr.strip().splitlines()) == 1


def test_domain_limits_take_every_setting_from_the_table():
    """config.FIELDS is the only source of a default: the domain's limits have none of
    their own, and built from the defaults they hold the table's values."""
    import dataclasses

    from sscontrold import policies
    from sscontrold.domain.auth import AuthPolicy
    from sscontrold.domain.client import MessageLimits
    from sscontrold.domain.rooms import HoldLimits
    from sscontrold.domain.sessions import SessionLimits

    # fixed bounds of the REST session format, not settings
    format_bounds = {"max_candidates", "max_public_key_bytes", "max_pin_hash_bytes"}
    for cls in (AuthPolicy, MessageLimits, HoldLimits, SessionLimits):
        for field in dataclasses.fields(cls):
            if field.name not in format_bounds:
                assert field.default is dataclasses.MISSING, f"{cls.__name__}.{field.name} restates a default"
    defaults = config.defaults()
    assert policies.message_limits(defaults).rate_per_second == config.FIELDS_BY_NAME["rate_limit_per_second"].default
    assert policies.hold_limits(defaults).grace == config.FIELDS_BY_NAME["resume_grace"].default
    assert policies.session_limits(defaults).ttl_max == config.FIELDS_BY_NAME["session_ttl_max"].default
    assert policies.auth_policy(defaults).window == config.FIELDS_BY_NAME["auth_window"].default


def test_setup_cfg_lists_every_package_the_daemon_has():
    """The .deb installs what setup.cfg names (packages are listed, not found): a package
    left out works in the editable development venv and is missing from the package."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    present = {".".join(d.relative_to(ROOT).parts) for d in (ROOT / "sscontrold").rglob("*")
               if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))}
    assert present | {"sscontrold"} <= listed, sorted(present - listed)
