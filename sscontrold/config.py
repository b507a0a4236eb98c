"""Settings: built-in defaults < INI file < environment < command-line flags.

Pure: no Twisted import. ``load()`` returns one frozen ``Settings`` or raises
``ConfigError`` whose text is one line naming the key, where the bad value came
from and what is wrong with it (never the value of a secret).
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import ipaddress
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .domain.origins import parse_origins

DEFAULT_CONFIG_FILE = "/etc/sscontrol/signaling.conf"


class ConfigError(Exception):
    """A setting is invalid; ``str()`` is the one line shown to the operator."""


# --- value parsers: each takes the raw string and returns the value or raises ValueError


def _str(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _optional_str(raw: str) -> str | None:
    value = raw.strip()
    return value or None


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item for item in raw.replace(",", " ").split() if item)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise ValueError(f"expected a whole number {bound}")
        return value

    return parse


def _seconds(minimum: float = 0.0) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("expected a number of seconds") from None
        if not value >= minimum or value == float("inf"):
            raise ValueError(f"expected a number of seconds greater than or equal to {minimum:g}")
        return value

    return parse


def _rate(minimum: float, unit: str = "messages") -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a rate, in {unit} per second") from None
        if not value >= minimum or value == float("inf"):
            raise ValueError(f"expected a rate of at least {minimum:g} {unit} per second")
        return value

    return parse


def _log_level(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("debug", "info", "warn", "error", "critical"):
        raise ValueError("expected one of debug, info, warn, error, critical")
    return value


def _log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("text", "json"):
        raise ValueError("expected text or json")
    return value


@dataclass(frozen=True)
class Field:
    name: str
    section: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    env: tuple[str, ...] = ()  # legacy names, checked after SSCONTROL_<NAME>
    secret: bool = False
    # Taken only at start (a listening socket, the Redis link, a store sized once): a reload
    # that changes it keeps the running value and logs reload.restart_needed naming it.
    restart: bool = False

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")

    @property
    def env_names(self) -> tuple[str, ...]:
        own = "SSCONTROL_" + self.name.upper()
        return (own,) + tuple(name for name in self.env if name != own)


# The single table of settings: the INI file, the environment, the flags, --help and
# the shipped example all derive from it.
FIELDS: tuple[Field, ...] = (
    # [server]
    Field("host", "server", _str, "0.0.0.0", "Address the public listener binds.", ("SIGNALING_HOST",),  # nosec B104  # it serves remote peers; start-up warns when auth or TLS is off on it
          restart=True),
    Field("port", "server", _int_range(0, 65535), 8443, "Port of the public listener.", ("SIGNALING_PORT",),
          restart=True),
    Field("tls_cert", "server", _optional_str, None,
          "PEM file with the certificate and its chain (leaf first). Unset: plain ws://.",
          ("SSCONTROL_TLS_CERT",)),
    Field("tls_key", "server", _optional_str, None, "PEM file with the private key of tls_cert.",
          ("SSCONTROL_TLS_KEY",)),
    Field("reuse_port", "server", _bool, False,
          "Share the public port with the other sscontrold processes of this host (SO_REUSEPORT: "
          "the kernel spreads new connections among them), e.g. one template instance per core. "
          "Needs redis_url, so that peers on different processes meet.", restart=True),
    Field("admin_enabled", "server", _bool, True, "Serve /health /ready /live /metrics on the admin listener.",
          restart=True),
    Field("admin_host", "server", _str, "127.0.0.1", "Address of the admin listener (keep it on loopback).",
          restart=True),
    Field("admin_port", "server", _int_range(0, 65535), 9464, "Port of the admin listener.", restart=True),
    Field("drain_timeout", "server", _seconds(0), 10.0,
          "On SIGTERM, seconds to let clients go before the process exits (keep under TimeoutStopSec)."),
    Field("drain_reconnect_rate", "server", _rate(0, "connections"), 2000.0,
          "On SIGTERM, the clients are told to reconnect after a random delay (reconnect_in_ms) spread "
          "so that about this many come back per second: N connections get delays between 0 and "
          "N / drain_reconnect_rate seconds (60 at most). Set it near what a node admits per second. "
          "0: no delay, all at once."),
    Field("trusted_proxies", "server", _list, (),
          "Addresses of reverse proxies whose X-Forwarded-For names the client address."),
    Field("allowed_origins", "server", parse_origins, ("*",),
          "Web origins whose pages may open a WebSocket or call /api and /turn (a browser's Origin "
          "header), comma-separated: https://app.example.com, https://*.example.com (sub-domains), "
          "*.example.com (http and https), null. Others get 403 before the upgrade. The daemon's own "
          "pages are always allowed. The REST CORS answer uses the same list. *: any (the default)."),
    Field("connection_test_page", "server", _bool, True,
          "Serve GET /connection-test: a page that checks, in the user's browser, the WebSocket, auth, "
          "signaling, TURN credentials and a relayed connection through each TURN URI."),
    Field("require_origin", "server", _bool, False,
          "Refuse (403) WebSocket upgrades and API requests without an Origin header, i.e. every "
          "client but a browser. Off: native clients, which send none, are admitted."),
    Field("shortcuts", "server", _bool, True,
          "Use the daemon's shortcuts into Twisted's and Autobahn's internals (faster relaying; "
          "sscontrold/shortcuts/). Off: their public API wherever it does the same (the bounds that need "
          "internals stay), slower. A start-up check turns off, with a warning, any the installed versions "
          "do not support.", restart=True),
    # [auth]
    Field("api_keys", "auth", _list, (), "API keys accepted for HMAC auth (several for rotation; "
          "empty: auth off). Prefer api_key_file (re-read on every reload) or the systemd credential "
          "api_keys (read at start: restart to change).",
          ("SSCONTROL_API_KEY",), secret=True),
    Field("api_key_file", "auth", _optional_str, None, "File with one API key per line, added to api_keys. "
          "Re-read on every reload (rotation without a restart)."),
    Field("auth_window", "auth", _seconds(1), 300.0, "How old an auth timestamp may be, in seconds."),
    Field("auth_clock_skew", "auth", _seconds(0), 30.0, "How far in the future an auth timestamp may be."),
    Field("auth_timeout", "auth", _seconds(0.1), 10.0,
          "With auth on, close (1008) a connection not authenticated after this many seconds."),
    Field("device_allowlist", "auth", _list, (), "If set, only these device ids may authenticate."),
    Field("auth_failure_limit", "auth", _int_range(1), 10,
          "Failed authentications (WebSocket auth, /turn keys and tokens) one client address may make "
          "within auth_failure_window; then its attempts are refused unchecked (/turn: 429, WebSocket: "
          "close 1008) until the count has decayed."),
    Field("auth_failure_window", "auth", _seconds(1), 60.0,
          "Seconds over which auth_failure_limit failures are counted (they decay at limit/window per second)."),
    Field("auth_failure_log_per_minute", "auth", _int_range(1), 60,
          "Log lines of failed authentications per minute; the next line says how many were left out (suppressed=)."),
    Field("nonce_store_max", "auth", _int_range(1000), 1_000_000,
          "Most nonces remembered at once; when full, auth is refused rather than replay protection lost.",
          restart=True),
    # [limits]
    Field("max_message_bytes", "limits", _int_range(1024, 16 * 1024 * 1024), 65536,
          "Largest WebSocket message; a larger one closes the connection with 1009."),
    Field("max_frame_bytes", "limits", _int_range(1024, 16 * 1024 * 1024), 65536,
          "Largest WebSocket frame; a larger one closes the connection with 1009."),
    Field("max_sdp_bytes", "limits", _int_range(1), 60000, "Longest sdp field, in UTF-8 bytes."),
    Field("max_candidate_bytes", "limits", _int_range(1), 2048, "Longest ICE candidate field, in UTF-8 bytes."),
    Field("max_id_length", "limits", _int_range(1, 4096), 128,
          "Longest device_id, room_id, peer id, nonce or sdp_mid, in characters."),
    Field("rate_limit_per_second", "limits", _rate(0.01), 50.0, "Messages per second a connection may send."),
    Field("rate_limit_burst", "limits", _int_range(1), 200, "Messages a connection may send at once."),
    Field("rate_limit_strikes", "limits", _int_range(1), 50,
          "Refused messages in a row (each answered with an error) before the connection is closed with 1008."),
    Field("max_peers_per_room", "limits", _int_range(1), 16, "Peers in one room; the next join gets 'room full'."),
    Field("resume_grace", "limits", _seconds(0), 10.0,
          "Seconds a peer whose connection dropped keeps its place (and its messages) for a resume; "
          "its room sees peer_left only after that. 0: peer_left at once."),
    Field("resume_max_messages", "limits", _int_range(1), 256, "Messages held for a dropped peer."),
    Field("resume_max_bytes", "limits", _int_range(1024), 1024 * 1024, "Bytes held for a dropped peer."),
    Field("max_connections", "limits", _int_range(1), 16000, "WebSocket connections in total (503 at the handshake). "
          "Plus max_http_connections plus 64 (admin listener, Redis, files) it must stay within the "
          "process's open-file limit (LimitNOFILE), checked at start-up."),
    Field("max_connections_per_ip", "limits", _int_range(1), 100,
          "WebSocket connections from one client address (429 at the handshake)."),
    Field("max_http_connections", "limits", _int_range(1), 1000,
          "Connections on the public port not (yet) upgraded to a WebSocket (HTTP requests, "
          "handshakes in progress), counted from accept; past it a new one is closed at once. "
          "max_connections plus this plus 64 must stay within the open-file limit (LimitNOFILE)."),
    Field("max_http_connections_per_ip", "limits", _int_range(1), 50,
          "Connections not (yet) upgraded from one TCP address, counted from accept; past it a new "
          "one is closed at once (trusted_proxies are counted by X-Forwarded-For at the upgrade instead)."),
    Field("handshake_timeout", "limits", _seconds(0.1), 10.0,
          "Seconds a client has to send a whole HTTP request (a WebSocket handshake included), from "
          "its first byte (or the accept): a deadline, not reset by each byte; also the idle timeout "
          "of an HTTP connection between requests."),
    Field("max_queued_bytes", "limits", _int_range(65536), 1024 * 1024,
          "Bytes queued for a WebSocket peer that does not read them fast enough; past it the peer "
          "is closed with 1008."),
    # Autobahn schedules keepalive timers on whole seconds (rounding down), so a timeout
    # under 2 s could fire before a healthy peer's pong arrives.
    Field("ping_interval", "limits", _seconds(0), 30.0, "Seconds between WebSocket pings (0: off)."),
    Field("ping_timeout", "limits", _seconds(2), 15.0,
          "Seconds to wait for a pong before dropping the peer (at least 2)."),
    Field("overload_lag", "limits", _seconds(0), 0.25,
          "Admission control: when the event loop runs more than this many seconds behind (a timer "
          "due every 50 ms fires late), a new WebSocket upgrade gets 503 with Retry-After at once "
          "instead of queueing; established peers, REST and /health are served as usual. 0: off."),
    Field("overload_retry_after", "limits", _int_range(1, 3600), 2,
          "Seconds a client refused for overload is told to wait (Retry-After; clients add jitter)."),
    # [turn]
    Field("turn_secrets", "turn", _list, (), "coturn static-auth-secret values; the first signs, all are "
          "listed for rotation. Empty: /turn answers 404. Prefer turn_secret_file (re-read on every "
          "reload) or the credential turn_secrets (read at start: restart to change).", ("TURN_PASSWORD",),
          secret=True),
    Field("turn_secret_file", "turn", _optional_str, None, "File with one TURN secret per line, added to "
          "turn_secrets. Re-read on every reload (rotation without a restart)."),
    Field("turn_uris", "turn", _list, (), "TURN/STUN URIs handed to clients, e.g. "
          "turn:turn.example.com:3478?transport=udp turns:turn.example.com:5349?transport=tcp"),
    # 10 s, not more: the tests prove the refresh pushed at ~80 % of the TTL (and an ICE
    # restart after the first set expired) within seconds; production wants hours.
    Field("turn_ttl", "turn", _int_range(10, 7 * 86400), 86400,
          "Lifetime of TURN credentials, in seconds. A client that asked for them over the "
          "WebSocket gets fresh ones pushed at about 80 % of it (docs/turn-refresh.md)."),
    Field("turn_user", "turn", _str, "sscontrol", "User part of TURN usernames when the caller names none."),
    Field("turn_allow_anonymous", "turn", _bool, False,
          "Hand out TURN credentials to anyone while auth is off (api_keys empty). Off: a TURN secret "
          "without an API key is a configuration error, so a relay is never opened to the world by mistake."),
    # [sessions]
    Field("session_ttl", "sessions", _int_range(10), 300, "Default lifetime of a REST session, in seconds."),
    Field("session_ttl_max", "sessions", _int_range(10), 3600, "Longest REST session lifetime a client may ask for."),
    Field("session_max_attempts", "sessions", _int_range(1), 3,
          "GETs of a waiting session from addresses other than its creator's that are answered; "
          "the next one deletes it (enumeration guard)."),
    # Each session may hold up to ~400 KiB (bodies and candidate lists at their caps):
    # 2000 of them stay within the unit's MemoryMax.
    Field("session_max_count", "sessions", _int_range(1), 2000, "REST sessions held at once."),
    Field("session_max_per_address", "sessions", _int_range(1), 20,
          "Live REST sessions one client address may have created (over all nodes with Redis); the "
          "next create gets 429 with Retry-After, so a few addresses cannot fill session_max_count."),
    Field("session_body_max_bytes", "sessions", _int_range(1024), 65536,
          "Largest HTTP request body, on every path of both listeners (a larger Content-Length "
          "gets 413 before the body is read; a chunked body is cut at it)."),
    Field("session_rate_per_minute", "sessions", _int_range(1), 120,
          "REST requests per minute from one client address."),
    Field("cors_origins", "sessions", parse_origins, ("*",),
          "Deprecated: set allowed_origins, which drives the CORS answer too. Alone, it keeps its old "
          "meaning: the origins named in the CORS answer of the REST API and /turn, none refused."),
    Field("session_auth", "sessions", _bool, False,
          "Require 'Authorization: Bearer <API key>' on the REST session API. Off by default: the "
          "sscontrol REST clients send no credentials. Needs API keys."),
    # [redis]
    Field("redis_url", "redis", _optional_str, None,
          "redis:// or rediss:// URL (host, port, database) of the Redis that several nodes share. "
          "Unset: this node keeps its state in memory. Put the password in redis_password_file, "
          "REDIS_PASSWORD or the systemd credential redis_password, not in the URL.", restart=True),
    Field("redis_password", "redis", _optional_str, None, "Redis password (prefer redis_password_file).",
          ("REDIS_PASSWORD",), secret=True),
    Field("redis_password_file", "redis", _optional_str, None, "File whose first line is the Redis password. "
          "Re-read on every reload: a new password is used once Redis accepts it."),
    Field("redis_prefix", "redis", _str, "sscontrol:", "Prefix of every Redis key and channel of this cluster.",
          restart=True),
    Field("redis_timeout", "redis", _seconds(0.1), 2.0,
          "Seconds to wait for Redis before treating it as down (the node turns degraded); also how late a "
          "message to a peer on another node may arrive: later ones are dropped and their sender gets an error.",
          restart=True),
    Field("cluster_lease", "redis", _seconds(1), 5.0,
          "Seconds a node's membership outlives it without renewal: when a node dies, its members may resume "
          "on another node for resume_grace after that; the others send peer_left for the rest within about "
          "cluster_lease + resume_grace + 2 seconds.", restart=True),
    # [log]
    Field("log_level", "log", _log_level, "info", "Lowest level logged: debug, info, warn, error, critical."),
    Field("log_format", "log", _log_format, "text", "text (one line per event) or json."),
)

FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}

# Settings a reload does not apply (Field.restart): the listening sockets and what is built
# once at start (the Redis link, the nonce store). Every other setting is applied by a reload.
RESTART_ONLY = frozenset(f.name for f in FIELDS if f.restart)

# The text of the unit's SetCredential= fallback for a credential the operator did not
# provide (systemd/sscontrol-signaling.service): "none given", not "given but empty".
CREDENTIAL_PLACEHOLDER = "# none:"


@dataclass(frozen=True)
class ConfigWarning:
    """Something the operator should know at start (and that check-config prints):
    ``event`` is the log event's name, ``message`` one line without any secret."""

    event: str
    message: str

    def __str__(self) -> str:
        return self.message

