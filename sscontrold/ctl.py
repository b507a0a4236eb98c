"""sscontrol-signaling-ctl: operator commands for the signaling daemon.

Every command reuses the daemon's own code (option parsing and validation, the
settings loader, the auth HMAC, the TURN credentials), so what it prints is what
the daemon would accept or answer. Exit status: 0 ok, 1 failure, 2 usage error;
an error is one line on stderr. A secret is printed only by the commands whose
purpose is to print one (gen-key, token), and an API key or TURN secret never.

Twisted and the daemon's modules are imported by the commands that need them,
so gen-key and health start fast and work even where they would not import.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from urllib.parse import urlsplit

from . import __version__, config
from .config import ConfigError
from .domain.auth import compute_token  # the formula the daemon verifies

PROG = "sscontrol-signaling-ctl"
DEFAULT_HEALTH_URL = "http://127.0.0.1:9464/ready"  # the admin listener's defaults
MIN_KEY_BYTES = 16


class CtlError(Exception):
    """A failure reported as one line on stderr; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse would print the whole usage block; an error stays one line.
        raise CtlError(f"{message} (see '{self.prog} --help')", 2)


def _arg(parse):
    """An argparse type from one of config's parsers (raw string -> value, or ValueError),
    so an argument is checked exactly as the setting of the same meaning is."""

    def convert(raw: str):
        try:
            return parse(raw)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = "value"  # argparse names the type in its messages
    return convert


def _load(config_file: str | None):
    """The daemon's settings, from the same sources the daemon reads."""
    try:
        return config.load({}, os.environ, config_file)
    except ConfigError as e:
        raise CtlError(str(e)) from None


# --- check-config


def check_config(args) -> int:
    from twisted.python import usage

    from . import tap  # the daemon's own Options: the same flags, sources and checks

    argv = (["--config", args.config] if args.config else []) + args.daemon_options
    options = tap.Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:  # e.g. an unknown option
        args.parser.error(str(e))
    except SystemExit as e:  # postOptions exits with the daemon's one-line error
        if e.code in (0, None):  # --version was printed
            return 0
        raise CtlError(str(e.code).removeprefix("sscontrol-signaling: ")) from None
    print(_summary(options.settings))
    for warning in options.settings.warnings:  # what the daemon logs at start, one line each
        print(f"{PROG}: warning: {warning.event}: {warning.message}", file=sys.stderr)
    from . import shortcuts

    missing = shortcuts.check()
    if missing:
        print(f"{PROG}: warning: startup.shortcuts_unavailable: {shortcuts.WARNING} (missing: {', '.join(missing)})",
              file=sys.stderr)
    return 0


def _summary(s) -> str:
    """One line, without a secret: how many keys, never which."""
    def address(host: str, port: int) -> str:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def count(n: int, what: str) -> str:
        return f"{n} {what}{'' if n == 1 else 's'}"

    auth = f"on ({count(len(s.api_keys), 'API key')})" if s.auth_enabled else "off"
    turn = (f"on ({count(len(s.turn_secrets), 'secret')}, {count(len(s.turn_uris), 'URI')})"
            if s.turn_secrets else "off")
    # host[:port] as written, without any user:password@ part
    redis = f"on ({urlsplit(s.redis_url).netloc.rpartition('@')[2]})" if s.redis_url else "off"
    admin = address(s.admin_host, s.admin_port) if s.admin_enabled else "off"
    return (f"configuration OK: file {s.config_file or '(none)'}; listen {address(s.host, s.port)}; "
            f"TLS {'on' if s.tls_enabled else 'off'}; auth {auth}; TURN {turn}; redis {redis}; admin {admin}")


# --- gen-key


def gen_key(args) -> int:
    # URL-safe base64 has no ',', whitespace or '#', so the key fits in an api_keys
    # list and on a line of a secret file as is.
    print(secrets.token_urlsafe(args.bytes))
    return 0


# --- token


