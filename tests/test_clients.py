"""The clients people run, at their default settings, against the real daemon.

- Raw upgrade requests with the header sets current browsers send (Chrome, Firefox,
  Safari: Origin, their Sec-WebSocket-Extensions offers, Sec-WebSocket-Protocol,
  mixed-case names, ``Connection: keep-alive, Upgrade``, a query string): 101 within a
  second, plain and TLS, on / and /ws.
- The Python ``websockets`` client (sync and asyncio) and the Node.js ``ws`` client with
  no option changed (each offers permessage-deflate): they join and relay, across
  each other.
- The README's quick-start command, run as written.

docs/clients.md lists these results; docs/protocol.md says what the handshake answers.
The browsers themselves are in tests/browser/.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import threading

import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.sync.client import connect as sync_connect

from certs import PKI
from conftest import ROOT

NODE_CLIENT = ROOT / "tests" / "clients" / "node"

# What each browser sends, header by header, in its own order and case (the key and
# Host are filled in). Taken from each browser's upgrade request.
BROWSERS = {
    "chrome": [
        ("Connection", "Upgrade"), ("Pragma", "no-cache"), ("Cache-Control", "no-cache"),
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                       "Chrome/156.0.0.0 Safari/537.36"),
        ("Upgrade", "websocket"), ("Origin", "https://desk.example.com"), ("Sec-WebSocket-Version", "13"),
        ("Accept-Encoding", "gzip, deflate, br, zstd"), ("Accept-Language", "en-US,en;q=0.9"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
    ],
    "firefox": [
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:145.0) Gecko/20100101 Firefox/145.0"),
        ("Accept", "*/*"), ("Accept-Language", "en-US,en;q=0.5"), ("Accept-Encoding", "gzip, deflate, br, zstd"),
        ("Sec-WebSocket-Version", "13"), ("Origin", "https://desk.example.com"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"), ("Connection", "keep-alive, Upgrade"),
        ("Sec-Fetch-Dest", "empty"), ("Sec-Fetch-Mode", "websocket"), ("Sec-Fetch-Site", "same-origin"),
        ("Pragma", "no-cache"), ("Cache-Control", "no-cache"), ("Upgrade", "websocket"),
    ],
    "safari": [
        ("Upgrade", "websocket"), ("Accept-Encoding", "gzip, deflate"), ("Pragma", "no-cache"),
        ("Origin", "https://desk.example.com"), ("Cache-Control", "no-cache"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ("User-Agent", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
                       "(KHTML, like Gecko) Version/19.1 Safari/605.1.15"),
    ],
    # Header names in odd case and an old offer: names are case-insensitive.
    "mixed-case": [
        ("UPGRADE", "WebSocket"), ("connection", "upgrade"), ("SEC-WEBSOCKET-VERSION", "13"),
        ("sec-websocket-extensions", "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=15"),
        ("oRiGiN", "http://127.0.0.1"),
    ],
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(params=["plain", "tls"])
def any_daemon(request, daemon_factory, pki):
    """A daemon with auth off, plain or with native TLS."""
    if request.param == "plain":
        return daemon_factory()
    chain, key, _ = pki.server()
    d = daemon_factory(env={"SSCONTROL_TLS_CERT": str(chain), "SSCONTROL_TLS_KEY": str(key)}, tls=True)
    d.client_ssl = pki.client_context()
    return d


def raw_upgrade(daemon, path: str, headers: list[tuple[str, str]]) -> tuple[str, dict[str, str]]:
    """Send one upgrade request; return the status line and headers of the answer, which
    must come within a second."""
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=1.0)
    if daemon.tls:
        sock = daemon.client_ssl.wrap_socket(sock, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{daemon.port}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Sec-WebSocket-Key: {key}")
    with sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)  # the 1 s timeout bounds the wait for the answer
            assert chunk, f"closed without an answer: {head!r}"
            head += chunk
    status, *rest = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    return status, {name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in rest)}


@pytest.mark.parametrize("path", ["/", "/ws", "/ws?room=demo&v=2", "/?token=x"])
@pytest.mark.parametrize("browser", sorted(BROWSERS))
def test_browser_upgrade_requests_get_101(any_daemon, browser, path):
    status, headers = raw_upgrade(any_daemon, path, BROWSERS[browser])
    assert status == "HTTP/1.1 101 Switching Protocols", (status, headers)
    assert headers["upgrade"].lower() == "websocket"
    assert "sec-websocket-extensions" not in headers  # permessage-deflate is declined
    assert "sec-websocket-protocol" not in headers


@pytest.mark.parametrize("offer, selected", [("sscontrol", "sscontrol"), ("sscontrol.v1, json", "sscontrol.v1"),
                                             ("chat, sscontrol", "sscontrol")])
def test_a_subprotocol_offer_gets_101_naming_one_of_its_names(any_daemon, offer, selected):
    """Browsers fail a 101 that names none of the subprotocols they offered."""
    status, headers = raw_upgrade(any_daemon, "/ws", BROWSERS["chrome"] + [("Sec-WebSocket-Protocol", offer)])
    assert status == "HTTP/1.1 101 Switching Protocols", (status, headers)
    assert headers["sec-websocket-protocol"] == selected


@pytest.mark.parametrize("extensions", [
    "permessage-deflate; client_max_window_bits=7",  # out of range
    "permessage-deflate; server_max_window_bits",  # needs a value
    "permessage-deflate; no_such_parameter",
    "permessage-deflate; client_max_window_bits; client_max_window_bits",  # repeated
])
def test_a_malformed_offer_is_answered_400_at_once(any_daemon, extensions):
    """No offer stalls the handshake: a malformed one is refused with a clean 400."""
    headers = [h for h in BROWSERS["chrome"] if h[0] != "Sec-WebSocket-Extensions"]
    status, answer = raw_upgrade(any_daemon, "/ws", headers + [("Sec-WebSocket-Extensions", extensions)])
    assert status.startswith("HTTP/1.1 400 "), (status, answer)
    assert "Traceback" not in status


# --- native clients at their defaults


def websockets_url(daemon) -> tuple[str, dict]:
    return daemon.ws, ({"ssl": daemon.client_ssl} if daemon.tls else {})


def test_python_websockets_sync_client_at_defaults(any_daemon):
    url, tls = websockets_url(any_daemon)
    with sync_connect(url, **tls) as host, sync_connect(url, **tls) as viewer:
        # The library offers permessage-deflate by default; the server declines it.
        assert "permessage-deflate" in host.request.headers["Sec-WebSocket-Extensions"]
        assert host.response.headers.get("Sec-WebSocket-Extensions") is None
        host.send(json.dumps({"type": "join", "room_id": "sync"}))
        host_id = json.loads(host.recv(timeout=5))["peer_id"]
        viewer.send(json.dumps({"type": "join", "room_id": "sync"}))
        peers = json.loads(viewer.recv(timeout=5))
        assert peers["peers"] == [{"id": host_id}]
        assert json.loads(host.recv(timeout=5)) == {"type": "new_peer", "peer_id": peers["peer_id"]}
        viewer.send(json.dumps({"type": "offer", "from": "", "to": host_id, "sdp": "v=0"}))
        assert json.loads(host.recv(timeout=5)) == {"type": "offer", "from": peers["peer_id"], "to": host_id,
                                                    "sdp": "v=0"}


def test_python_websockets_asyncio_client_at_defaults(any_daemon):
    url, tls = websockets_url(any_daemon)

    async def session():
        async with async_connect(url, **tls) as host, async_connect(url, **tls) as viewer:
            await host.send(json.dumps({"type": "join", "room_id": "async"}))
            host_id = json.loads(await asyncio.wait_for(host.recv(), 5))["peer_id"]
            await viewer.send(json.dumps({"type": "join", "room_id": "async"}))
            viewer_id = json.loads(await asyncio.wait_for(viewer.recv(), 5))["peer_id"]
            assert json.loads(await asyncio.wait_for(host.recv(), 5))["type"] == "new_peer"
            await host.send(json.dumps({"type": "answer", "from": "", "to": viewer_id, "sdp": "v=0 a"}))
            return json.loads(await asyncio.wait_for(viewer.recv(), 5)), host_id

    answer, host_id = asyncio.run(session())
    assert answer == {"type": "answer", "from": host_id, "to": answer["to"], "sdp": "v=0 a"}


def node() -> str:
    path = shutil.which("node")
    if path is None or not (NODE_CLIENT / "node_modules" / "ws").is_dir():
        pytest.fail("node and tests/clients/node/node_modules are installed by `make test`")
    return path


def test_node_ws_client_at_defaults_relays_with_a_python_peer(any_daemon, pki):
    """A Node.js ``ws`` viewer (defaults) and a Python ``websockets`` host (defaults)
    signal through the daemon: offer and ice one way, answer the other."""
    url, tls = websockets_url(any_daemon)
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(pki.ca_path)}
    with sync_connect(url, **tls) as host:
        host.send(json.dumps({"type": "join", "room_id": "node"}))
        host_id = json.loads(host.recv(timeout=5))["peer_id"]
        viewer = subprocess.Popen([node(), str(NODE_CLIENT / "viewer.js"), url, "node"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            viewer_id = json.loads(host.recv(timeout=10))["peer_id"]  # new_peer
            offer = json.loads(host.recv(timeout=5))
            ice = json.loads(host.recv(timeout=5))
            host.send(json.dumps({"type": "answer", "from": "", "to": viewer_id, "sdp": "v=0 python-answer"}))
            out, err = viewer.communicate(timeout=15)
        finally:
            if viewer.poll() is None:
                viewer.kill()
                viewer.wait()
    assert viewer.returncode == 0, err
    assert offer == {"type": "offer", "from": viewer_id, "to": host_id, "sdp": "v=0 node-offer"}
    assert ice["type"] == "ice" and ice["from"] == viewer_id and ice["sdp_mline_index"] == 0
    result = json.loads(out)
    assert result["extensions"] == "", result  # offered by ws, declined by the server
    assert [m["type"] for m in result["seen"]] == ["peers", "answer"]
    assert result["seen"][1] == {"type": "answer", "from": host_id, "to": viewer_id, "sdp": "v=0 python-answer"}


# --- the README, word for word


def readme_quick_start() -> tuple[str, str, str]:
    """The quick start's client command, the line it types and the answer it shows."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^ {4}(\.venv/bin/websockets ws://\S+)\n {4}> (.+)\n {4}< (.+)$", text, re.M)
    assert m, "README.md: the quick start's websockets command, > input and < output lines"
    return m.group(1), m.group(2), m.group(3)


def test_the_readme_quick_start_command_works(daemon):
    command, typed, shown = readme_quick_start()
    url = re.search(r"ws://127\.0\.0\.1:8443(/\S*)", command)
    assert url, f"the README's command no longer points at make run's address: {command}"
    argv = command.replace("ws://127.0.0.1:8443", f"ws://127.0.0.1:{daemon.port}").split()
    argv[0] = str(ROOT / argv[0])
    # The CLI reads lines from stdin; keep it open until the answer is in.
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=str(ROOT))
    output: list[str] = []
    got = threading.Event()

    def read():
        for line in proc.stdout:
            output.append(line)
            if '"type":"peers"' in line:
                got.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.stdin.write(typed + "\n")
        proc.stdin.flush()
        assert got.wait(10), "".join(output)
    finally:
        proc.stdin.close()
        proc.wait(10)
        reader.join(5)
    answer = json.loads(re.search(r"(\{.*\})", next(line for line in output if '"type":"peers"' in line)).group(1))
    expected = json.loads(shown.replace('"peer_..."', '"peer_x"'))
    assert answer["type"] == expected["type"] == "peers" and answer["peers"] == expected["peers"] == []
    assert answer["peer_id"].startswith("peer_")
