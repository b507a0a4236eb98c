"""Logging: one line per event, with a level and a stable event name.

``Events`` is what the domain emits into; ``observer`` is the twistd ``--logger``,
which the plugin installs itself under ``twistd -n`` (so ``make run`` and the unit
log alike): text lines, or JSON lines, to stdout, which under systemd is the
journal. Under the journal (``$JOURNAL_STREAM`` set) each line carries its syslog
priority as a ``<N>`` prefix, so ``journalctl -p warning`` works, and no time (the
journal has it); elsewhere each line starts with its local time.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO, TypedDict

import orjson
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    PredicateResult,
    formatEvent,
)
from zope.interface import implementer

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}
_RANK = {name: rank for rank, name in enumerate(LEVELS)}
_SYSLOG_PRIORITY = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3, LogLevel.critical: 2}

_log = Logger(namespace="sscontrold")


class Events:
    """Structured events: ``emit("info", "auth.accepted", address=..., device_id=...)``.

    Callers never pass a secret; fields that are None are left out.
    """

    def emit(self, level: str, event: str, **fields: Any) -> None:
        if _RANK[level] < _config["rank"]:
            return  # filtered out anyway: skip building the event
        fields = {k: v for k, v in fields.items() if v is not None}
        _log.emit(LEVELS[level], "{sscontrol_event}", sscontrol_event=event, sscontrol_fields=fields)


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with every non-printable character (CR, LF, ESC, NUL, the other C0
    and C1 controls, DEL, line and paragraph separators...) written as a
    backslash escape: a client-chosen string can neither start a forged log line
    nor drive the terminal that shows the log."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


def _quote(value: Any) -> str:
    text = str(value)
    if not text or not text.isprintable() or any(c in text for c in ' ="\\'):
        # Backslashes are doubled first, so an escape we write is told from one sent to us.
        return '"' + escape(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'
    return text


def _clean(value: Any) -> Any:
    """A field's value for a JSON line. JSON itself escapes CR, LF, ESC, NUL and the
    other C0 controls (a traceback's lines stay lines once decoded); the rest it
    would write raw (DEL, C1 controls such as CSI, line separators) is escaped here."""
    if isinstance(value, str) and not value.isprintable():
        return "".join(c if c.isprintable() or c < " " else _escape_char(c) for c in value)
    return value


def _event_parts(event: dict) -> tuple[str, dict]:
    name = event.get("sscontrol_event")
    if name is not None:
        return name, event.get("sscontrol_fields", {})
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    return "log", {"namespace": event.get("log_namespace", "?"), "message": text}


@implementer(ILogObserver)
class LineObserver:
    """Writes one line per event: ``<level> <event> key=value ...`` or a JSON object."""

    def __init__(self, out: TextIO, fmt: str | None = None, journal: bool = False):
        self._out = out
        self._fmt = fmt  # None: the configured one (log_format), which a reload may change
        self._journal = journal

    def __call__(self, event: dict) -> None:
        level = event.get("log_level", LogLevel.info)
        name, fields = _event_parts(event)
        if (self._fmt or _config["format"]) == "json":
            record = {"level": level.name, "event": name, **{k: _clean(v) for k, v in fields.items()}}
            if not self._journal:
                record["time"] = event.get("log_time")
            line = orjson.dumps(record, default=str).decode()
        else:
            kv = " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
            line = f"{level.name} {name} {kv}".rstrip()
            if not self._journal:
                line = f"{_timestamp(event.get('log_time'))} {line}"
        if self._journal:
            line = f"<{_SYSLOG_PRIORITY.get(level, 6)}>{line}"
        try:
            self._out.write(line + "\n")
            self._out.flush()
        except (OSError, ValueError):
            pass  # stdout gone: nowhere left to report it


def _timestamp(when: float | None) -> str:
    when = time.time() if when is None else when
    local = time.localtime(when)
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{int(when % 1 * 1000):03d}" + time.strftime("%z", local)


class _Config(TypedDict):
    level: str
    format: str
    rank: int  # _RANK of level


# Set by makeService and by reload, read by the observer.
_config: _Config = {"level": "info", "format": "text", "rank": _RANK["info"]}
_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)


def configure(level: str, fmt: str) -> None:
    _config["format"] = fmt
    _config["level"] = level
    _config["rank"] = _RANK[level]
    _predicate.setLogLevelForNamespace("", LEVELS[level])


# Lines libraries write on every retry while Redis refuses a connection's set-up
# (AUTH, SELECT) or cannot be reached: the daemon says each once per outage
# (redis.setup_failed, redis.down), so at debug only, or they flood the journal.
_RETRY_CHATTER = (("twisted.application._client_service.ClientService", "Scheduling retry"),
                  ("log_legacy", "Redis error: could not "))


@implementer(ILogFilterPredicate)
class _RetryChatter:
    def __call__(self, event: dict) -> PredicateResult:
        if _config["level"] != "debug":
            namespace = event.get("log_namespace")
            for where, starts in _RETRY_CHATTER:
                if namespace == where and formatEvent(event).startswith(starts):
                    return PredicateResult.no
        return PredicateResult.maybe


retry_chatter = _RetryChatter()


def observer() -> ILogObserver:
    """twistd ``--logger sscontrold.logging.observer``."""
    return FilteringLogObserver(LineObserver(sys.stdout, None, writes_to_journal(sys.stdout)),
                                [_predicate, retry_chatter])


def writes_to_journal(out: TextIO) -> bool:
    """True when ``out`` is the journal's stream: systemd sets $JOURNAL_STREAM to its
    "device:inode", which a shell started from a service passes on to programs whose
    output goes elsewhere (a terminal, a file): compare it with ``out`` itself."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(out.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)
