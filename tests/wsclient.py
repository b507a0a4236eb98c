"""Client helpers for the tests: the `websockets` library (an independent
implementation) for well-behaved peers, and a raw socket peer for misbehaviour
the library would not let us produce."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import time
import uuid

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

__all__ = ["ConnectionClosed", "Peer", "RawPeer", "auth_message", "connect"]


def auth_message(api_key: str, device_id: str = "device-1", timestamp: int | None = None,
                 nonce: str | None = None) -> dict:
    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or uuid.uuid4().hex
    token = hmac.new(api_key.encode(), f"{device_id}:{timestamp}:{nonce}".encode(), hashlib.sha256).hexdigest()
    return {"type": "auth", "device_id": device_id, "api_key": "", "timestamp": timestamp,
            "nonce": nonce, "token": token}


class Peer:
    """A well-behaved JSON peer on the websockets library."""

    def __init__(self, ws):
        self.ws = ws

    def send(self, message) -> None:
        self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    def recv(self, timeout: float = 5.0) -> dict:
        return json.loads(self.ws.recv(timeout=timeout))

    def request(self, message, timeout: float = 5.0) -> dict:
        self.send(message)
        return self.recv(timeout)

    def nothing(self, wait: float = 0.3) -> bool:
        """True if no message arrives within ``wait`` seconds."""
        try:
            self.ws.recv(timeout=wait)
        except TimeoutError:
            return True
        return False

    def closed_with(self, timeout: float = 10.0) -> int | None:
        """Read until the server closes; return its close code."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd is not None else None
        except TimeoutError:
            raise AssertionError("the server did not close the connection") from None
        raise AssertionError("the server did not close the connection")

    def join(self, room: str) -> dict:
        reply = self.request({"type": "join", "room_id": room})
        assert reply["type"] == "peers", reply
        return reply

    def close(self) -> None:
        self.ws.close()


def connect(url: str, ssl=None, **kw) -> Peer:
    """A peer as real clients connect: the library's defaults, permessage-deflate
    offered as every browser offers it. A test that needs other options passes them.
    (``legacy=True`` is the library's direct-call form, without a ``with`` block.)"""
    return Peer(ws_connect(url, ssl=ssl, open_timeout=5, close_timeout=2, max_size=None, legacy=True, **kw))


class RawPeer:
    """A hand-made WebSocket client on a plain socket: it can stop answering
    pings, drop TCP without a close frame, or send frames the library refuses."""

    def __init__(self, host: str, port: int, path: str = "/ws", source: str | None = None,
                 rcvbuf: int | None = None):
        """``source``: the local address to connect from; ``rcvbuf``: a small receive
        buffer, for a peer that does not read (so the server's queue fills sooner)."""
        self.sock = socket.socket()
        self.sock.settimeout(5)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"handshake refused: {head!r}")
            head += chunk
        status_line = head.split(b"\r\n", 1)[0]
        self.status = int(status_line.split()[1])
        self.buffer = head.split(b"\r\n\r\n", 1)[1]

    @staticmethod
    def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True, rsv: int = 0,
              long_length: bool = False) -> bytes:
        """A client frame as bytes (``long_length``: a 16-bit length even when 7 bits do,
        which RFC 6455 forbids)."""
        head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
        mask_bit = 0x80 if masked else 0
        n = len(payload)
        if n < 126 and not long_length:
            head += bytes([mask_bit | n])
        elif n < 65536:
            head += bytes([mask_bit | 126]) + struct.pack("!H", n)
        else:
            head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
        if not masked:
            return head + payload
        mask = os.urandom(4)
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.sock.sendall(self.frame(opcode, payload, fin))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_json(self, message: dict) -> None:
        self.send_frame(0x1, json.dumps(message).encode())

    def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        self.sock.settimeout(timeout)
        while True:
            if len(self.buffer) >= 2:
                b1 = self.buffer[1] & 0x7F
                offset = 2
                if b1 == 126:
                    if len(self.buffer) < 4:
                        b1 = None
                    else:
                        b1, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
                elif b1 == 127:
                    if len(self.buffer) < 10:
                        b1 = None
                    else:
                        b1, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
                if b1 is not None and len(self.buffer) >= offset + b1:
                    opcode = self.buffer[0] & 0x0F
                    payload = self.buffer[offset:offset + b1]
                    self.buffer = self.buffer[offset + b1:]
                    return opcode, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buffer += chunk

    def recv_json(self, timeout: float = 5.0) -> dict:
        while True:
            opcode, payload = self.read_frame(timeout)
            if opcode == 0x1:
                return json.loads(payload)
            if opcode == 0x8:
                raise ConnectionError(f"closed: {payload!r}")

    def close_code(self, timeout: float = 10.0) -> int | None:
        """Read (without answering pings) until a close frame or EOF."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                opcode, payload = self.read_frame(max(0.01, deadline - time.monotonic()))
            except (ConnectionError, OSError):
                return None
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        raise AssertionError("no close")

    def drop(self) -> None:
        """Vanish without a close frame: an abortive TCP close (RST)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