def token(args) -> int:
    key = _api_key(args)
    timestamp = int(time.time()) if args.timestamp is None else args.timestamp
    nonce = args.nonce if args.nonce is not None else secrets.token_hex(16)
    # No api_key field: the protocol allows it empty or absent, and the token proves the key.
    message = {"type": "auth", "device_id": args.device_id, "timestamp": timestamp, "nonce": nonce,
               "token": compute_token(key, args.device_id, timestamp, nonce)}
    print(json.dumps(message))
    return 0


def _api_key(args) -> str:
    """The first API key of --api-key-file, else of $SSCONTROL_API_KEY, else of the
    daemon's settings; each read as the daemon reads it."""
    if args.api_key_file is not None:
        try:
            keys = config._read_secret_file(args.api_key_file, "api_key_file", "command line --api-key-file")
        except ConfigError as e:
            raise CtlError(str(e)) from None
        where = args.api_key_file
    elif os.environ.get("SSCONTROL_API_KEY", "").strip():
        keys = config.FIELDS_BY_NAME["api_keys"].parse(os.environ["SSCONTROL_API_KEY"])
        where = "SSCONTROL_API_KEY"
    else:
        settings = _load(args.config)
        keys = settings.api_keys
        where = f"the configuration ({settings.config_file or 'no config file'}, environment, credentials)"
    if not keys:
        raise CtlError(f"no API key in {where}: give --api-key-file, set SSCONTROL_API_KEY "
                       "or configure api_keys / api_key_file")
    return keys[0]


# --- turn-credentials


def turn_credentials(args) -> int:
    from .turn import NOT_CONFIGURED, issue_credentials, pick_user  # what /turn answers with

    settings = _load(args.config)
    if not settings.turn_secrets:
        raise CtlError(f"{NOT_CONFIGURED} in {settings.config_file or 'no config file'}, the environment "
                       "or the credentials: set turn_secrets, turn_secret_file or the credential turn_secrets")
    try:
        user = pick_user(settings, requested=args.user)
    except ValueError as e:
        args.parser.error(f"argument --user: {e}")
    ttl = settings.turn_ttl if args.ttl is None else args.ttl
    print(json.dumps(issue_credentials(settings.turn_secrets[0], user, ttl, settings.turn_uris, time.time())))
    return 0


# --- health


def health(args) -> int:
    if args.url is None:
        args.url = _admin_url(args)
    context = None
    if urlsplit(args.url).scheme == "https":
        try:
            context = ssl.create_default_context(cafile=args.cacert)
        except (OSError, ssl.SSLError) as e:
            raise CtlError(f"cannot read --cacert {args.cacert}: {getattr(e, 'strerror', None) or e}") from None
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    # A probe of a local listener must not go through an HTTP proxy named in the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(args.url, timeout=args.timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:  # 4xx/5xx: still an answer, with a body to show
        status, body = e.code, e.read()
    except (urllib.error.URLError, HTTPException, OSError) as e:
        raise CtlError(f"{args.url}: {_reason(e, args.timeout)}") from None
    text = body.decode("utf-8", "replace").strip()
    if text:
        print(text)
    if status != 200:
        raise CtlError(f"{args.url}: HTTP {status}{_failing(text)}")
    return 0


def _admin_url(args) -> str:
    """/ready of the admin listener the daemon's configuration names."""
    return _admin_base(args) + "/ready"


def _admin_base(args) -> str:
    """The admin listener the daemon's configuration names, as a base URL."""
    settings = _load(args.config)
    where = settings.config_file or "no config file"
    if not settings.admin_enabled:
        raise CtlError(f"the admin listener is off (admin_enabled) in {where}, the environment or the "
                       "flags: give --url, e.g. http://127.0.0.1:8443/health")
    host = settings.admin_host
    if host in ("0.0.0.0", "::", ""):  # nosec B104  # every address: ask loopback (compared, never bound)
        host = "::1" if host == "::" else "127.0.0.1"
    return f"http://[{host}]:{settings.admin_port}" if ":" in host else f"http://{host}:{settings.admin_port}"


def _reason(error: Exception, timeout: float) -> str:
    """Why no answer came, in a few words."""
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, Exception) else Exception(error.reason)
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS error: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"TLS error: {error.reason or error}"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _failing(text: str) -> str:
    """The checks /ready names as failing, if the body is its JSON."""
    try:
        failing = json.loads(text).get("failing")
    except (ValueError, AttributeError):
        return ""
    return f" (not ready: {', '.join(map(str, failing))})" if isinstance(failing, list) and failing else ""


