"""docs/protocol.md stays true to the code, mechanically.

The facts are read from the source (its syntax tree, not by running it) and each must be
in the right table of the doc: every message type the client dispatch handles (with every
field its handler reads), every message type the server sends (with every field it puts
in), every `error` code, every close code with its reason, every HTTP error text of the
REST and TURN resources, and the defaults of the settings the doc quotes. The reverse holds
too where it can: the doc lists no message type, error code or close code the code does not
have. The collectors are also run on made-up source, so that a new code added without its
line in the doc is shown to fail.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from conftest import ROOT
from sscontrold import config
from sscontrold.domain import auth as auth_module
from sscontrold.domain.admin import Administration
from sscontrold.domain.client import BadMessage
from sscontrold.domain.cluster import UNDELIVERED
from sscontrold.domain.sessions import SessionError
from sscontrold.protocol import RESUMABLE_CLOSE_CODES
from sscontrold.turn import issue_credentials
from sscontrold.turn import turn_password as server_turn_password

DOC = ROOT / "docs" / "protocol.md"
PACKAGE = ROOT / "sscontrold"
# The control CLI speaks the protocol as a client: its messages are not the server's.
CLIENT_SIDE = {"ctl.py"}


def sources() -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))
            if p.name not in CLIENT_SIDE}


# --- reading the doc


def doc_text() -> str:
    return DOC.read_text()


def section(text: str, title: str) -> str:
    """The body under the heading ``title`` (any level), up to the next heading of that
    level or higher."""
    match = re.search(rf"^(#+) {re.escape(title)}\s*$", text, re.M)
    assert match, f"docs/protocol.md has no heading {title!r}"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def table_rows(text: str) -> list[list[str]]:
    """Every row of every Markdown table in ``text`` (header rows included, rules not)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-| :]+\|", line.strip()):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def rows_by_first_cell(text: str) -> dict[str, str]:
    """Each name in backticks in a row's first cell -> the whole row's text."""
    out: dict[str, str] = {}
    for row in table_rows(text):
        for name in ticked(row[0]):
            out[name] = out.get(name, "") + " | ".join(row)
    return out


# --- reading the code


def _const(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _func_name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _literal_parts(node, names: dict[str, ast.AST]) -> list[str] | None:
    """The literal text of a string expression: one part for a constant, the constant
    pieces of an f-string, through a local or module name; None if it is not a string."""
    if isinstance(node, ast.Name) and node.id in names:
        node = names[node.id]
    if _const(node) is not None:
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if _const(v) is not None and v.value.strip()]
    return None


def _string_names(tree: ast.AST) -> dict[str, ast.AST]:
    """Name -> string expression, for every simple assignment of a string (module level
    or local: the close reasons and error texts are named that way)."""
    names = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and (_const(node.value) is not None or isinstance(node.value, ast.JoinedStr))):
            names[node.targets[0].id] = node.value
    return names


BAD_MESSAGE_DEFAULT = inspect.signature(BadMessage.__init__).parameters["code"].default


def error_codes(files: dict[str, str]) -> set[str]:
    """Every `code` an `error` message can carry: the code argument of each
    ``BadMessage(...)`` and ``send_error(...)`` (BadMessage's default when left out)."""
    codes = set()
    for name, text in files.items():
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call) or _func_name(node) not in ("BadMessage", "send_error"):
                continue
            arg = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "code"), None)
            if arg is None:
                assert _func_name(node) == "BadMessage", f"{name}:{node.lineno}: send_error without a code"
                codes.add(BAD_MESSAGE_DEFAULT)
            elif _const(arg) is not None:
                codes.add(arg.value)
            else:  # only passing on a code already collected (``e.code``) is allowed
                assert isinstance(arg, ast.Attribute) and arg.attr == "code", \
                    f"{name}:{node.lineno}: an error code that is not a literal cannot be checked against the doc"
    return codes


