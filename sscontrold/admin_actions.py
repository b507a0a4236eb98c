"""The operators' actions on the loopback admin listener (docs/cluster-admin.md):

    GET  /rooms                       rooms with their member counts
    GET  /peers?room=ROOM             a room's members (and the node of each)
    POST /kick        {"peer_id", "reason"}   the peer gets an error, then close 1008
    POST /close-room  {"room_id", "reason"}   the same for every member of the room
    POST /drain       {}              this node stops admitting and sends its clients away

With Redis they see and act on the whole cluster. A POST must be JSON and carry no
Origin header: a web page open in a browser on this host cannot forge one (a form
cannot send JSON, and a cross-origin fetch of JSON needs a preflight nobody answers).
Every action is an audit event naming who asked: the admin client's address and what
it says of itself in ``X-Sscontrol-Actor`` (sscontrol-signaling-ctl sends its user).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web import http
from twisted.web.server import NOT_DONE_YET, Request

from .domain.admin import AdminError
from .redis import RedisUnavailable
from .web import (HTTPError, JSONResource, client_gone, error_response, json_response, parse_json_object,
                  read_body)

log = Logger(namespace="sscontrold.admin")

MAX_BODY = 4096
MAX_ACTOR = 64


def actor_of(request: Request) -> str:
    peer = request.getClientAddress()
    who = f"{getattr(peer, 'host', 'unknown')}:{getattr(peer, 'port', '?')}"
    said = (request.getHeader(b"x-sscontrol-actor") or b"").decode("utf-8", "replace")[:MAX_ACTOR]
    said = "".join(c for c in said if c.isprintable())
    return f"{who} ({said})" if said else who


class _Action(JSONResource):
    def __init__(self, node):
        super().__init__()
        self.node = node

    def _run(self, request: Request, step) -> object:
        """Answer with the coroutine's result (200) or its AdminError."""
        d = Deferred.fromCoroutine(step)

        def done(body):
            self._write(request, json_response(request, http.OK, body))

        def failed(failure):
            if failure.check(AdminError):
                e = failure.value
                self._write(request, error_response(request, e.status, e.message))
            elif failure.check(RedisUnavailable):
                self._write(request, error_response(request, http.SERVICE_UNAVAILABLE,
                                                    "the cluster is unavailable: try again shortly"))
            else:
                log.failure("internal error in an admin action", failure)
                self._write(request, error_response(request, http.INTERNAL_SERVER_ERROR, "internal error"))

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    @staticmethod
    def _write(request: Request, body: bytes) -> None:
        if not request.finished and not client_gone(request):
            request.write(body)
            request.finish()

    def _body(self, request: Request) -> dict:
        if request.getHeader(b"origin") is not None:
            raise HTTPError(http.FORBIDDEN, "admin actions are not taken from web pages")
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            raise HTTPError(http.UNSUPPORTED_MEDIA_TYPE, "send a JSON body (Content-Type: application/json)")
        data = read_body(request, MAX_BODY)
        return parse_json_object(data) if data.strip() else {}

    def _post(self, request: Request, act: Callable[[dict, str], object]):
        try:
            body = self._body(request)
            return self._run(request, act(body, actor_of(request)))
        except HTTPError as e:
            return error_response(request, e.code, e.message)


def _string(body: dict, field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise HTTPError(http.BAD_REQUEST, f"missing or non-string field '{field}'")
    return value


class Rooms(_Action):
    def render_GET(self, request: Request):
        return self._run(request, self.node.admin.rooms(actor_of(request)))


class Peers(_Action):
    def render_GET(self, request: Request):
        args: dict[bytes, list[bytes]] = request.args or {}
        room = args.get(b"room")
        if not room:
            return error_response(request, http.BAD_REQUEST, "name the room: /peers?room=ROOM")
        try:
            room_id = room[0].decode("utf-8")
        except UnicodeDecodeError:
            return error_response(request, http.BAD_REQUEST, "room must be UTF-8")
        return self._run(request, self.node.admin.peers(room_id, actor_of(request)))


class Kick(_Action):
    def render_POST(self, request: Request):
        return self._post(request, lambda body, actor: self.node.admin.kick(
            _string(body, "peer_id"), body.get("reason"), actor))


class CloseRoom(_Action):
    def render_POST(self, request: Request):
        return self._post(request, lambda body, actor: self.node.admin.close_room(
            _string(body, "room_id"), body.get("reason"), actor))


class Drain(_Action):
    def __init__(self, node, start_drain: Callable[[], object]):
        super().__init__(node)
        self._start_drain = start_drain

    def render_POST(self, request: Request):
        return self._post(request, self._drain)

    async def _drain(self, body: dict, actor: str) -> dict:
        node = self.node
        already = node.draining
        node.admin.audit("warn", "drain", actor, already=already or None)
        if not already:
            self._start_drain()
        return {"draining": True, "already": already, "node": node.admin.node_id}


def admin_actions(node, start_drain: Callable[[], object]) -> dict[bytes, JSONResource]:
    return {b"rooms": Rooms(node), b"peers": Peers(node), b"kick": Kick(node),
            b"close-room": CloseRoom(node), b"drain": Drain(node, start_drain)}