def _health_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    return raw


# --- rooms, peers, kick, close-room, drain: the admin listener's actions (docs/cluster-admin.md)

DEFAULT_ADMIN_URL = "http://127.0.0.1:9464"


def _admin(args, method: str, path: str, body: dict | None = None) -> int:
    """One request to the admin listener; print its JSON; exit 0 only on 200."""
    url = (args.admin_url or _admin_base(args)).rstrip("/") + path
    data = None if body is None else json.dumps(body).encode()
    who = os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid())
    headers = {"X-Sscontrol-Actor": f"ctl user={who}"}  # the daemon's audit event names it
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=args.timeout) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    except (urllib.error.URLError, HTTPException, OSError) as e:
        raise CtlError(f"{url}: {_reason(e, args.timeout)}") from None
    try:
        answer = json.loads(text)
    except ValueError:
        raise CtlError(f"{url}: HTTP {status}, not JSON") from None
    if status != 200:
        raise CtlError(f"{answer.get('error', 'failed') if isinstance(answer, dict) else 'failed'} (HTTP {status})")
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    return 0


def rooms(args) -> int:
    return _admin(args, "GET", "/rooms")


def peers(args) -> int:
    return _admin(args, "GET", "/peers?" + urllib.parse.urlencode({"room": args.room}))


def kick(args) -> int:
    return _admin(args, "POST", "/kick", {"peer_id": args.peer, "reason": args.reason})


def close_room(args) -> int:
    return _admin(args, "POST", "/close-room", {"room_id": args.room, "reason": args.reason})


def drain(args) -> int:
    return _admin(args, "POST", "/drain", {})


# --- the command line


