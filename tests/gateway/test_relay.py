"""The relay on real loopback sockets: bytes and counts, half-close, backpressure, caps,
timeouts, resets, and the one sweep timer shared by every tunnel.

Each test builds two TCP connections the way the gateway holds them: a "sandbox" peer
talking to the gateway side of connection A, and the gateway side of connection B
talking to an "upstream" peer. `relay` joins the two gateway sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from ipaddress import ip_address

import pytest

from corridor.gateway import relay as relay_mod
from corridor.gateway.limits import GatewayLimits, LimitReached, SessionBudget
from corridor.gateway.relay import (
    HALF_CLOSED,
    IDLE,
    RESET,
    Counters,
    RelayTimeouts,
    relay,
    reset,
)
from corridor.gateway.relay import Tunnel as RelayTunnel
from corridor.gateway.upstream import dial_protocol

LOOP = "127.0.0.1"
LONG = RelayTimeouts(idle_s=60.0, half_closed_s=60.0)
TICK = 0.3  # a short timeout; the sweep runs at a quarter of it
SLACK = 3.0


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connection() -> tuple[Streams, Streams]:
    """(outer, inner): both ends of one loopback TCP connection, as streams."""
    inner: asyncio.Future[Streams] = asyncio.get_running_loop().create_future()

    async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        inner.set_result((r, w))

    server = await asyncio.start_server(accept, LOOP, 0)
    port = server.sockets[0].getsockname()[1]
    outer = await asyncio.open_connection(LOOP, port)
    got = await inner
    server.close()
    return outer, got


@dataclass
class Tunnel:
    sandbox: Streams  # the test's client
    upstream: Streams  # the test's server
    counters: Counters
    task: asyncio.Task[str | None]


async def tunnel(
    timeouts: RelayTimeouts = LONG, budget: SessionBudget | None = None, before=None
) -> Tunnel:
    """Two connections joined by `relay`; `before(gw_client_reader)` runs first."""
    sandbox, gw_client = await connection()
    gw_up, upstream = await connection()
    if before is not None:
        await before(sandbox, gw_client)
    counters = Counters(budget=budget)
    task = asyncio.ensure_future(relay(*gw_client, *gw_up, counters, timeouts))
    return Tunnel(sandbox, upstream, counters, task)


async def read_all(r: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(r.read(), SLACK)


def test_bytes_go_both_ways_and_both_half_closes_end_the_relay_cleanly() -> None:
    async def body() -> None:
        t = await tunnel()
        (sr, sw), (ur, uw) = t.sandbox, t.upstream
        sw.write(b"hello upstream")
        sw.write_eof()  # the sandbox is done sending
        assert await read_all(ur) == b"hello upstream"  # the EOF was passed on
        uw.write(b"and back")  # the other direction still moves after the half-close
        uw.write_eof()
        assert await read_all(sr) == b"and back"
        assert await asyncio.wait_for(t.task, SLACK) is None
        assert (t.counters.up, t.counters.down) == (14, 8)
        for w in (sw, uw):
            w.close()

    run(body())


def test_bytes_the_reader_already_held_are_relayed_first_in_order() -> None:
    async def before(sandbox: Streams, gw_client: Streams) -> None:
        sandbox[1].write(b"ABCDEFGH")
        await sandbox[1].drain()
        # The gateway read only the first byte (as a sniff does); the rest sits in its reader.
        assert await gw_client[0].readexactly(1) == b"A"
        await asyncio.sleep(0.05)

    async def body() -> None:
        t = await tunnel(before=before)
        (_, sw), (ur, uw) = t.sandbox, t.upstream
        sw.write(b"IJ")
        sw.write_eof()
        assert await read_all(ur) == b"BCDEFGHIJ"
        uw.close()
        await asyncio.wait_for(t.task, SLACK)
        assert t.counters.up == 9
        sw.close()

    run(body())


def test_an_eof_seen_before_the_relay_began_is_passed_on() -> None:
    async def before(sandbox: Streams, gw_client: Streams) -> None:
        sandbox[1].write(b"last words")
        sandbox[1].write_eof()
        await asyncio.sleep(0.05)
        assert await gw_client[0].readexactly(4) == b"last"

    async def body() -> None:
        t = await tunnel(before=before)
        (sr, sw), (ur, uw) = t.sandbox, t.upstream
        assert await read_all(ur) == b" words"
        uw.write(b"ok")
        uw.write_eof()
        assert await read_all(sr) == b"ok"
        assert await asyncio.wait_for(t.task, SLACK) is None
        sw.close()
        uw.close()

    run(body())


def test_a_reader_that_does_not_read_stops_the_sender_and_memory_stays_bounded() -> None:
    async def body() -> None:
        t = await tunnel()
        (_, sw), (ur, uw) = t.sandbox, t.upstream
        chunk = b"x" * 65536
        sent = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while sent < 64 * 1024 * 1024:  # far more than all buffers on the way
                    sw.write(chunk)
                    sent += len(chunk)
                    await sw.drain()
        assert sent < 64 * 1024 * 1024, "the sender was never stopped"
        # What the gateway holds: its write buffer towards the upstream, bounded by the
        # transport's high-water mark plus one read (asyncio reads at most 256 KiB).
        tunnels = relay_mod._sweeper().tunnels
        (inner,) = tunnels
        held = inner.upstream.transport.get_write_buffer_size()
        assert held <= 64 * 1024 + 256 * 1024
        assert not inner.client.transport.is_reading()  # paused: the backpressure
        # Once the upstream reads, everything arrives, in order and complete.
        sw.write_eof()
        got = 0
        while data := await asyncio.wait_for(ur.read(1 << 20), SLACK):
            assert data == b"x" * len(data)
            got += len(data)
        assert got == sent == t.counters.up
        uw.close()
        await asyncio.wait_for(t.task, SLACK)
        sw.close()

    run(body())


def test_the_session_byte_cap_resets_both_sides_before_a_byte_over_it_leaves() -> None:
    async def body() -> None:
        budget = SessionBudget(GatewayLimits(max_bytes_out=1000))
        t = await tunnel(budget=budget)
        (sr, sw), (ur, uw) = t.sandbox, t.upstream
        sw.write(b"a" * 600)
        assert await asyncio.wait_for(ur.readexactly(600), SLACK) == b"a" * 600
        sw.write(b"b" * 600)  # 1,200 in all
        with pytest.raises(LimitReached) as caught:
            await asyncio.wait_for(t.task, SLACK)
        assert caught.value.rule == "limits.max_bytes_out"
        with contextlib.suppress(ConnectionError):
            assert await read_all(ur) == b""  # nothing over the cap went upstream
        with contextlib.suppress(ConnectionError):
            assert await read_all(sr) == b""
        assert t.counters.up == 600
        assert budget.bytes_out == 600
        sw.close()
        uw.close()

    run(body())


def test_a_reset_by_one_side_ends_the_relay_with_reset() -> None:
    async def body() -> None:
        t = await tunnel()
        (sr, sw), (ur, uw) = t.sandbox, t.upstream
        sw.write(b"ping")
        assert await asyncio.wait_for(ur.readexactly(4), SLACK) == b"ping"
        reset(uw)  # the upstream aborts: RST
        assert await asyncio.wait_for(t.task, SLACK) == RESET
        with contextlib.suppress(ConnectionError):
            assert await read_all(sr) == b""
        sw.close()

    run(body())


def test_nothing_moving_for_the_idle_timeout_ends_the_relay() -> None:
    async def body() -> None:
        t = await tunnel(RelayTimeouts(idle_s=TICK, half_closed_s=60.0))
        start = time.monotonic()
        assert await asyncio.wait_for(t.task, SLACK + TICK) == IDLE
        assert TICK <= time.monotonic() - start < TICK + SLACK
        assert await read_all(t.sandbox[0]) == b""
        for _, w in (t.sandbox, t.upstream):
            w.close()

    run(body())


def test_a_busy_relay_outlives_the_idle_timeout() -> None:
    async def body() -> None:
        t = await tunnel(RelayTimeouts(idle_s=TICK, half_closed_s=60.0))
        (_, sw), (ur, uw) = t.sandbox, t.upstream
        for _ in range(8):  # 8 x TICK/2: four idle timeouts, never idle for one
            sw.write(b"z")
            assert await asyncio.wait_for(ur.readexactly(1), SLACK) == b"z"
            await asyncio.sleep(TICK / 2)
        assert not t.task.done()
        t.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t.task
        assert await read_all(ur) == b""  # cancelling the relay closed both sides
        sw.close()
        uw.close()

    run(body())


def test_a_half_closed_relay_ends_after_the_half_closed_timeout() -> None:
    async def body() -> None:
        t = await tunnel(RelayTimeouts(idle_s=60.0, half_closed_s=TICK))
        (_, sw), (ur, uw) = t.sandbox, t.upstream
        sw.write_eof()  # the upstream never answers nor closes its half
        assert await read_all(ur) == b""
        start = time.monotonic()
        assert await asyncio.wait_for(t.task, SLACK + TICK) == HALF_CLOSED
        assert TICK * 0.9 <= time.monotonic() - start < TICK + SLACK
        sw.close()
        uw.close()

    run(body())


def test_many_tunnels_share_one_sweep_timer() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        before = len(loop._scheduled)  # type: ignore[attr-defined]
        tunnels = [await tunnel() for _ in range(20)]
        await asyncio.sleep(0.05)
        # One timer for all (not one per tunnel, nor per chunk).
        assert len(loop._scheduled) - before <= 1  # type: ignore[attr-defined]
        assert len(relay_mod._sweeper().tunnels) == 20
        for t in tunnels:
            t.task.cancel()
        await asyncio.gather(*(t.task for t in tunnels), return_exceptions=True)
        assert relay_mod._sweeper().tunnels == set()
        for t in tunnels:
            for _, w in (t.sandbox, t.upstream):
                w.close()

    run(body())


class _Wrapped:
    """A writer that is not asyncio's own (as the inspected path's TLS streams are)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.w = writer

    def write(self, data: bytes) -> None:
        self.w.write(data)

    async def drain(self) -> None:
        await self.w.drain()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.w.write_eof()

    def close(self) -> None:
        self.w.close()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.w.get_extra_info(name, default)


