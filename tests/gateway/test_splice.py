"""splice_exactly: bytes move socket -> pipe -> socket, exact counts, end of file, limits."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

from corridor.gateway.splice import SpliceTimeout, splice_exactly


def _pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback (splice needs real sockets, not a socketpair's
    AF_UNIX, to behave as in the gateway)."""
    listener = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    for s in (a, b):
        s.setblocking(False)
    return a, b


async def _send_all(sock: socket.socket, data: bytes, close: bool) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, data)
    if close:
        sock.shutdown(socket.SHUT_WR)


async def _read_all(sock: socket.socket, limit: int | None = None) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    got = 0
    while limit is None or got < limit:
        chunk = await loop.sock_recv(sock, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _run(coro):
    return asyncio.run(coro)


def test_moves_exactly_count_bytes_and_leaves_the_rest() -> None:
    async def main() -> None:
        client, src = _pair()
        dst, reader = _pair()
        body = os.urandom(3 * 1024 * 1024 + 17)
        trailing = b"NEXT REQUEST"
        sender = asyncio.create_task(_send_all(client, body + trailing, close=False))
        receiver = asyncio.create_task(_read_all(reader, len(body)))
        moved = await splice_exactly(src, dst, len(body), idle_timeout_s=5)
        await sender
        assert moved == len(body)
        got = await receiver
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
        # What follows the body is still in src, for the next parser.
        assert await asyncio.get_running_loop().sock_recv(src, 100) == trailing
        for s in (client, src, dst, reader):
            s.close()

    _run(main())


def test_until_end_of_file() -> None:
    async def main() -> None:
        client, src = _pair()
        dst, reader = _pair()
        body = os.urandom(5 * 1024 * 1024)
        sender = asyncio.create_task(_send_all(client, body, close=True))
        receiver = asyncio.create_task(_read_all(reader))
        counted: list[int] = []
        moved = await splice_exactly(src, dst, None, idle_timeout_s=5, on_moved=counted.append)
        await sender
        dst.shutdown(socket.SHUT_WR)
        assert moved == len(body) == sum(counted)
        assert await receiver == body
        for s in (client, src, dst, reader):
            s.close()

    _run(main())


def test_source_ending_early_returns_what_moved() -> None:
    async def main() -> None:
        client, src = _pair()
        dst, reader = _pair()
        sender = asyncio.create_task(_send_all(client, b"x" * 1000, close=True))
        moved = await splice_exactly(src, dst, 5000, idle_timeout_s=5)
        await sender
        assert moved == 1000
        for s in (client, src, dst, reader):
            s.close()

    _run(main())


def test_a_slow_reader_holds_the_source_back_without_losing_bytes() -> None:
    async def main() -> None:
        client, src = _pair()
        dst, reader = _pair()
        body = os.urandom(32 * 1024 * 1024)  # more than the kernel buffers along the way
        sender = asyncio.create_task(_send_all(client, body, close=True))
        task = asyncio.create_task(splice_exactly(src, dst, None, idle_timeout_s=5))
        await asyncio.sleep(0.2)  # nobody reads: the kernel buffers fill, splice waits
        assert not task.done()
        got = await _read_all(reader, len(body))
        assert await task == len(body)
        await sender
        assert got == body
        for s in (client, src, dst, reader):
            s.close()

    _run(main())


def test_idle_source_times_out() -> None:
    async def main() -> None:
        client, src = _pair()
        dst, reader = _pair()
        with pytest.raises(SpliceTimeout):
            await splice_exactly(src, dst, 10, idle_timeout_s=0.2)
        for s in (client, src, dst, reader):
            s.close()

    _run(main())


def test_a_limit_raised_from_on_moved_stops_the_transfer() -> None:
    class OverLimit(Exception):
        pass

    async def main() -> None:
        client, src = _pair()
        dst, reader = _pair()
        sender = asyncio.create_task(_send_all(client, os.urandom(4 << 20), close=True))
        total = 0

        def count(n: int) -> None:
            nonlocal total
            total += n
            if total > 1 << 20:
                raise OverLimit

        with pytest.raises(OverLimit):
            await splice_exactly(src, dst, None, idle_timeout_s=5, on_moved=count)
        sender.cancel()
        for s in (client, src, dst, reader):
            s.close()

    _run(main())


def test_descriptors_are_not_leaked() -> None:
    async def main() -> None:
        client, src = _pair()
        dst, reader = _pair()
        before = len(os.listdir("/proc/self/fd"))
        sender = asyncio.create_task(_send_all(client, b"y" * 100, close=True))
        await splice_exactly(src, dst, None, idle_timeout_s=5)
        await sender
        assert len(os.listdir("/proc/self/fd")) == before
        for s in (client, src, dst, reader):
            s.close()

    _run(main())
