"""The shortcuts into Twisted's and Autobahn's internals: fenced in sscontrold/shortcuts/,
checked at start against the installed versions, and switchable (``shortcuts``).

``make test`` also runs the suite with SSCONTROL_SHORTCUTS=off: both paths stay correct.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import txaio
from autobahn import util as ab_util
from autobahn.twisted import websocket as ab_twisted
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket import protocol as ab_protocol
from twisted.internet import epollreactor, tcp
from twisted.logger import formatEvent, globalLogPublisher

from sscontrold import shortcuts
from sscontrold.protocol import SignalingProtocol
from sscontrold.shortcuts import _check, autobahn as ab_shortcuts, twisted_reactor, twisted_tcp

from test_handshake_memory import Connection, start_service  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parent.parent

# Every private name of a third-party object the daemon has used; only the fence may.
PRIVATE = re.compile(r"""
    \b(dataBuffer|_tempDataLen|writeSomeData|SEND_LIMIT|bufferSize            # tcp transport
      |_poller|_selectables|_doReadOrWrite                                    # reactor
      |current_frame|inside_message|_dataReceived|autoPingTimeoutCall
      |_cancelAutoPingTimeoutCall|sendCloseFrame|CONFIG_ATTRS|_wskey          # Autobahn
      |_handlingRequest|_waitingForTransport|_networkProducer|_savedTimeOut
      |_dataBuffer|_abortingCall|_disconnected                                # twisted.web
      |_makeEndpoint|disconnectCalled|pool)\b                                # txredisapi
    | (?:self|protocol|transport|sock)\.(?:data|offset)\b                     # Autobahn, tcp
    | \._sd\.socket\b                                                         # sdnotify
    """, re.VERBOSE)


def python_files():
    for top in (ROOT / "sscontrold", ROOT / "twisted" / "plugins"):
        yield from sorted(top.rglob("*.py"))


def test_private_names_appear_in_the_fence_only():
    found = []
    for path in python_files():
        if path.is_relative_to(ROOT / "sscontrold" / "shortcuts"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE.search(line.split("#", 1)[0]):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "private names outside sscontrold/shortcuts/:\n" + "\n".join(found)


def test_the_grep_would_see_them():
    """The pattern matches what the daemon used to write (a grep that finds nothing
    because it cannot match proves nothing)."""
    for line in ("transport._tempDataLen", "self._dataReceived(data)", "self.current_frame is None",
                 "not self.data and", "txredisapi._makeEndpoint(h, p)", "request._disconnected",
                 "self._sd.socket = sock", "self._networkProducer.pauseProducing()",
                 "self.transport.SEND_LIMIT = 1 << 22", "WebSocketServerProtocol.CONFIG_ATTRS"):
        assert PRIVATE.search(line), line
    assert any(PRIVATE.search(line) for path in (ROOT / "sscontrold" / "shortcuts").glob("*.py")
               for line in path.read_text().splitlines())


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name, sep, pinned = line.partition("==")
        if sep:
            found[name.strip().lower()] = pinned.strip()
    return found


def test_the_shortcuts_were_verified_on_the_pinned_versions():
    """Twisted 26.10.0, autobahn 26.10.2 and txredisapi 1.6.0: the versions requirements.txt
    pins, that the suite runs on, and whose internals sscontrold/shortcuts/ was read
    against. An upgrade changes the pin: this test then asks for them to be verified again."""
    pinned = pins()
    assert shortcuts.VERIFIED == {"Twisted": "26.10.0", "autobahn": "26.10.2", "txredisapi": "1.6.0"}
    for name, verified in shortcuts.VERIFIED.items():
        assert pinned[name.lower()] == verified, f"{name} is pinned at {pinned[name.lower()]}, verified on {verified}"
        assert version(name) == verified
    # sdnotify, which the daemon once reached into, now stays on its public API, pinned too.
    assert pinned["sdnotify"] == "0.3.2"
    assert shortcuts.check() == []


@pytest.fixture
def restore_shortcuts():
    """Whatever a test configures, the next one finds the shortcuts as they were."""
    saved = [(m, m.SHORTCUTS, m.GUARDS) for m in shortcuts.MODULES]
    yield
    for module, on, guards in saved:
        module.use(shortcuts=on, guards=guards)


@pytest.fixture
def warnings_logged():
    events = []

    def observer(event):
        if event.get("sscontrol_event", "").startswith("startup.shortcuts"):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def relay_works(site) -> None:
    """Join, a relayed offer, a policy close (1008): through the site makeService built."""
    host, viewer = Connection(site, 40001), Connection(site, 40002)
    for conn in (host, viewer):
        assert conn.handshake()[0].endswith("101 Switching Protocols")
    host.send({"type": "join", "room_id": "r"})
    host_id = host.received()[0]["peer_id"]
    viewer.send({"type": "join", "room_id": "r"})
    viewer_id = viewer.received()[0]["peer_id"]
    assert host.received() == [{"type": "new_peer", "peer_id": viewer_id}]
    for i in range(3):
        viewer.send({"type": "ice", "to": host_id, "candidate": f"c{i}", "sdp_mid": "0", "sdp_mline_index": 0})
    assert [m["candidate"] for m in host.received()] == ["c0", "c1", "c2"]
    viewer.send_frame(0x2, b"binary")  # Autobahn's path on either setting
    assert viewer.received()[0]["type"] == "error"
    viewer.close(1001)
    assert host.received() == [{"type": "peer_left", "peer_id": viewer_id}]


@pytest.mark.parametrize("setting", ["on", "off"])
def test_the_setting_switches_the_shortcuts_and_both_paths_relay(start_service, monkeypatch, setting,
                                                                 restore_shortcuts, warnings_logged):
    monkeypatch.setenv("SSCONTROL_SHORTCUTS", setting)
    read_by_the_hot_path = []
    original = SignalingProtocol._read_messages
    monkeypatch.setattr(SignalingProtocol, "_read_messages",
                        lambda self, data: read_by_the_hot_path.append(data) or original(self, data))
    site = start_service()
    on = setting == "on"
    # txredisapi's module holds guards only: never a shortcut to switch
    assert shortcuts.state() == {"twisted_tcp": on, "twisted_reactor": on, "twisted_web": on, "autobahn": on,
                                 "txredisapi": False}
    assert all(module.GUARDS for module in shortcuts.MODULES)  # bounds stay either way
    assert (ab_protocol.hltype is ab_shortcuts._TypeName) == on
    assert (ab_twisted.hltype is ab_shortcuts._TypeName) == on
    relay_works(site)
    assert bool(read_by_the_hot_path) == on
    assert not warnings_logged


def test_a_missing_internal_warns_once_and_the_public_path_serves(start_service, monkeypatch,
                                                                  restore_shortcuts, warnings_logged):
    """As if an upgrade had renamed what two modules rely on: one warning names both,
    those modules take their public path, the others keep their shortcuts."""
    monkeypatch.delenv("SSCONTROL_SHORTCUTS", raising=False)
    monkeypatch.delattr(tcp.Connection, "writeSomeData")  # (tcp.Server inherits it) unused in memory
    owner = next(c for c in epollreactor.EPollReactor.__mro__ if "_doReadOrWrite" in vars(c))
    monkeypatch.delattr(owner, "_doReadOrWrite")  # unused by a memory reactor
    site = start_service()
    [warning] = warnings_logged
    fields = warning["sscontrol_fields"]
    assert warning["sscontrol_event"] == "startup.shortcuts_unavailable"
    assert fields["missing"] == "twisted tcp.Server.writeSomeData, twisted EPollReactor._doReadOrWrite"
    assert "Twisted 26.10.0" in fields["verified"]
    assert not twisted_tcp.SHORTCUTS and not twisted_tcp.GUARDS
    assert not twisted_reactor.SHORTCUTS
    assert ab_shortcuts.SHORTCUTS  # its check passed
    relay_works(site)


def test_autobahn_missing_its_frame_state_falls_back_to_on_message(start_service, monkeypatch,
                                                                  restore_shortcuts, warnings_logged):
    """Autobahn's parser state is read by name from its source: renamed there, the hot
    path is off, Autobahn reads every frame, and the daemon says so."""
    real = _check.lacking_in_source

    def renamed(owner, names, label):
        return real(owner, tuple(n.replace("current_frame", "current_frame_renamed") for n in names), label)

    monkeypatch.delenv("SSCONTROL_SHORTCUTS", raising=False)
    monkeypatch.setattr(ab_shortcuts, "lacking_in_source", renamed)
    read_by_the_hot_path = []
    monkeypatch.setattr(SignalingProtocol, "_read_messages", lambda self, data: read_by_the_hot_path.append(data))
    site = start_service()
    [warning] = warnings_logged
    assert warning["sscontrol_fields"]["missing"] == "autobahn WebSocketProtocol.current_frame_renamed"
    assert not ab_shortcuts.SHORTCUTS and not ab_shortcuts.GUARDS
    relay_works(site)
    assert not read_by_the_hot_path


# restore_shortcuts first: it is then torn down last, after monkeypatch has put Autobahn's hltype back
def test_autobahn_debug_lines_still_name_their_methods(restore_shortcuts, start_service, monkeypatch):
    """With the shortcut, Autobahn's debug names are worked out only for a line that is
    written, and read as Autobahn's own."""
    monkeypatch.delenv("SSCONTROL_SHORTCUTS", raising=False)
    site = start_service()
    assert ab_protocol.hltype is ab_shortcuts._TypeName
    formatted = []
    real_hltype = ab_util.hltype
    monkeypatch.setattr(ab_util, "hltype", lambda obj: formatted.append(obj) or real_hltype(obj))
    relay_works(site)  # debug lines off, as the daemon runs: no name is worked out
    assert formatted == []
    lines: list[str] = []

    def autobahn_lines(event):
        if event.get("log_namespace", "").startswith("autobahn"):
            lines.append(formatEvent(event))

    level = txaio.get_global_log_level()
    globalLogPublisher.addObserver(autobahn_lines)
    txaio.set_global_log_level("debug")
    try:
        relay_works(site)
    finally:
        txaio.set_global_log_level(level)
        globalLogPublisher.removeObserver(autobahn_lines)
    name = ab_util.hltype(ab_protocol.WebSocketServerProtocol.processHandshake)
    assert name.startswith("<autobahn.websocket.protocol.")
    assert any(line.startswith(name) for line in lines), lines[:5]
    assert formatted  # written lines: worked out then