def _unrecognized(extra: list[str]) -> str:
    """Name the unknown option without echoing any value: it could be a key typed by mistake."""
    options = [arg.partition("=")[0] for arg in extra if arg.startswith("-")]
    if not options:
        return "unexpected extra argument"
    if options[0] in ("--api-key", "--key"):
        return f"unrecognized option {options[0]}: an API key is never taken from the command line, " \
               "use --api-key-file or SSCONTROL_API_KEY"
    return f"unrecognized option {options[0]}"


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: '--api-key KEY' must not be taken for '--api-key-file KEY'.
    parser = _Parser(prog=PROG, description="Operator commands for the sscontrol signaling daemon.",
                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)

    def command(name: str, func, help: str, **kw) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, allow_abbrev=False, **kw)
        sub.set_defaults(func=func, parser=sub, takes_daemon_options=False)
        return sub

    daemon_flags = " ".join(f"--{f.flag}" for f in config.FIELDS if not f.secret)
    sub = command("check-config", check_config,
                  "Validate the daemon's configuration as the daemon would at start, and summarize it.",
                  usage="%(prog)s [-h] [--config FILE] [daemon options...]",
                  epilog="Any daemon option may follow, overriding the file and the environment as it "
                         f"would for the daemon: {daemon_flags}. The environment (SSCONTROL_<KEY>, "
                         "SSCONTROL_CONFIG) and $CREDENTIALS_DIRECTORY are read too.")
    sub.set_defaults(takes_daemon_options=True)
    sub.add_argument("--config", "-c", metavar="FILE",
                     help=f"INI configuration file [default: $SSCONTROL_CONFIG, else {config.DEFAULT_CONFIG_FILE}]")

    sub = command("gen-key", gen_key, "Print a new random secret for api_keys or turn_secrets.")
    sub.add_argument("--bytes", type=_arg(config._int_range(MIN_KEY_BYTES)), default=32, metavar="N",
                     help=f"random bytes, printed as URL-safe base64 [default: 32, at least {MIN_KEY_BYTES}]")

    sub = command("token", token, "Print a ready-to-send WebSocket auth message (one line of JSON).",
                  epilog="The API key is read from --api-key-file, else $SSCONTROL_API_KEY, else the "
                         "daemon's configuration (its first key); never from the command line.")
    sub.add_argument("--device-id", required=True, type=_arg(config._str), metavar="ID")
    sub.add_argument("--api-key-file", metavar="FILE", help="file with one API key per line (the first is used)")
    sub.add_argument("--config", "-c", metavar="FILE", help="the daemon's INI configuration file")
    sub.add_argument("--timestamp", type=_arg(config._int_range(0, 2**53)), metavar="T",
                     help="Unix seconds [default: now]")
    sub.add_argument("--nonce", type=_arg(config._str), metavar="N", help="[default: 32 random hex digits]")

    sub = command("turn-credentials", turn_credentials,
                  "Print the TURN credentials (JSON) the daemon's /turn would answer, computed locally.")
    sub.add_argument("--config", "-c", metavar="FILE", help="the daemon's INI configuration file")
    sub.add_argument("--user", metavar="NAME", help="user part of the TURN username [default: turn_user]")
    sub.add_argument("--ttl", type=_arg(config.FIELDS_BY_NAME["turn_ttl"].parse), metavar="SECONDS",
                     help="lifetime of the credentials [default: turn_ttl]")

    sub = command("health", health, "GET a health URL, print its JSON; exit 0 only on HTTP 200.")
    sub.add_argument("--url", type=_arg(_health_url), default=None,
                     help="[default: /ready of the admin listener the configuration names (admin_host, "
                          f"admin_port), e.g. {DEFAULT_HEALTH_URL}; /health, /live also exist]")
    sub.add_argument("--config", "-c", metavar="FILE",
                     help=f"the daemon's INI configuration file [default: $SSCONTROL_CONFIG, else "
                          f"{config.DEFAULT_CONFIG_FILE}], read for the admin listener when --url is not given")
    sub.add_argument("--timeout", type=_arg(config._seconds(0.1)), default=5.0, metavar="S",
                     help="seconds to wait for the answer [default: 5]")
    tls = sub.add_mutually_exclusive_group()
    tls.add_argument("--cacert", metavar="FILE", help="CA certificates (PEM) to verify an https URL with")
    tls.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")

    def admin_command(name: str, func, help: str) -> argparse.ArgumentParser:
        sub = command(name, func, help)
        sub.add_argument("--admin-url", type=_arg(_health_url), default=None, metavar="URL",
                         help="the daemon's admin listener [default: the one the configuration names "
                              f"(admin_host, admin_port), e.g. {DEFAULT_ADMIN_URL}]")
        sub.add_argument("--config", "-c", metavar="FILE",
                         help=f"the daemon's INI configuration file [default: $SSCONTROL_CONFIG, else "
                              f"{config.DEFAULT_CONFIG_FILE}], read for the admin listener when --admin-url "
                              "is not given")
        sub.add_argument("--timeout", type=_arg(config._seconds(0.1)), default=10.0, metavar="S",
                         help="seconds to wait for the answer [default: 10]")
        return sub

    admin_command("rooms", rooms, "List the rooms (of every node, with Redis) and their member counts.")
    sub = admin_command("peers", peers, "List the members of a room, with the node each is on.")
    sub.add_argument("room", metavar="ROOM")
    sub = admin_command("kick", kick, "Remove a peer (on whichever node): it gets an error, then close 1008; "
                                      "its room gets peer_left.")
    sub.add_argument("peer", metavar="PEER")
    sub.add_argument("--reason", help="told to the peer and logged [default: removed by an operator]")
    sub = admin_command("close-room", close_room, "Remove every member of a room, on every node.")
    sub.add_argument("room", metavar="ROOM")
    sub.add_argument("--reason", help="told to each peer and logged")
    admin_command("drain", drain, "Make this node stop admitting and send its clients away with a "
                                  "reconnect hint (close 1012); it stays not ready until restarted.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        # Unknown options are the daemon's own for check-config, a usage error elsewhere.
        args, extra = parser.parse_known_args(argv)
        if extra and not args.takes_daemon_options:
            args.parser.error(_unrecognized(extra))
        args.daemon_options = extra
        return args.func(args)
    except CtlError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug, or an environment we did not foresee: still one line
        print(f"{PROG}: unexpected error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