def close_constants(files: dict[str, str]) -> dict[str, int]:
    """Module-level ``CLOSE_* = <int>`` constants: the close codes the server sends."""
    out = {}
    for text in files.values():
        for node in ast.parse(text).body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id.startswith("CLOSE_") and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, int)):
                out[node.targets[0].id] = node.value.value
    return out


def close_reasons(files: dict[str, str]) -> list[tuple[int, list[str]]]:
    """(code, literal parts of the reason) of every ``.close(CLOSE_X, reason)`` and
    ``.release(CLOSE_X, reason)`` call."""
    constants = close_constants(files)
    out = []
    for name, text in files.items():
        tree = ast.parse(text)
        names = _string_names(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and _func_name(node) in ("close", "release") and len(node.args) == 2
                    and isinstance(node.args[0], ast.Name) and node.args[0].id.startswith("CLOSE_")):
                parts = _literal_parts(node.args[1], names)
                assert parts, f"{name}:{node.lineno}: a close reason that is not a string literal"
                out.append((constants[node.args[0].id], parts))
    return out


def _methods(tree: ast.AST, class_name: str) -> dict[str, ast.FunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {f.name: f for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    raise AssertionError(f"no class {class_name}")


def _fields_read(func: ast.AST, methods: dict[str, ast.AST], seen: set[str]) -> set[str]:
    """The message fields a handler reads: ``self._str(message, "f")``, ``self._int(...)``,
    ``message.get("f")``, ``message["f"]``, ``"f" in message``, through the ``self.`` methods it calls."""
    fields = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Call):
            name = _func_name(node)
            if name in ("_str", "_int") and len(node.args) > 1 and _const(node.args[1]):
                fields.add(node.args[1].value)
            elif (name == "get" and isinstance(node.func.value, ast.Name) and node.func.value.id == "message"
                  and node.args and _const(node.args[0])):
                fields.add(node.args[0].value)
            elif (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
                  and node.func.value.id == "self" and name in methods and name not in seen):
                seen.add(name)
                fields |= _fields_read(methods[name], methods, seen)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "message":
            if _const(node.slice):
                fields.add(node.slice.value)
        elif (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.In)
              and _const(node.left) and isinstance(node.comparators[0], ast.Name)
              and node.comparators[0].id == "message"):
            fields.add(node.left.value)
    return fields - {"type"}


def client_messages(files: dict[str, str]) -> dict[str, set[str]]:
    """Client-to-server type -> fields read: ``Client.handle_<type>`` and each extension
    registered as ``<node>.extensions["<type>"]`` (its handler is a function ``handle_<type>``)."""
    trees = {name: ast.parse(text) for name, text in files.items()}
    out: dict[str, set[str]] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == "Client":
                methods = _methods(tree, "Client")
                for name, func in methods.items():
                    if name.startswith("handle_"):
                        out[name[len("handle_"):]] = _fields_read(func, methods, {name})
    for tree in trees.values():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "extensions" and _const(node.slice) and isinstance(node.ctx, ast.Store)):
                kind = node.slice.value
                handlers = [f for t in trees.values() for f in ast.walk(t)
                            if isinstance(f, ast.FunctionDef) and f.name == f"handle_{kind}"]
                assert handlers, f"extension {kind!r} has no function handle_{kind}"
                out[kind] = set().union(*(_fields_read(f, {}, set()) for f in handlers))
    return out


def server_messages(files: dict[str, str]) -> dict[str, set[str]]:
    """Server-to-client type -> keys, from every dict literal with a literal ``"type"``."""
    out: dict[str, set[str]] = {}
    for text in files.values():
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Dict):
                continue
            keys = {k.value: v for k, v in zip(node.keys, node.values, strict=True) if k is not None and _const(k)}
            kind = keys.get("type")
            if kind is not None and _const(kind):
                out.setdefault(kind.value, set()).update(k for k in keys if k != "type")
    # turn_credentials spreads the credentials dict: its keys come from issue_credentials
    out.setdefault("turn_credentials", set()).update(issue_credentials("s", "u", 60, ["turn:x"], 0))
    return out


