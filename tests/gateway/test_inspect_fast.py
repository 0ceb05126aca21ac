"""Large response bodies under TLS inspection go client-ward past h11, exact and in order.

The real gateway on loopback, inspecting (the rig of test_http_upgrade.py: CONNECT, the
session CA's leaf, an upstream TLS server with a test CA's certificate), and the keep-alive
file server of test_splice_body.py behind TLS. A big body arrives whole (hash), the
requests after it on the same client connection are still decided and checked (the
gateway dials again), HEAD and small bodies keep the upstream connection alive (h11
path), each request's event counts its body, and an upstream that dies inside the body
ends the client's connection instead of leaving it short.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path

from tests.gateway.test_http_upgrade import (
    HOST,
    LOOP,
    allow,
    header,
    read_head,
    read_response,
    rig,
    run,
    status,
    upstream_tls,
)
from tests.gateway.test_splice_body import BIG, SMALL, Files

from corridor.audit.events import Kind
from corridor.gateway.http_proxy import COPY_CHUNK, COPY_MIN_BYTES

TIMEOUT = 10.0


class TLSFiles(Files):
    """test_splice_body's file server (/big, /small, /late, /cut) behind TLS."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        super().__init__()
        self.tls = tls

    async def start(self) -> TLSFiles:
        self.server = await asyncio.start_server(self._handle, LOOP, 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


def get(port: int, path: str, method: str = "GET", host: str = HOST) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


def test_the_body_is_big_enough_to_take_the_fast_path_in_several_reads() -> None:
    assert len(BIG) >= COPY_MIN_BYTES
    assert len(BIG) > 4 * COPY_CHUNK and len(BIG) % COPY_CHUNK  # a ragged last read too


def test_big_bodies_arrive_whole_and_the_connection_goes_on(tmp_path: Path) -> None:
    async def body() -> None:
        files = await TLSFiles(upstream_tls(tmp_path)).start()
        async with rig(allow(files.port, inspect=True), tmp_path) as g:
            r, w = await g.open(files.port, tls=True)
            for path in ("/big", "/small", "/late", "/big"):
                w.write(get(files.port, path))
                head, got = await read_response(r)
                assert status(head) == 200, path
                assert header(head, b"content-length") == str(len(got)).encode()
                want = SMALL if path == "/small" else BIG
                assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest(), path
            w.close()
        files.close()
        # A copied body's upstream connection is closed, so /small (which also served
        # /late) and the last /big each dialled again; the client kept one connection.
        assert files.accepted == 3
        requests = g.of(Kind.HTTP)
        assert [e.path for e in requests] == ["/big", "/small", "/late", "/big"]
        assert [e.bytes_down for e in requests] == [len(BIG), len(SMALL), len(BIG), len(BIG)]
        assert all(e.status == 200 for e in requests)

    run(body())


def test_a_big_body_for_a_request_that_closes_the_connection(tmp_path: Path) -> None:
    async def body() -> None:
        files = await TLSFiles(upstream_tls(tmp_path)).start()
        async with rig(allow(files.port, inspect=True), tmp_path) as g:
            r, w = await g.open(files.port, tls=True)
            request = get(files.port, "/big").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
            w.write(request)
            _, got = await read_response(r)
            assert hashlib.sha256(got).digest() == hashlib.sha256(BIG).digest()
            assert await asyncio.wait_for(r.read(), TIMEOUT) == b""  # then the gateway closes
            w.close()
        files.close()
        assert [e.bytes_down for e in g.of(Kind.HTTP)] == [len(BIG)]

    run(body())


def test_the_request_after_a_big_body_is_still_checked(tmp_path: Path) -> None:
    async def body() -> None:
        files = await TLSFiles(upstream_tls(tmp_path)).start()
        async with rig(allow(files.port, inspect=True), tmp_path) as g:
            r, w = await g.open(files.port, tls=True)
            w.write(get(files.port, "/big"))
            _, got = await read_response(r)
            assert got == BIG
            w.write(get(files.port, "/small", host="other.test"))
            head, refusal = await read_response(r)
            assert status(head) == 403
            assert b"differs from the TLS server name" in refusal
            w.close()
        files.close()
        assert files.accepted == 1  # the refused request never went upstream

    run(body())


def test_head_and_small_bodies_keep_the_upstream_connection(tmp_path: Path) -> None:
    async def body() -> None:
        files = await TLSFiles(upstream_tls(tmp_path)).start()
        async with rig(allow(files.port, inspect=True), tmp_path) as g:
            r, w = await g.open(files.port, tls=True)
            w.write(get(files.port, "/big", "HEAD"))
            head = await read_head(r)
            assert status(head) == 200
            assert header(head, b"content-length") == str(len(BIG)).encode()
            w.write(get(files.port, "/small"))
            _, got = await read_response(r)
            assert got == SMALL
            w.close()
        files.close()
        assert files.accepted == 1  # no copied body: the upstream was kept alive

    run(body())


def test_an_upstream_dying_inside_the_body_ends_the_client_connection(tmp_path: Path) -> None:
    async def body() -> None:
        files = await TLSFiles(upstream_tls(tmp_path)).start()
        async with rig(allow(files.port, inspect=True), tmp_path) as g:
            r, w = await g.open(files.port, tls=True)
            w.write(get(files.port, "/cut"))
            head = await read_head(r)
            assert status(head) == 200
            rest = b""
            try:
                while piece := await asyncio.wait_for(r.read(1 << 20), TIMEOUT):
                    rest += piece
            except (ConnectionError, ssl.SSLError):
                pass  # a reset instead of close_notify: just as short
            assert len(rest) < len(BIG)  # short, and the client can tell (no EOF at length)
            w.close()
        files.close()

    run(body())
