"""The service tree ``makeService(options)`` builds, on a memory reactor: which services
and listeners the options give, without binding a port (the process tests bind them)."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory

from certs import PKI
from memory import Connection
from sscontrold import tap
from sscontrold.lifecycle import Reloader
from sscontrold.protocol import SignalingFactory
from sscontrold.redis import RedisCluster, RedisLink
from sscontrold.services import FactoryLifetime, Listener, SharedPortEndpoint
from sscontrold.systemd import SystemdService
from sscontrold.web import QuietSite


def of_type(top, kind) -> list:
    return [s for s in top if isinstance(s, kind)]


def build(*args: str):
    """The tree for these flags, built but not started."""
    options = tap.Options()
    options.parseOptions(["--host", "127.0.0.1", "--port", "8443", "--admin-port", "9464", *args])
    reactor = MemoryReactorClock()
    return tap.makeService(options, reactor=reactor), reactor


@pytest.fixture
def clean_env(memory_daemon):
    """The machine's SSCONTROL_* variables and configuration file left out (memory_daemon's set-up)."""


def test_default_tree_listens_public_and_admin(memory_daemon):
    d = memory_daemon()
    listeners = {s.name: s for s in of_type(d.top, Listener)}
    assert set(listeners) == {"public", "admin"}
    bound = {port: (factory, interface) for port, factory, _backlog, interface in d.reactor.tcpServers}
    assert set(bound) == {8443, 9464}
    assert bound[8443][1] == "127.0.0.1" and bound[9464][1] == "127.0.0.1"
    assert isinstance(bound[8443][0], QuietSite) and isinstance(bound[9464][0], QuietSite)
    assert len(of_type(d.top, FactoryLifetime)) == 1 and len(of_type(d.top, Reloader)) == 1
    assert len(of_type(d.top, SystemdService)) == 1
    assert not of_type(d.top, RedisLink) and not of_type(d.top, RedisCluster)
    assert d.top.readiness.ready and set(d.top.readiness.results()) == {
        "listener_public", "listener_admin", "draining"}


def test_the_sites_and_factory_use_the_given_reactor(memory_daemon):
    d = memory_daemon()
    assert d.site.reactor is d.reactor and d.admin_site.reactor is d.reactor
    factories = [s._factory for s in of_type(d.top, FactoryLifetime)]
    assert isinstance(factories[0], SignalingFactory) and factories[0].reactor is d.reactor


def test_admin_off_leaves_one_listener(memory_daemon):
    d = memory_daemon("--admin-enabled", "false")
    assert [s.name for s in of_type(d.top, Listener)] == ["public"]
    assert [port for port, *_ in d.reactor.tcpServers] == [8443]
    assert "listener_admin" not in d.top.readiness.results()


def test_admin_listener_follows_its_own_address(memory_daemon):
    d = memory_daemon("--admin-host", "127.0.0.2", "--admin-port", "9999")
    bound = {port: interface for port, _f, _b, interface in d.reactor.tcpServers}
    assert bound == {8443: "127.0.0.1", 9999: "127.0.0.2"}


def test_redis_services_only_with_redis_url(clean_env):
    top, _ = build()
    assert not of_type(top, RedisLink)
    top, _ = build("--redis-url", "redis://127.0.0.1:6390/0")
    assert len(of_type(top, RedisLink)) == len(of_type(top, RedisCluster)) == 1
    assert top.node.clustered
    names = [type(s).__name__ for s in top]
    assert names.index("RedisLink") < names.index("Listener")  # Redis starts before anything listens


def test_tls_wraps_the_public_site_only(memory_daemon, tmp_path):
    chain, key, _ = PKI(tmp_path / "pki").server()
    d = memory_daemon("--tls-cert", str(chain), "--tls-key", str(key))
    bound = {port: factory for port, factory, _b, _i in d.reactor.tcpServers}
    assert isinstance(bound[8443], TLSMemoryBIOFactory) and isinstance(bound[8443].wrappedFactory, QuietSite)
    assert isinstance(bound[9464], QuietSite)  # the admin listener stays plain HTTP on loopback
    [public] = [s for s in of_type(d.top, Listener) if s.name == "public"]
    assert public._scheme == "wss"


def test_reuse_port_uses_the_shared_port_endpoint(clean_env):
    top, _ = build("--reuse-port", "true", "--redis-url", "redis://127.0.0.1:6390/0")
    [public] = [s for s in of_type(top, Listener) if s.name == "public"]
    assert isinstance(public._endpoint, SharedPortEndpoint)


def test_stop_drains_then_unbinds(memory_daemon):
    d = memory_daemon()
    conn = d.connect()
    conn.join("r")
    stopped = d.stop()
    assert d.node.draining and not d.top.readiness.ready
    assert conn.close_code() == 1012
    done = []
    stopped.addBoth(done.append)
    d.advance(d.settings.drain_timeout + 1, step=0.5)
    assert done and not any(s.check() is None for s in of_type(d.top, Listener))


def test_health_on_the_public_site_in_memory(memory_daemon):
    d = memory_daemon()
    answer = Connection(d.site, 42000).request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"status"' in answer
