"""twistd plugin: ``Options`` (validated before anything binds) and ``makeService``
(wiring only)."""

from __future__ import annotations

import os
import re
import resource

from twisted.application.service import MultiService
from twisted.python import usage

from . import __version__, config, logging, shortcuts
from .config import ConfigError
from .admin import HealthSummary, Readiness, admin_site
from .admin_actions import admin_actions
from .admission import LoopLag
from .connection_test import ConnectionTestPage
from .lifecycle import DrainingService, Reloader, drain
from .logging import Events
from .node import SignalingNode
from .origin_gate import OriginGate
from .protocol import SignalingFactory
from .redis import RedisCluster, RedisLink, RedisNonceStore
from .rest import SessionAPI
from .services import FactoryLifetime, Listener, ListenersReady, SharedPortEndpoint, server_endpoint, with_tls
from .systemd import Notifier, SystemdService
from .tls import ReloadableServerTLS
from .turn import TurnResource, websocket_turn
from .web import public_site


def help_text(field: config.Field) -> str:
    """A flag's --help line: the setting's help, its default as the INI file writes it,
    and whether a reload applies it."""
    default = config.default_text(field.default) or ("(none)" if isinstance(field.default, tuple) else "(unset)")
    return f"{field.help} [default: {default}]" + (" [restart only]" if field.restart else "")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "sscontrol signaling daemon. Settings, in rising precedence: built-in defaults, "
        f"the INI file (--config, default {config.DEFAULT_CONFIG_FILE} if it exists), "
        "the environment (SSCONTROL_<KEY>, and SIGNALING_HOST, SIGNALING_PORT, SSCONTROL_API_KEY, "
        "SSCONTROL_TLS_CERT, SSCONTROL_TLS_KEY), these flags. Secrets (API keys, TURN secrets) "
        "are never taken from the command line: use the file, a *_file key, the environment or "
        "a systemd credential of the same name."
    )
    optParameters = [["config", "c", None, "INI configuration file."]] + [
        [field.flag, None, None, help_text(field)]
        for field in config.FIELDS
        if not field.secret
    ]

    def parseOptions(self, options=None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:  # not under twistd (sscontrol-signaling-ctl check-config)
                raise
            # twistd would print its whole usage, then the error at the bottom: one line instead.
            raise SystemExit(f"sscontrol-signaling: {e}{_flag_hint(str(e))} "
                             "(see 'twistd sscontrol-signaling --help')") from None

    def postOptions(self) -> None:
        self.flags = {
            field.name: self[field.flag]
            for field in config.FIELDS
            if not field.secret and self.get(field.flag) is not None
        }
        self.config_file = self["config"]
        try:
            self.settings = load_settings(self.flags, self.config_file)
        except ConfigError as e:
            raise SystemExit(f"sscontrol-signaling: {e}") from None
        self._install_logger()

    def _install_logger(self) -> None:
        """The project's observer (fields, log_level, log_format) however twistd was started:
        `twistd -n sscontrol-signaling` and `make run` log as the unit does. An explicit
        --logger or --logfile, or a daemonizing twistd (it logs to twistd.log), is left alone."""
        parent = self.parent
        if parent is None or not parent.get("nodaemon") or parent.get("logger"):
            return
        if parent.get("logfile") not in (None, "", "-") or parent.get("syslog"):
            return
        parent["logger"] = "sscontrold.logging.observer"  # twistd imports it after this

    def opt_version(self) -> None:
        print(f"sscontrol-signaling {__version__}")
        raise SystemExit(0)


def open_file_limit() -> int:
    """The process's open-file limit, first raised to the hard limit (what systemd's
    LimitNOFILE= sets both to; a shell often has a lower soft limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # e.g. an unlimited hard limit past fs.nr_open: keep the soft one
            pass
    return 2**31 if soft == resource.RLIM_INFINITY else soft


def _flag_hint(error: str) -> str:
    """", did you mean --x?" for an unknown flag close to a known one."""
    match = re.search(r"option --?([\w-]+) not recognized|no such option:? --?([\w-]+)", error, re.I)
    if match is None:
        return ""
    unknown = match.group(1) or match.group(2)
    names = [f.flag for f in config.FIELDS if not f.secret] + ["config"]
    hint = config.did_you_mean(unknown, names)
    return hint.replace("did you mean ", "did you mean --")


def load_settings(flags: dict, config_file: str | None) -> config.Settings:
    """The settings, with the TLS files checked too (a bad certificate is a config error),
    and the connection limits against the open-file limit."""
    settings = config.load(flags, os.environ, config_file, open_files=open_file_limit())
    if settings.tls_enabled:
        ReloadableServerTLS(settings.tls_cert, settings.tls_key)
    return settings


def makeService(options: Options, reactor=None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    settings = options.settings
    logging.configure(settings.log_level, settings.log_format)
    events = Events()
    for warning in settings.warnings:  # what check-config prints too
        events.emit("warn", warning.event, message=warning.message)
    missing = shortcuts.configure(settings.shortcuts)
    if missing:
        events.emit("warn", "startup.shortcuts_unavailable", missing=", ".join(missing),
                    verified=", ".join(f"{name} {version}" for name, version in shortcuts.VERIFIED.items()),
                    message=shortcuts.WARNING)

    redis = (RedisLink(settings.redis_url, settings.redis_password, settings.redis_prefix,
                       settings.redis_timeout, reactor) if settings.redis_url else None)
    cluster = (RedisCluster(redis, settings.redis_url, settings.redis_password, settings.cluster_lease)
               if redis else None)
    node = SignalingNode(settings, reactor, events,
                         nonces=RedisNonceStore(redis, settings.nonce_store_max) if redis else None,
                         cluster=cluster)
    factory = SignalingFactory(node, settings, reactor)
    if cluster is not None:  # events from other nodes are written and timed as local reads are
        cluster.batch = factory.batch
    tls = ReloadableServerTLS(settings.tls_cert, settings.tls_key) if settings.tls_enabled else None
    notifier = Notifier()
    readiness = Readiness()
    node.extensions["turn"] = websocket_turn(node)
    sessions = SessionAPI(node, redis=redis)  # with Redis, sessions are shared by every node
    health = HealthSummary(readiness, lambda: {**node.summary(), "sessions": sessions.store.count()})
    loop_lag = LoopLag(reactor, node)  # admission control: sheds upgrades when the reactor falls behind
    site = public_site(factory, health, settings.handshake_timeout, settings.session_body_max_bytes,
                       extra={b"api": sessions.resource, b"turn": TurnResource(node),
                              b"connection-test": ConnectionTestPage(node)}, admission=loop_lag, reactor=reactor)
    site.resource = OriginGate(site.resource, node)  # allowed_origins, before any upgrade

    top = DrainingService(reactor)
    if redis is not None:
        redis.setServiceParent(top)
    if cluster is not None:  # there is one exactly when there is a Redis link
        cluster.setServiceParent(top)
        readiness.add("redis", cluster.check)
    loop_lag.setServiceParent(top)
    FactoryLifetime(factory).setServiceParent(top)
    sessions.service.setServiceParent(top)
    public = (SharedPortEndpoint if settings.reuse_port else server_endpoint)(reactor, settings.host, settings.port)
    listeners = [Listener("public", public, with_tls(site, tls), "wss" if tls is not None else "ws",
                          settings.host, settings.port)]
    sites = [site]

    def drain_node():
        return drain(node, factory, notifier, reactor, node.settings.drain_timeout,
                     node.settings.drain_reconnect_rate)

    if settings.admin_enabled:
        actions = admin_actions(node, drain_node)
        sites.append(admin_site(readiness, health, settings.handshake_timeout, settings.session_body_max_bytes,
                                actions, reactor=reactor))
        listeners.append(Listener("admin", server_endpoint(reactor, settings.admin_host, settings.admin_port),
                                  sites[-1], "http", settings.admin_host, settings.admin_port))
    for listener in listeners:
        listener.setServiceParent(top)
        readiness.add(f"listener_{listener.name}", listener.check)
    ListenersReady(listeners).setServiceParent(top)  # once all are bound, not one by one
    readiness.add("draining", lambda: "draining" if node.draining else None)

    def apply_tls(new: config.Settings) -> None:
        if tls is not None:
            tls.apply(new)

    reloader = Reloader(lambda: load_settings(options.flags, options.config_file),
                        [node.apply, factory.apply, *(s.apply for s in sites), apply_tls,
                         lambda new: redis and redis.apply(new),
                         lambda new: logging.configure(new.log_level, new.log_format)],
                        notifier, reactor, started_with=settings)
    reloader.setServiceParent(top)
    SystemdService(notifier, lambda: readiness.ready, node.status_line, reactor).setServiceParent(top)
    top.drain_steps.append(drain_node)
    # What the in-memory tests (tests/memory.py, test_tree_memory.py) inspect of the tree.
    top.node, top.readiness, top.reloader = node, readiness, reloader
    return top