def test_other_streams_are_relayed_by_the_stream_relay() -> None:
    async def body() -> None:
        sandbox, (cr, cw) = await connection()
        (gr, gw), upstream = await connection()
        counters = Counters()
        wrapped = _Wrapped(cw)
        task = asyncio.ensure_future(relay(cr, wrapped, gr, gw, counters, LONG))  # type: ignore[arg-type]
        sandbox[1].write(b"abc")
        sandbox[1].write_eof()
        assert await read_all(upstream[0]) == b"abc"
        upstream[1].write(b"de")
        upstream[1].write_eof()
        assert await read_all(sandbox[0]) == b"de"
        assert await asyncio.wait_for(task, SLACK) is None
        assert relay_mod._sweeper().tunnels == set()  # not a protocol tunnel
        assert (counters.up, counters.down) == (3, 2)
        sandbox[1].close()
        upstream[1].close()

    run(body())


@pytest.mark.parametrize("closes", [False, True], ids=["keeps open", "closes at once"])
def test_an_upstream_that_speaks_first_is_heard_once_the_tunnel_runs(closes: bool) -> None:
    async def body() -> None:
        async def banner(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"SSH-2.0-test\r\n")
            if closes:
                w.write_eof()
            echoed = await r.read()
            if not closes:
                w.write(echoed)
            w.close()

        server = await asyncio.start_server(banner, LOOP, 0)
        port = server.sockets[0].getsockname()[1]
        sandbox, gw_client = await connection()
        counters = Counters()
        t = RelayTunnel(counters, LONG)
        await dial_protocol((ip_address(LOOP),), port, t.upstream_protocol)
        await asyncio.sleep(0.1)  # the banner (and EOF) arrive before the relay runs
        task = asyncio.ensure_future(t.run(*gw_client, first=b"hi "))
        sr, sw = sandbox
        assert await asyncio.wait_for(sr.readexactly(14), SLACK) == b"SSH-2.0-test\r\n"
        sw.write(b"there")
        sw.write_eof()
        rest = await read_all(sr)
        assert rest == (b"" if closes else b"hi there")
        assert await asyncio.wait_for(task, SLACK) is None
        assert counters.up == 8
        sw.close()
        server.close()

    run(body())


def test_an_upstream_gone_before_the_tunnel_runs_ends_it_with_reset() -> None:
    async def body() -> None:
        async def slam(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            reset(w)  # RST at once

        server = await asyncio.start_server(slam, LOOP, 0)
        port = server.sockets[0].getsockname()[1]
        sandbox, gw_client = await connection()
        t = RelayTunnel(Counters(), LONG)
        await dial_protocol((ip_address(LOOP),), port, t.upstream_protocol)
        await asyncio.sleep(0.1)  # the reset arrives before the relay runs
        assert await asyncio.wait_for(t.run(*gw_client, first=b"x"), SLACK) == RESET
        with contextlib.suppress(ConnectionError):
            assert await read_all(sandbox[0]) == b""  # the sandbox side was closed too
        sandbox[1].close()
        server.close()

    run(body())