# Secret settings may also be handed in as a systemd credential of the same name.
# The setting naming a file that holds more of each secret.
SECRET_FILE_KEYS = {"api_keys": "api_key_file", "turn_secrets": "turn_secret_file",
                    "redis_password": "redis_password_file"}  # nosec B105  # setting names, not secrets

if TYPE_CHECKING:
    class Settings:
        """What the type checker sees of the class built below from FIELDS: each setting
        is an attribute (Any, as the table's parsers return), plus what ``load()`` adds."""

        config_file: str | None
        warnings: tuple[ConfigWarning, ...]
        auth_enabled: bool
        tls_enabled: bool

        def __init__(self, **values: Any) -> None: ...
        def __getattr__(self, name: str) -> Any: ...
else:
    Settings = dataclasses.make_dataclass(
        "Settings",
        [(f.name, Any) for f in FIELDS] + [("config_file", Any, dataclasses.field(default=None)),
                                           ("warnings", Any, dataclasses.field(default=(), compare=False))],
        frozen=True,
    )
    Settings.__doc__ = "The daemon's effective settings (immutable; a reload builds a new one)."
    Settings.auth_enabled = property(lambda self: bool(self.api_keys))
    Settings.tls_enabled = property(lambda self: self.tls_cert is not None)
    Settings.__repr__ = lambda self: "Settings(%s)" % ", ".join(  # keep secrets out of any log line
        f"{f.name}={('<set>' if getattr(self, f.name) else '<unset>') if f.secret else repr(getattr(self, f.name))}"
        for f in FIELDS
    )


