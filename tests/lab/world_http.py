"""The world's web server: HTTP on 80 and HTTPS on 443 of every web name's address.

`route` is sans-IO (request in, `Reply` out); `HttpServer` moves bytes with h11, keeps
connections alive across requests and hands each `Request` to a responder: `web` (the
routes below) by default, or another service's (the package sites, the git host). Routes:
  GET /          "hello from <host>\\n", the host taken from Host (or SNI, or the address)
  GET /bytes/N   N bytes of deterministic content (see `payload_chunks`), streamed
  GET /headers   the request headers as a JSON object (lower-case names)
  POST /echo     the request body
Every request is logged before it is answered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import ssl
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import h11
from tests.lab.records import JsonlWriter

# Integrity tests stream up to this much; above it /bytes answers 400.
MAX_BYTES = 256 * 2**20
# Request bodies are buffered (for /echo); a larger one is refused with 413.
MAX_BODY = 64 * 2**20
READ_SIZE = 64 * 1024
# Content byte i is i % 251: a prime period, so a chunk lost, repeated or shifted by any
# amount under 251 bytes changes the hash. Blocks hold whole periods, so each starts aligned.
_PERIOD = 251
_BLOCK = bytes(range(_PERIOD)) * 261  # 65,511 bytes
_SERVER = "corridor-lab-world"


def payload_chunks(n: int) -> Iterator[bytes]:
    """The body of GET /bytes/N, in blocks of about 64 KiB."""
    full, rest = divmod(n, len(_BLOCK))
    for _ in range(full):
        yield _BLOCK
    if rest:
        yield _BLOCK[:rest]


def payload(n: int) -> bytes:
    """The whole body of GET /bytes/N (for small N in tests)."""
    return b"".join(payload_chunks(n))


def payload_sha256(n: int) -> str:
    """Hex SHA-256 of the body of GET /bytes/N, computed without holding it in memory."""
    digest = hashlib.sha256()
    for chunk in payload_chunks(n):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Reply:
    """A response: status, headers, and its body as chunks of known total length."""

    status: int
    content_type: str
    chunks: Iterable[bytes]
    length: int
    # Headers besides Content-Type, Content-Length and Server (WWW-Authenticate, ...).
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: int, body: str) -> Reply:
        data = body.encode()
        return cls(status, "text/plain; charset=utf-8", (data,), len(data))


def route(method: str, path: str, host: str, headers: dict[str, str], body: bytes) -> Reply:
    """The world's answer to one request."""
    path = path.split("?", 1)[0]
    if path == "/" and method == "GET":
        return Reply.text(200, f"hello from {host}\n")
    if path == "/headers" and method == "GET":
        data = json.dumps(headers, indent=1, sort_keys=True).encode() + b"\n"
        return Reply(200, "application/json", (data,), len(data))
    if path == "/echo" and method == "POST":
        kind = headers.get("content-type", "application/octet-stream")
        return Reply(200, kind, (body,), len(body))
    if path.startswith("/bytes/") and method == "GET":
        count = path.removeprefix("/bytes/")
        if not count.isdigit() or int(count) > MAX_BYTES:
            return Reply.text(400, f"/bytes/N takes a count from 0 to {MAX_BYTES}\n")
        n = int(count)
        return Reply(200, "application/octet-stream", payload_chunks(n), n)
    if path in ("/", "/headers", "/echo") or path.startswith("/bytes/"):
        return Reply.text(405, f"{method} is not served on {path}\n")
    return Reply.text(404, f"nothing at {path}\n")


@dataclass(frozen=True)
class Request:
    """One request as a responder sees it: header names in lower case, the body whole."""

    method: str
    path: str  # the request target, query included
    host: str  # see `served_host`
    headers: dict[str, str]
    body: bytes


# A service: one request in, its reply out (async, so a service may run a program).
Responder = Callable[[Request], Awaitable[Reply]]


async def web(request: Request) -> Reply:
    """The ordinary web routes (`route`) as a responder."""
    return route(request.method, request.path, request.host, request.headers, request.body)


def basic_credentials(headers: dict[str, str]) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic` header, or None without a valid one."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = text.partition(":")
    return (user, password) if colon else None


def unauthorized(realm: str) -> Reply:
    """401 with the challenge that makes clients (git, pip) send basic credentials."""
    data = b"authentication required\n"
    challenge = ("WWW-Authenticate", f'Basic realm="{realm}"')
    return Reply(401, "text/plain; charset=utf-8", (data,), len(data), (challenge,))


def served_host(host_header: str | None, sni: str | None, local_addr: str) -> str:
    """The name a request is for: Host without its port, else SNI, else the address."""
    if host_header:
        if host_header.startswith("["):  # an IPv6 literal: [2001:db8::1]:80
            return host_header[1:].split("]", 1)[0]
        return host_header.rsplit(":", 1)[0] if ":" in host_header else host_header
    return sni or local_addr


def tls_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """Server TLS with the lab certificate; the SNI a client sent is kept on its SSLObject."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_pem, key_pem)
    ctx.set_alpn_protocols(["http/1.1"])

    def remember_sni(obj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        obj.lab_sni = name

    ctx.sni_callback = remember_sni
    return ctx


class HttpServer:
    """Serves a responder (`web` unless told) over HTTP/1.1 with keep-alive, logging each
    request before it is answered."""

    def __init__(self, log: JsonlWriter, scheme: str, respond: Responder = web) -> None:
        self._log = log
        self._scheme = scheme
        self._respond = respond

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while await self._one_request(conn, reader, writer):
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # a client that misbehaves or leaves just loses its connection
        finally:
            writer.close()

    async def _one_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; True if the connection may carry another."""
        event = await _next_event(conn, reader)
        if not isinstance(event, h11.Request):
            return False
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        sni = getattr(writer.get_extra_info("ssl_object"), "lab_sni", None)
        local = writer.get_extra_info("sockname")
        peer = writer.get_extra_info("peername")
        host = served_host(headers.get("host"), sni, local[0])
        method = event.method.decode("ascii")
        path = event.target.decode("latin-1")
        self._log.write(
            {
                "scheme": self._scheme,
                "host": host,
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
        body = await _read_body(conn, reader)
        reply = (
            Reply.text(413, "body too large\n")
            if body is None
            else await self._respond(Request(method, path, host, headers, body))
        )
        await _send(conn, writer, reply)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(READ_SIZE))


async def _read_body(conn: h11.Connection, reader: asyncio.StreamReader) -> bytes | None:
    """The request body, or None when it exceeds MAX_BODY (the rest is left unread)."""
    parts: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.EndOfMessage):
            return b"".join(parts)
        if not isinstance(event, h11.Data):
            raise h11.RemoteProtocolError("request ended before its body")
        size += len(event.data)
        if size > MAX_BODY:
            return None
        parts.append(event.data)


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply) -> None:
    headers = [
        ("Content-Type", reply.content_type),
        ("Content-Length", str(reply.length)),
        ("Server", _SERVER),
        *reply.headers,
    ]
    writer.write(conn.send(h11.Response(status_code=reply.status, headers=headers)))
    for chunk in reply.chunks:
        writer.write(conn.send(h11.Data(data=chunk)))
        await writer.drain()
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()