# --- the checks


def test_every_client_message_and_field_is_documented():
    rows = rows_by_first_cell(section(doc_text(), "Client to server"))
    handled = client_messages(sources())
    assert {"auth", "join", "offer", "answer", "ice", "resume", "turn"} <= set(handled)  # the collector works
    for kind, fields in sorted(handled.items()):
        assert kind in rows, f"message type {kind!r} (client to server) is not in docs/protocol.md"
        for field in sorted(fields):
            assert f"`{field}`" in rows[kind], f"field {field!r} of {kind!r} is not in its row of docs/protocol.md"
    stale = set(rows) - set(handled) - {"type"}
    assert not stale, f"docs/protocol.md lists client message types the server does not handle: {stale}"


def test_every_server_message_and_field_is_documented():
    rows = rows_by_first_cell(section(doc_text(), "Server to client"))
    sent = server_messages(sources())
    assert {"error", "peers", "new_peer", "peer_left", "resumed", "turn_credentials"} <= set(sent)
    for kind, fields in sorted(sent.items()):
        assert kind in rows, f"message type {kind!r} (server to client) is not in docs/protocol.md"
        for field in sorted(fields):
            assert f"`{field}`" in rows[kind], f"field {field!r} of {kind!r} is not in its row of docs/protocol.md"
    relayed = {"offer", "answer", "ice"}  # sent with the type the client gave (a variable)
    stale = set(rows) - set(sent) - relayed - {"type"}
    assert not stale, f"docs/protocol.md lists server message types the server never sends: {stale}"


def test_every_error_code_is_documented():
    rows = rows_by_first_cell(section(doc_text(), "Errors"))
    # plus the codes of cross-node relays that did not arrive (cluster.undelivered_error)
    codes = error_codes(sources()) | set(UNDELIVERED) | set(Administration.REMOVAL_CODES)
    assert {"bad_message", "auth_required", "unknown_peer", "resume_failed", "turn_unavailable"} <= codes
    missing = codes - set(rows)
    assert not missing, f"error codes the server sends but docs/protocol.md does not list: {sorted(missing)}"
    stale = set(rows) - codes - {"code"}
    assert not stale, f"docs/protocol.md lists error codes the server never sends: {sorted(stale)}"


def close_rows() -> dict[int, list[str]]:
    rows: dict[int, list[str]] = {}
    for row in table_rows(section(doc_text(), "Close codes")):
        if row[0].isdigit():
            rows.setdefault(int(row[0]), []).append(" | ".join(row))
    return rows


def test_every_close_code_and_reason_is_documented():
    rows = close_rows()
    constants = close_constants(sources())
    assert {1007, 1008, 1009, 1011, 1012, 4000} <= set(constants.values())
    for name, code in sorted(constants.items()):
        assert code in rows, f"close code {code} ({name}) is not in docs/protocol.md"
    reasons = close_reasons(sources())
    assert len(reasons) >= 7
    for code, parts in reasons:
        for part in parts:
            assert any(part in row for row in rows[code]), \
                f"close reason {part!r} of {code} is not in its row of docs/protocol.md"
    # Autobahn's own: a protocol violation, and sizes (also ours by name)
    assert {1002, 1009} <= set(rows)
    # the resume column says yes exactly for the codes the server holds peers on
    held = {code for code, texts in rows.items() if any(t.rstrip().endswith("**yes**") for t in texts)}
    assert held == set(RESUMABLE_CLOSE_CODES)