def _parse(field: Field, raw: str, source: str) -> Any:
    try:
        return field.parse(raw)
    except ValueError as e:
        shown = "" if field.secret else f", got {raw.strip()!r}"
        raise ConfigError(f"invalid setting {field.name} from {source}: {e}{shown}") from None


def _read_ini(path: str, explicit: bool) -> dict[str, tuple[str, str]]:
    """Raw values from the INI file: name -> (raw, source)."""
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"invalid setting config: file {path} does not exist") from None
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"invalid setting config: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    except configparser.Error as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"invalid setting config: {path} is not a valid INI file: {first}") from None
    values: dict[str, tuple[str, str]] = {}
    for section in parser.sections():
        for key, raw in parser.items(section):
            field = FIELDS_BY_NAME.get(key)
            source = f"{path} [{section}] {key}"
            if field is None:
                raise ConfigError(f"invalid setting {key} from {source}: unknown key{did_you_mean(key)}")
            if field.section != section:
                raise ConfigError(f"invalid setting {key} from {source}: belongs in section [{field.section}]")
            values[key] = (raw, source)
    return values


def did_you_mean(name: str, names=None) -> str:
    """", did you mean X?" for the closest known setting name, or ""."""
    close = difflib.get_close_matches(name.lower(), list(names or FIELDS_BY_NAME), n=1, cutoff=0.7)
    return f", did you mean {close[0]}?" if close else ""


