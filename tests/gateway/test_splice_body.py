"""Large plain-HTTP response bodies go client-ward by splice(2), exact and in order.

The real gateway on loopback (the rig of test_gw_server.py), an upstream that serves a
few MiB of random bytes: the body arrives whole (hash), the request after it on the
same client connection still works (the gateway dials again), HEAD and small bodies take
the h11 path, byte counts in the events include the spliced bytes, and an upstream that
dies inside the body ends the client's connection instead of leaving it short.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field

from tests.gateway.test_gw_server import allow_host, rig, run

from corridor.audit.events import Kind
from corridor.gateway.http_proxy import SPLICE_MIN_BYTES
from corridor.policy import Policy

BIG = os.urandom(3 * 1024 * 1024 + 5)
SMALL = b"small body"


@dataclass
class Files:
    """An HTTP/1.1 server on loopback, keep-alive: /big, /small, /late (the head, a pause,
    then the body), /cut (dies halfway through the body)."""

    accepted: int = 0
    port: int = 0
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> Files:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(w)
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ", 2)[:2]
                body = SMALL if path == b"/small" else BIG
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                if method == b"HEAD":
                    continue
                if path == b"/late":  # the head alone first: nothing of the body buffered
                    await w.drain()
                    await asyncio.sleep(0.2)
                if path == b"/cut":
                    w.write(body[: len(body) // 2])
                    await w.drain()
                    w.transport.abort()
                    return
                w.write(body)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()


async def _response(r: asyncio.StreamReader, head_only: bool = False) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = b"" if head_only else await asyncio.wait_for(r.readexactly(length), 10)
    return head, body


def _get(port: int, path: str, method: str = "GET") -> bytes:
    target = f"localhost:{port}"
    return f"{method} http://{target}{path} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


def test_a_big_body_arrives_whole_and_the_connection_goes_on() -> None:
    assert len(BIG) >= SPLICE_MIN_BYTES

    async def body() -> None:
        files = await Files().start()
        policy = Policy(allow=[allow_host("localhost", files.port)])
        async with rig(policy, unsafe=("127.0.0.0/8",)) as g:
            r, w = await g.open()
            for path in ("/big", "/small", "/late", "/big"):
                w.write(_get(files.port, path))
                head, got = await _response(r)
                assert head.startswith(b"HTTP/1.1 200")
                want = SMALL if path == "/small" else BIG
                assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest(), path
            w.close()
            await w.wait_closed()
            for _ in range(50):  # the gateway records the end once it sees the close
                ends = [e for e in g.events if e.kind is Kind.CONNECTION_END]
                if ends:
                    break
                await asyncio.sleep(0.05)
        files.close()
        # A spliced body's upstream connection is closed, so /small (which also served
        # /late) and the last /big each dialled again; the client kept one connection.
        assert files.accepted == 3
        assert sum(e.bytes_down or 0 for e in ends) > 3 * len(BIG)

    run(body())


def test_head_and_small_bodies_stay_on_the_h11_path() -> None:
    async def body() -> None:
        files = await Files().start()
        policy = Policy(allow=[allow_host("localhost", files.port)])
        async with rig(policy, unsafe=("127.0.0.0/8",)) as g:
            r, w = await g.open()
            w.write(_get(files.port, "/big", "HEAD"))
            head, _ = await _response(r, head_only=True)
            assert head.startswith(b"HTTP/1.1 200")
            w.write(_get(files.port, "/small"))
            _, got = await _response(r)
            assert got == SMALL
            w.close()
        files.close()
        assert files.accepted == 1  # no splice happened: the upstream was kept alive

    run(body())


def test_an_upstream_dying_inside_the_body_ends_the_client_connection() -> None:
    async def body() -> None:
        files = await Files().start()
        policy = Policy(allow=[allow_host("localhost", files.port)])
        async with rig(policy, unsafe=("127.0.0.0/8",)) as g:
            r, w = await g.open()
            w.write(_get(files.port, "/cut"))
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            rest = await asyncio.wait_for(r.read(), 10)  # until the gateway closes
            assert len(rest) < len(BIG)  # short, and the client can tell (no EOF at length)
            w.close()
        files.close()

    run(body())
