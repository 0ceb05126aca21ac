"""The world's WebSocket echo (RFC 6455), served on HTTPS for a name whose site is `ws`.

`GET /ws` with a valid handshake gets `101 Switching Protocols`; then every text or
binary message is sent back as it came, a ping gets its pong, and a close is answered with
a close before the server hangs up (the server closes TCP first, as RFC 6455 7.1.1 asks).
Anything else gets a plain 426 or 404. Handshakes are logged like any web request (the
web log: method, path, headers), so tests see what the gateway sent upstream. Messages
are not logged: the echo itself (unmasked by the server, framed again) shows they came.

The frame code is sans-IO (`parse_frame`, `frame`), small on purpose: client frames must
be masked, no fragmentation, no extensions; anything else closes with a protocol error.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import struct

from tests.lab.records import JsonlWriter
from tests.lab.world_http import served_host

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 4.2.2
MAX_HEAD = 16 * 1024
MAX_MESSAGE = 1024 * 1024  # the lab's clients send short messages
READ_SIZE = 64 * 1024

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
PROTOCOL_ERROR = 1002  # close code


class FrameError(Exception):
    """A frame the echo does not accept: the connection closes with PROTOCOL_ERROR."""


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def frame(
    opcode: int, payload: bytes, mask: bytes | None = None, *, fin: bool = True, rsv: int = 0
) -> bytes:
    """One frame (final unless fin=False; `rsv` sets reserved bits); `mask` (4 bytes) for a
    client's frame, None for a server's."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if mask is not None else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def parse_frame(data: bytes, *, masked: bool) -> tuple[int, bytes, int] | None:
    """(opcode, unmasked payload, bytes used) of the first frame in `data`, None if partial.

    Raises FrameError for fragments, reserved bits, a mask where none may be (or none
    where one must be) and messages over MAX_MESSAGE.
    """
    if len(data) < 2:
        return None
    first, second = data[0], data[1]
    if first & 0x70 or not first & 0x80:
        raise FrameError("fragmented frame or reserved bits set")
    if bool(second & 0x80) != masked:
        raise FrameError("client frames must be masked, server frames must not")
    n, at = second & 0x7F, 2
    if n == 126:
        if len(data) < 4:
            return None
        n, at = struct.unpack("!H", data[2:4])[0], 4
    elif n == 127:
        if len(data) < 10:
            return None
        n, at = struct.unpack("!Q", data[2:10])[0], 10
    if n > MAX_MESSAGE:
        raise FrameError("message too large")
    mask = b""
    if masked:
        if len(data) < at + 4:
            return None
        mask, at = data[at : at + 4], at + 4
    if len(data) < at + n:
        return None
    payload = data[at : at + n]
    if masked:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload, at + n


class WsServer:
    """The echo: handshake, then messages back until the client closes."""

    def __init__(self, log: JsonlWriter) -> None:
        self._log = log

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await self._handshake(reader, writer):
                await self._echo(reader, writer)
        except (
            ConnectionError,
            ssl.SSLError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, path = [*lines[0].split(" "), "", ""][:2]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                key = name.strip().lower()
                headers[key] = (
                    f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
                )
        sni = getattr(writer.get_extra_info("ssl_object"), "lab_sni", None)
        local, peer = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
        self._log.write(
            {
                "scheme": "https",
                "host": served_host(headers.get("host"), sni, local[0]),
                "sni": sni,
                "method": method,
                "path": path,
                "headers": headers,
                "src": peer[0],
                "sport": peer[1],
                "dst": local[0],
                "dport": local[1],
            }
        )
        upgrade = "websocket" in headers.get("upgrade", "").lower()
        connection = "upgrade" in headers.get("connection", "").lower()
        key = headers.get("sec-websocket-key")
        if path != "/ws":
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return False
        if method != "GET" or not (upgrade and connection and key):
            writer.write(
                b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n"
            )
            return False
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key.encode()) + b"\r\n\r\n"
        )
        await writer.drain()
        return True

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        while True:
            try:
                parsed = parse_frame(buffer, masked=True)
            except FrameError:
                writer.write(frame(CLOSE, struct.pack("!H", PROTOCOL_ERROR)))
                return
            if parsed is None:
                data = await reader.read(READ_SIZE)
                if not data:
                    return
                buffer += data
                continue
            opcode, payload, used = parsed
            buffer = buffer[used:]
            if opcode in (TEXT, BINARY):
                writer.write(frame(opcode, payload))
            elif opcode == PING:
                writer.write(frame(PONG, payload))
            elif opcode == CLOSE:
                writer.write(frame(CLOSE, payload[:2]))
                await writer.drain()
                return
            await writer.drain()