def _http_error_texts(files: dict[str, str]) -> list[tuple[str, list[str]]]:
    """Literal texts of every HTTP error the REST, TURN and web resources answer, and of
    every auth refusal (the TURN endpoint answers those too)."""
    out = []
    classes = {c.__name__ for c in _subclasses(SessionError)} - {"BadRequest"}  # field errors: too many forms
    for name in ("rest.py", "turn.py", "web.py", "domain/sessions.py", "redis_sessions.py", "domain/auth.py"):
        tree = ast.parse(files[name])
        names = _string_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = _func_name(node)
            if func == "error_response" and len(node.args) == 3:
                arg = node.args[2]
            elif func == "HTTPError" and len(node.args) == 2:
                arg = node.args[1]
            elif func in classes and len(node.args) == 1:
                arg = node.args[0]
            elif func == "AuthRefused" and len(node.args) == 2:
                arg = node.args[1]
            else:
                continue
            parts = _literal_parts(arg, names)
            if parts is not None:  # otherwise a message passed on (e.message, str(e)), checked at its source
                out.append((f"{name}:{node.lineno}", parts))
    return out


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_http_error_text_is_documented():
    import sscontrold.redis_sessions  # noqa: F401  (its SessionError subclass)

    text = doc_text()
    found = _http_error_texts(sources())
    assert len(found) >= 25
    for where, parts in found:
        for part in parts:
            assert part.strip() in text, f"{where}: error text {part!r} is not in docs/protocol.md"
    for cls in _subclasses(SessionError):
        assert f"| {cls.status} |" in section(text, "2. REST session API"), cls


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ", ".join(value) or "(none)"
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def settings_rows() -> dict[str, str]:
    """setting -> default, from every table whose header is ``setting | default | ...``."""
    out, in_table = {}, False
    for line in doc_text().splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == ["setting", "default"]:
            in_table = True
        elif in_table and cells[0].startswith("`"):
            out[cells[0].strip("`")] = cells[1]
    return out


def test_settings_quoted_with_their_defaults():
    rows = settings_rows()
    for name, default in rows.items():
        assert name in config.FIELDS_BY_NAME, f"docs/protocol.md quotes an unknown setting {name!r}"
        assert default == _shown(config.FIELDS_BY_NAME[name].default), \
            f"docs/protocol.md gives {name} the default {default!r}, the code {config.FIELDS_BY_NAME[name].default!r}"
    # every peer-facing limit is in a table: a new one cannot be added without its line
    wanted = {f.name for f in config.FIELDS if f.section in ("limits", "sessions")}
    wanted |= {"auth_window", "auth_clock_skew", "auth_timeout", "nonce_store_max",
               "turn_secrets", "turn_uris", "turn_ttl", "turn_user"}
    assert not wanted - set(rows), f"settings missing from docs/protocol.md: {sorted(wanted - set(rows))}"


def test_the_docs_code_examples_compute_what_the_server_checks():
    blocks = re.findall(r"```python\n(.*?)```", doc_text(), re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    for key, device, ts, nonce in (("k", "d", 1, "n"), ("key-é", "host-1", 1_700_000_000, "a:b")):
        assert namespace["auth_token"](key, device, ts, nonce) == auth_module.compute_token(key, device, ts, nonce)
    for secret, username in (("north-secret", "1700003600:alice"), ("s", "1:x")):
        assert namespace["turn_password"](secret, username) == server_turn_password(secret, username)


def test_links_inside_the_doc_land_on_headings():
    text = doc_text()
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    for anchor in re.findall(r"\]\(#([\w-]+)\)", text):
        assert anchor in anchors, f"docs/protocol.md links to #{anchor}, which is no heading"
    for target in re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]+)?\)", text):
        assert (DOC.parent / target).exists(), target


# --- the checks can fail: a new code, type or close code without its line in the doc


NEW_CODE = '''
class Client:
    def handle_brand_new(self, message):
        self._str(message, "brand_new_field", 10)
        raise BadMessage("no", "brand_new_code")

    def other(self):
        self.send_error("no", "another_new_code")
        self.send({"type": "brand_new_reply", "brand_new_key": 1})
        self.close(CLOSE_BRAND_NEW, "brand new reason")

CLOSE_BRAND_NEW = 4999
'''