def test_a_module_formatting_its_debug_names_otherwise_is_left_alone(monkeypatch, restore_shortcuts):
    """An Autobahn whose modules no longer use hltype: the debug-name shortcut leaves
    them as they are, and the module's other shortcuts and its guards stay on."""

    def their_own(obj):
        return "theirs"

    monkeypatch.setattr(ab_protocol, "hltype", their_own)
    assert shortcuts.configure(True) == []
    assert ab_protocol.hltype is their_own and ab_twisted.hltype is ab_shortcuts._TypeName
    assert ab_shortcuts.SHORTCUTS and ab_shortcuts.GUARDS
    shortcuts.configure(False)
    assert ab_protocol.hltype is their_own and ab_twisted.hltype is ab_util.hltype


def test_the_check_finds_a_missing_attribute_and_instance_attribute():
    class Old:
        def __init__(self):
            self.kept = 1

        def method(self):
            pass

    assert _check.lacking_attributes(Old, ("method", "gone"), "Old") == ["Old.gone"]
    assert _check.lacking_in_source(Old, ("kept", "renamed"), "Old") == ["Old.renamed"]


def test_the_public_close_keeps_its_code_where_sendclose_allows_it(monkeypatch, restore_shortcuts):
    """Without the guard (a failed check), close codes sendClose refuses become 1000."""
    sent = []
    proto = WebSocketServerProtocol()
    monkeypatch.setattr(proto, "sendClose", lambda code, reason: sent.append((code, reason)), raising=False)
    ab_shortcuts.use(shortcuts=False, guards=False)
    ab_shortcuts.send_close(proto, 4001, "x" * 200)
    ab_shortcuts.send_close(proto, 1008, "policy")
    assert sent == [(4001, "x" * 123), (1000, "policy")]


def test_check_config_names_what_is_missing(monkeypatch, tmp_path, capsys):
    """``sscontrol-signaling-ctl check-config`` prints the warning the daemon would log."""
    from sscontrold import ctl

    for name in ("SSCONTROL_CONFIG", "SSCONTROL_SHORTCUTS"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty.conf"
    empty.touch()
    assert ctl.main(["check-config", "--config", str(empty)]) == 0
    assert "shortcuts" not in capsys.readouterr().err
    monkeypatch.delattr(tcp.Connection, "writeSomeData")
    assert ctl.main(["check-config", "--config", str(empty)]) == 0
    err = capsys.readouterr().err
    assert "warning: startup.shortcuts_unavailable:" in err
    assert "(missing: twisted tcp.Server.writeSomeData)" in err