def check_secret_file_mode(path: str, key: str, source: str, warnings: list | None = None) -> None:
    """Like OpenSSH's StrictModes: a secret file others may write is refused (someone could
    put their own key in), one every user may read is a warning; both name the chmod."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return  # reading it fails next, with the reason
    if mode & 0o022:
        raise ConfigError(f"invalid setting {key} from {source}: {path} is writable by "
                          f"{'group and others' if mode & 0o022 == 0o022 else 'group' if mode & 0o020 else 'others'}"
                          f" (mode {mode:04o}): run chmod go-w {path}")
    if mode & 0o004 and warnings is not None:
        warnings.append(ConfigWarning("config.secret_readable",
                                f"{key} file {path} is readable by every user (mode {mode:04o}): "
                                f"run chmod o-rwx {path}"))


def _read_secret_file(path: str, key: str, source: str, warnings: list | None = None) -> tuple[str, ...]:
    check_secret_file_mode(path, key, source, warnings)
    try:
        with open(path, encoding="utf-8") as f:
            return tuple(line.strip() for line in f if line.strip() and not line.lstrip().startswith("#"))
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"invalid setting {key} from {source}: cannot read {path}: {reason}") from None


def _is_placeholder(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().lstrip().startswith(CREDENTIAL_PLACEHOLDER)
    except (OSError, UnicodeDecodeError):
        return False


_WHAT = {"api_keys": "API key", "turn_secrets": "TURN secret", "redis_password": "Redis password"}  # nosec B105  # what each is called in messages


def load(
    flags: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
    open_files: int | None = None,
) -> Settings:
    """Build the settings from the file, the environment and the flags.

    ``flags`` maps setting names to the raw strings given on the command line.
    ``config_file`` is the --config flag; unset, SSCONTROL_CONFIG or the default
    path is used when it exists. ``open_files``: the process's open-file limit, which
    the connection limits must fit in (unchecked when None).
    """
    flags = dict(flags or {})
    environ = os.environ if environ is None else environ
    explicit = config_file is not None or "SSCONTROL_CONFIG" in environ
    path = config_file or environ.get("SSCONTROL_CONFIG") or DEFAULT_CONFIG_FILE

    raw: dict[str, tuple[str, str]] = _read_ini(path, explicit)
    for field in FIELDS:
        for env_name in field.env_names:
            if env_name in environ:
                raw[field.name] = (environ[env_name], f"environment variable {env_name}")
                break
    for name, value in flags.items():
        if name not in FIELDS_BY_NAME:
            raise ConfigError(f"invalid setting {name} from command line: unknown option")
        raw[name] = (value, f"command line --{FIELDS_BY_NAME[name].flag}")

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field in FIELDS:
        if field.name in raw:
            text, source = raw[field.name]
            values[field.name] = _parse(field, text, source)
            sources[field.name] = source
        else:
            values[field.name] = field.default
            sources[field.name] = "the built-in default"

    # Secrets may also come from files and from systemd credentials. Lists (API keys,
    # TURN secrets) take them all together, so a new key can be added before the old
    # one is removed; a single secret (the Redis password) takes the first source set.
    # A file or credential that is given but holds nothing is an error, never "auth off":
    # a half-done rotation must not open the door.
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    warnings: list[ConfigWarning] = []
    for field in FIELDS:
        if not field.secret:
            continue
        file_key = SECRET_FILE_KEYS[field.name]
        found: tuple[str, ...] = ()
        if values[file_key]:
            from_file = _read_secret_file(values[file_key], file_key, sources[file_key], warnings)
            if not from_file:
                raise ConfigError(f"invalid setting {file_key} from {sources[file_key]}: {values[file_key]} "
                                  f"holds no {_WHAT[field.name]} (only blank or comment lines): put one per "
                                  f"line, or unset {file_key}")
            found += from_file
        cred_path = os.path.join(credentials, field.name) if credentials else None
        if cred_path and os.path.exists(cred_path) and not _is_placeholder(cred_path):
            # systemd makes credentials readable by the service only: no mode check
            from_credential = _read_secret_file(cred_path, field.name, f"systemd credential {field.name}")
            if not from_credential:
                raise ConfigError(f"invalid setting {field.name} from systemd credential {field.name}: it holds "
                                  f"no {_WHAT[field.name]} (only blank or comment lines): put one per line, "
                                  "or remove the credential's file")
            found += from_credential
        if isinstance(field.default, tuple):
            values[field.name] = tuple(dict.fromkeys(tuple(values[field.name]) + found))  # no repeats
        elif values[field.name] is None and found:
            values[field.name] = found[0]

    # allowed_origins drives the CORS answer; cors_origins is its deprecated forerunner.
    if sources["allowed_origins"] != "the built-in default":
        if sources["cors_origins"] != "the built-in default" and values["cors_origins"] != values["allowed_origins"]:
            raise ConfigError(f"invalid setting cors_origins from {sources['cors_origins']}: deprecated, and "
                              f"allowed_origins is set too: keep only allowed_origins")
        values["cors_origins"] = values["allowed_origins"]

    _check_together(values, sources)
    if open_files is not None:
        _check_open_files(values, sources, open_files)
    if values["tls_key"]:
        check_secret_file_mode(values["tls_key"], "tls_key", sources["tls_key"], warnings)
    warnings += exposure_warnings(values)
    return Settings(**values, config_file=path if os.path.exists(path) else None, warnings=tuple(warnings))


def defaults() -> Settings:
    """The settings with every key at its built-in default (no file, no environment)."""
    return load({}, {}, os.devnull)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warnings(values: Mapping[str, Any]) -> list[ConfigWarning]:
    """What the start-up says about who can reach what. Reachable from other hosts: a
    non-loopback address, or a loopback one behind a proxy (trusted_proxies)."""
    host, port = values["host"], values["port"]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    exposed = not is_loopback(host) or bool(values["trusted_proxies"])
    out = []
    if exposed and not values["api_keys"]:
        out.append(ConfigWarning("startup.auth_off", f"auth is off (no API key) on {where}, reachable from other "
                                               "hosts: anyone may join rooms and relay signaling; "
                                               "set api_key_file, or bind host = 127.0.0.1"))
    if not is_loopback(host) and not values["tls_cert"] and not values["trusted_proxies"]:
        out.append(ConfigWarning("startup.tls_off", f"TLS is off on {where} and no trusted_proxies terminates it: "
                                              "signaling and credentials cross the network in clear; "
                                              "set tls_cert and tls_key, or put a TLS proxy in front"))
    if exposed and not values["session_auth"]:
        out.append(ConfigWarning("startup.sessions_open", f"the REST session API (/api/session) on {where} takes "
                                                    "requests without credentials (the sscontrol REST clients "
                                                    "send none); set session_auth = true if yours send "
                                                    "'Authorization: Bearer <API key>'"))
    return out


def _check_together(values: dict[str, Any], sources: dict[str, str]) -> None:
    def fail(key: str, why: str) -> None:
        raise ConfigError(f"invalid setting {key} from {sources[key]}: {why}")

    url = values["redis_url"]
    if url is not None:
        from urllib.parse import urlsplit
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises on a bad port)
        except ValueError as e:
            fail("redis_url", f"not a URL: {e}")
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            fail("redis_url", "expected redis://HOST[:PORT][/DB] or rediss://...")
        if parts.path not in ("", "/") and not parts.path.lstrip("/").isdigit():
            fail("redis_url", "the path must be a database number")
        if parts.password and sources["redis_url"].startswith("command line"):
            fail("redis_url", "a password on the command line is visible to every user: "
                              "use redis_password_file or the systemd credential redis_password")

    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        missing = "tls_key" if values["tls_cert"] else "tls_cert"
        present = "tls_cert" if missing == "tls_key" else "tls_key"
        fail(present, f"{missing} must be set too")
    if values["max_frame_bytes"] > values["max_message_bytes"]:
        fail("max_frame_bytes", "must not exceed max_message_bytes")
    if values["max_sdp_bytes"] > values["max_message_bytes"]:
        fail("max_sdp_bytes", "must not exceed max_message_bytes")
    if values["session_ttl"] > values["session_ttl_max"]:
        fail("session_ttl", "must not exceed session_ttl_max")
    if values["turn_secrets"] and not values["turn_uris"]:
        fail("turn_uris", "must be set when TURN secrets are configured")
    if values["turn_secrets"] and not values["api_keys"] and not values["turn_allow_anonymous"]:
        key, source = "turn_secrets", sources["turn_secrets"]
        if source == "the built-in default":  # the secrets came from a file or a credential
            if values["turn_secret_file"] is not None:
                key, source = "turn_secret_file", sources["turn_secret_file"]
            else:
                source = "systemd credential turn_secrets"
        raise ConfigError(f"invalid setting {key} from {source}: TURN secrets with auth off (api_keys "
                          "empty) would give TURN credentials to anyone: set api_keys (or api_key_file), "
                          "or turn_allow_anonymous = true to mean it")
    if values["reuse_port"] and not values["redis_url"]:
        fail("reuse_port", "needs redis_url: processes sharing a port must share their rooms")
    if values["session_auth"] and not values["api_keys"]:
        fail("session_auth", "needs API keys (api_key_file, api_keys or the credential api_keys)")
    if values["admin_enabled"] and values["admin_port"] == values["port"] and values["port"] != 0:
        fail("admin_port", "must differ from port")


# Descriptors besides the public connections: the listeners, the admin listener's
# connections (a scraper, a health check), Redis, the log and the files read on reload.
FD_HEADROOM = 64


def _check_open_files(values: dict[str, Any], sources: dict[str, str], open_files: int) -> None:
    """Every connection the limits let in must get a descriptor: past the open-file
    limit, accept() fails for everyone (the admin listener and Redis included)."""
    need = values["max_connections"] + values["max_http_connections"] + FD_HEADROOM
    if need > open_files:
        default = "the built-in default"
        key = ("max_http_connections" if sources["max_connections"] == default
               and sources["max_http_connections"] != default else "max_connections")
        raise ConfigError(
            f"invalid setting {key} from {sources[key]}: max_connections ({values['max_connections']}) + "
            f"max_http_connections ({values['max_http_connections']}) + {FD_HEADROOM} for the listeners "
            f"and Redis = {need} descriptors, more than the open-file limit of this process ({open_files}, "
            f"RLIMIT_NOFILE: LimitNOFILE= in the unit): lower them or raise the limit")

# What the packaged configuration sets, away from the built-in defaults: a fresh install
# listens on loopback only, so it is never open to the network before an API key is set.
SHIPPED_VALUES = {"host": "127.0.0.1"}


def example_file() -> str:
    """The documented example configuration, generated from FIELDS."""
    lines = [
        "# sscontrol-signaling configuration.",
        "# Precedence: built-in defaults < this file < environment (SSCONTROL_<KEY>) < flags.",
        "# Every key is shown with its default, commented out; the few set here are marked.",
        "# Keys marked (restart) take effect on `systemctl restart`, the others on `systemctl reload`.",
    ]
    section = None
    for field in FIELDS:
        if field.section != section:
            section = field.section
            lines += ["", f"[{section}]"]
        envs = ", ".join(field.env_names)
        restart = " (restart)" if field.restart else ""
        lines.append(f"# {field.help} (environment: {envs}){restart}")
        lines.append(f"#{field.name} = {default_text(field.default)}")
        if field.name in SHIPPED_VALUES:
            lines.append("# Set by the package: loopback only; once API keys are set, the address to serve on "
                         "(docs/operations/deployment.md).")
            lines.append(f"{field.name} = {SHIPPED_VALUES[field.name]}")
    return "\n".join(lines) + "\n"


def default_text(default: Any) -> str:
    """A default as it is written in the INI file."""
    if isinstance(default, tuple):
        return ", ".join(default)
    if isinstance(default, bool):
        return "true" if default else "false"
    if default is None:
        return ""
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def _type_text(field: Field) -> str:
    default = field.default
    name = getattr(field.parse, "__qualname__", "")
    if field.secret:
        return "secret list" if isinstance(default, tuple) else "secret"
    if isinstance(default, bool):
        return "boolean"
    if isinstance(default, tuple):
        return "list"
    if name.startswith("_seconds"):
        return "seconds"
    if name.startswith("_rate"):
        return "rate"
    if name.startswith("_int_range"):
        return "integer"
    if field.parse in (_log_level, _log_format):
        return "choice"
    if name.endswith("_optional_str") and field.name.endswith(("_file", "_cert", "_key")):
        return "path"
    return "string"


def reference_table() -> str:
    """docs/configuration.md's table, generated from FIELDS (a test keeps them equal)."""
    lines = ["| key | section | type | default | environment | applied by | what |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for field in FIELDS:
        default = "(none)" if field.secret else (
            default_text(field.default) or ("(empty)" if isinstance(field.default, tuple) else "(unset)"))
        if field.name in SHIPPED_VALUES:
            default += f" (packaged file: {SHIPPED_VALUES[field.name]})"
        envs = ", ".join(f"`{name}`" for name in field.env_names)
        applied = "restart" if field.restart else "reload"
        what = field.help.replace("|", "\\|")
        lines.append(f"| `{field.name}` | {field.section} | {_type_text(field)} | `{default}` | {envs} | "
                     f"{applied} | {what} |")
    return "\n".join(lines) + "\n"


REFERENCE_BEGIN = "<!-- settings table: generated from sscontrold/config.py FIELDS, do not edit -->"
REFERENCE_END = "<!-- end of settings table -->"


def with_reference_table(doc: str) -> str:
    """``doc`` with the text between the two markers replaced by ``reference_table()``."""
    head, sep, rest = doc.partition(REFERENCE_BEGIN)
    _, sep2, tail = rest.partition(REFERENCE_END)
    if not sep or not sep2:
        raise ValueError("the settings table markers are missing")
    return f"{head}{REFERENCE_BEGIN}\n{reference_table()}{REFERENCE_END}{tail}"


if __name__ == "__main__":  # python -m sscontrold.config: regenerate the derived files
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    doc_path = os.path.join(root, "docs", "configuration.md")
    with open(doc_path, encoding="utf-8") as f:
        updated = with_reference_table(f.read())
    with open(doc_path, "w", encoding="utf-8") as f:
        f.write(updated)
    with open(os.path.join(root, "etc", "sscontrol", "signaling.conf"), "w", encoding="utf-8") as f:
        f.write(example_file())
    print("regenerated docs/configuration.md and etc/sscontrol/signaling.conf", file=sys.stderr)