def test_the_collectors_see_new_codes_that_the_doc_lacks():
    files = {"new.py": NEW_CODE}
    assert error_codes(files) == {"brand_new_code", "another_new_code"}
    assert not error_codes(files) & set(rows_by_first_cell(section(doc_text(), "Errors")))
    assert client_messages(files) == {"brand_new": {"brand_new_field"}}
    assert "brand_new" not in rows_by_first_cell(section(doc_text(), "Client to server"))
    assert server_messages(files)["brand_new_reply"] == {"brand_new_key"}
    assert close_constants(files) == {"CLOSE_BRAND_NEW": 4999} and 4999 not in close_rows()
    assert close_reasons(files) == [(4999, ["brand new reason"])]
    with pytest.raises(AssertionError, match="not a literal"):
        error_codes({"bad.py": "BadMessage('x', pick_code())"})


def test_the_doc_is_referred_to_and_the_shared_file_is_not():
    readme = (ROOT / "README.md").read_text()
    assert "(docs/protocol.md)" in section(readme, "Protocol")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "tests").glob("*.py")),
                 *sorted(PACKAGE.rglob("*.py")), *sorted((ROOT / "bench").glob("*/*.js"))]:
        if path.resolve() == Path(__file__).resolve():
            continue
        text = path.read_text()
        assert "shared/protocol" not in text, path
        for line in text.splitlines():
            if "protocol.md" in line:
                assert re.search(r"docs/protocol\.md|\(protocol\.md[)#]|\]\(\.\./protocol\.md", line), \
                    f"{path.relative_to(ROOT)}: {line.strip()!r} should name docs/protocol.md"


# --- the handshake answers the doc describes, against the real daemon


def handshake(port: int, extra: str = "", path: str = "/ws", version: str = "13") -> tuple[str, dict[str, str]]:
    """(status line, lower-cased headers) of the answer to a raw upgrade request."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   f"Sec-WebSocket-Version: {version}\r\n{extra}\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    return head[0], {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}


def test_handshake_answers_as_documented(daemon):
    text = doc_text()
    # compression offered as browsers offer it: declined, 101 without the extension
    status, headers = handshake(daemon.port, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
    assert status.startswith("HTTP/1.1 101") and "sec-websocket-extensions" not in headers
    assert headers["server"] == "sscontrol-signaling"
    # a malformed offer: 400 with the parser's words, as quoted
    status, _ = handshake(daemon.port, "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=99\r\n")
    assert status.startswith("HTTP/1.1 400 ") and status[len("HTTP/1.1 400 "):].replace("\n", " ") in \
        " ".join(text.split())
    # a subprotocol offered: 101 naming ours, else the first offered
    status, headers = handshake(daemon.port, "Sec-WebSocket-Protocol: chat, sscontrol\r\n")
    assert status.startswith("HTTP/1.1 101") and headers["sec-websocket-protocol"] == "sscontrol"
    status, headers = handshake(daemon.port, "Sec-WebSocket-Protocol: app.v2, json\r\n")
    assert status.startswith("HTTP/1.1 101") and headers["sec-websocket-protocol"] == "app.v2"
    assert "sec-websocket-protocol" not in handshake(daemon.port)[1]
    assert "`sscontrol` when it is\noffered, otherwise the first name offered" in text
    assert handshake(daemon.port, "Sec-WebSocket-Protocol: a, a\r\n")[0].startswith("HTTP/1.1 400")
    # origins: any, null (file:// pages, sandboxed frames) included
    assert handshake(daemon.port, "Origin: https://app.example\r\n")[0].startswith("HTTP/1.1 101")
    assert handshake(daemon.port, "Origin: null\r\n")[0].startswith("HTTP/1.1 101")
    assert "`Origin: null` (sandboxed frames, pages opened from `file://`) included" in text
    # versions and paths
    status, headers = handshake(daemon.port, version="12")
    assert status.startswith("HTTP/1.1 400") and headers["sec-websocket-version"] == "13,8"
    for path in ("/", "/ws", "/ws/anything", "/ws?x=1"):
        assert handshake(daemon.port, path=path)[0].startswith("HTTP/1.1 101"), path
    assert handshake(daemon.port, path="/elsewhere")[0].startswith("HTTP/1.1 404")
