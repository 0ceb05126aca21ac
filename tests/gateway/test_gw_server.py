"""The real gateway on real loopback sockets: address checks, mismatches, limits, timeouts.

No sandbox here: the gateway serves listening sockets this test binds on 127.0.0.1, and
its explicit proxy port is driven with raw bytes. Upstream servers listen on loopback
too, so every dial the gateway makes is one it must first be allowed by a rule naming
loopback (the address check refuses loopback otherwise); each server counts the
connections it accepted, which is how "nothing was dialled" is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.gateway.loopback import loopback_listeners

from corridor.audit.events import Event, Kind
from corridor.gateway.addresses import parse_unsafe_range
from corridor.gateway.http_target import connect_head
from corridor.gateway.limits import GatewayLimits
from corridor.gateway.server import Gateway
from corridor.gateway.upstream import TtlCache
from corridor.policy import Limits, Policy, Rule, Target

LOOP = "127.0.0.1"
HEAD_END = b"\r\n\r\n"
# Generous bounds on how long the gateway may take to notice a timeout set to TICK.
TICK = 0.3
SLACK = 3.0


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


@dataclass
class Upstream:
    """A loopback server: echo or a tiny HTTP responder; counts what it accepted."""

    http: bool = False
    hold_open: bool = False  # echo: keep our half open after the client's EOF
    accepted: int = 0
    received: int = 0
    server: asyncio.Server | None = None
    port: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self, host: str = LOOP) -> Upstream:
        self.server = await asyncio.start_server(self._handle, host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(w)
        try:
            if self.http:
                while True:
                    head = await r.readuntil(HEAD_END)
                    self.received += len(head)
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await w.drain()
            else:
                while data := await r.read(65536):
                    self.received += len(data)
                    w.write(data)
                    await w.drain()
                if self.hold_open:
                    await asyncio.Event().wait()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()


@dataclass
class Rig:
    gateway: Gateway
    events: list[Event]
    proxy_port: int

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(LOOP, self.proxy_port)

    async def ask(self, raw: bytes) -> bytes:
        """Send raw bytes to the proxy port; everything it answers until it closes."""
        r, w = await self.open()
        w.write(raw)
        await w.drain()
        try:
            return await asyncio.wait_for(r.read(), 10)
        finally:
            w.close()

    async def connect(
        self, target: str
    ) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
        r, w = await self.open()
        w.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(HEAD_END), 10)
        return head, r, w

    def refusals(self) -> list[Event]:
        return [e for e in self.events if e.kind is Kind.CONNECTION and e.decision == "deny"]

    def ends(self) -> list[Event]:
        return [e for e in self.events if e.kind is Kind.CONNECTION_END]


@contextlib.asynccontextmanager
async def rig(
    policy: Policy, unsafe: tuple[str, ...] = (), **limits: float | int | None
) -> AsyncIterator[Rig]:
    socks = loopback_listeners()
    events: list[Event] = []
    gw = Gateway(
        policy=policy,
        session="test",
        emit=events.append,
        unsafe=tuple(parse_unsafe_range(u) for u in unsafe),
        limits=GatewayLimits.from_policy(policy.limits, **limits),
    )
    await gw.start(socks)
    try:
        yield Rig(gw, events, socks["proxy"].getsockname()[1])
    finally:
        await gw.stop()
        for s in socks.values():
            s.close()


def allow_loopback(port: int) -> Rule:
    """A cidr rule naming one loopback address and port: what lets the gateway dial it."""
    return Rule(cidr=ip_network(f"{LOOP}/32"), ports=[port], origin=f"cidr {LOOP}:{port}")


def allow_host(host: str, port: int) -> Rule:
    return Rule(host=host, ports=[port], origin=f"host {host}:{port}")


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# ---- address checks ------------------------------------------------------------------


def test_connect_to_a_loopback_literal_needs_a_rule_naming_loopback() -> None:
    async def body() -> None:
        up = await Upstream().start()
        wide = Rule(cidr=ip_network("0.0.0.0/0"), broad=True, ports=[up.port], origin="wide")
        async with rig(Policy(allow=[wide])) as g:
            head, _, w = await g.connect(f"{LOOP}:{up.port}")
            w.close()
            assert status(head) == 403
            assert g.refusals()[-1].reason == "127.0.0.1 is a loopback address"
        async with rig(Policy(allow=[allow_loopback(up.port)])) as g:
            head, r, w = await g.connect(f"{LOOP}:{up.port}")
            assert status(head) == 200
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            w.close()
        assert up.accepted == 1  # only the second, allowed tunnel reached it
        up.close()

    run(body())


def test_an_allowed_name_resolving_to_loopback_is_refused_unless_unsafe_range() -> None:
    async def body() -> None:
        up = await Upstream().start()
        policy = Policy(allow=[allow_host("localhost", up.port)])
        async with rig(policy) as g:
            head, _, w = await g.connect(f"localhost:{up.port}")
            w.close()
            assert status(head) == 403
            refusal = g.refusals()[-1]
            assert refusal.host == "localhost"
            assert refusal.reason in {
                "127.0.0.1 is a loopback address",
                "::1 is a loopback address",
            }
        assert up.accepted == 0
        async with rig(policy, unsafe=("127.0.0.0/8", "::1/128")) as g:
            head, r, w = await g.connect(f"localhost:{up.port}")
            assert status(head) == 200
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            w.close()
        assert up.accepted == 1
        up.close()

    run(body())


def test_the_unsafe_range_does_not_open_the_address_by_number() -> None:
    async def body() -> None:
        up = await Upstream().start()
        async with rig(Policy(), unsafe=("127.0.0.0/8",)) as g:
            head, _, w = await g.connect(f"{LOOP}:{up.port}")
            w.close()
            assert status(head) == 403
            assert g.refusals()[-1].reason == "ip literal not allowed"
        assert up.accepted == 0
        up.close()

    run(body())


def test_absolute_uri_ip_literal_follows_the_same_rules() -> None:
    async def body() -> None:
        up = await Upstream(http=True).start("127.0.0.2")
        wide = Rule(cidr=ip_network("0.0.0.0/0"), broad=True, ports=[up.port], origin="wide")
        async with rig(Policy(allow=[wide])) as g:
            raw = f"GET http://127.0.0.2:{up.port}/ HTTP/1.1\r\nHost: 127.0.0.2:{up.port}\r\n\r\n"
            answer = await g.ask(raw.encode())
            assert status(answer) == 403
            assert b"127.0.0.2 is a loopback address" in answer
        assert up.accepted == 0
        up.close()

    run(body())


# ---- mismatches and malformed requests, through the real proxy -----------------------

# name: (raw request, expected status, expected reason in the body)
# fmt: off
MALFORMED = {
    "absolute URI vs Host": (
        b"GET http://localhost:9/ HTTP/1.1\r\nHost: other.test:9\r\n\r\n", 400,
        b"Host header 'other.test:9' does not match request target 'localhost:9'"),
    "CONNECT vs Host": (
        b"CONNECT localhost:9 HTTP/1.1\r\nHost: other.test:9\r\n\r\n", 400,
        b"Host header 'other.test:9' does not match request target 'localhost:9'"),
    "two Host headers": (
        b"GET http://localhost:9/ HTTP/1.1\r\nHost: localhost:9\r\nHost: evil.test\r\n\r\n",
        400, b"malformed HTTP request: Found multiple Host: headers"),
    "port 0": (b"CONNECT localhost:0 HTTP/1.1\r\nHost: localhost:0\r\n\r\n", 400,
               b"port '0' out of range (1-65535) in CONNECT target"),
    "port 65536": (b"CONNECT localhost:65536 HTTP/1.1\r\nHost: localhost:65536\r\n\r\n", 400,
                   b"port '65536' out of range (1-65535) in CONNECT target"),
    "port of 20 digits": (b"CONNECT localhost:00000000000000000443 HTTP/1.1\r\nHost: x\r\n\r\n",
                          400, b"port '00000000000000000443' out of range"),
    "over-long label": (b"CONNECT " + b"a" * 64 + b".test:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400,
                        b"label longer than 63 characters in host name"),
    "host of 254 characters": (
        b"CONNECT " + b".".join([b"b" * 63, b"c" * 63, b"d" * 63, b"e" * 62]) +
        b":443 HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"host name longer than 253 characters"),
    "percent-encoded host": (b"GET http://local%68ost:9/ HTTP/1.1\r\nHost: x\r\n\r\n", 400,
                             b"invalid character '%' in host name"),
    "userinfo": (b"GET http://localhost:9@evil.test/ HTTP/1.1\r\nHost: x\r\n\r\n", 400,
                 b"userinfo ('@') in host in request target"),
    "numeric host": (b"GET http://2130706433:9/ HTTP/1.1\r\nHost: 2130706433:9\r\n\r\n", 400,
                     b"numeric host name that is not a dotted-quad IPv4 address"),
    "octal-looking address": (b"GET http://0177.0.0.1:9/ HTTP/1.1\r\nHost: 0177.0.0.1:9\r\n\r\n",
                              400, b"numeric host name that is not a dotted-quad IPv4 address"),
    "Unicode look-alike in the request line": (
        "GET http://localhоst:9/ HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400,
        b"malformed HTTP request: illegal request line"),
    "Unicode look-alike in Host": (
        "GET http://localhost:9/ HTTP/1.1\r\nHost: localhоst:9\r\n\r\n".encode(), 400,
        b"invalid host in Host header: non-ASCII host name"),
    "NUL in Host": (b"GET http://localhost:9/ HTTP/1.1\r\nHost: localhost\x00.evil.test:9\r\n\r\n",
                    400, b"malformed HTTP request"),
    "CR in the request line": (b"GET http://localhost:9/\rx HTTP/1.1\r\nHost: x\r\n\r\n", 400,
                               b"malformed HTTP request"),
    "LF-only lines smuggling a second Host": (
        b"GET http://localhost:9/ HTTP/1.1\nHost: localhost:9\nHost: evil.test\n\n", 400,
        b"malformed HTTP request: Found multiple Host: headers"),
    "obs-fold Host": (
        b"GET http://localhost:9/ HTTP/1.1\r\nHost: localhost:9\r\n evil.test\r\n\r\n", 400,
        b"whitespace in host in Host header"),
    "CL and TE together": (
        b"POST http://localhost:9/ HTTP/1.1\r\nHost: localhost:9\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
        b"request smuggling: both Content-Length and Transfer-Encoding"),
    "two Content-Lengths": (
        b"POST http://localhost:9/ HTTP/1.1\r\nHost: localhost:9\r\nContent-Length: 4\r\n"
        b"Content-Length: 5\r\n\r\nabcde", 400,
        b"malformed HTTP request: conflicting Content-Length headers"),
    "Transfer-Encoding other than chunked": (
        b"POST http://localhost:9/ HTTP/1.1\r\nHost: localhost:9\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501,
        b"malformed HTTP request: Only Transfer-Encoding: chunked is supported"),
    "space before the colon": (
        b"POST http://localhost:9/ HTTP/1.1\r\nHost: localhost:9\r\n"
        b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400,
        b"malformed HTTP request: illegal header line"),
    "origin-form on the proxy port": (b"GET / HTTP/1.1\r\nHost: localhost:9\r\n\r\n", 400,
                                      b"origin-form request on the proxy port"),
    "scheme other than http": (b"GET ftp://localhost:9/ HTTP/1.1\r\nHost: localhost:9\r\n\r\n",
                               400, b"scheme 'ftp' is not http or https"),
    "IPv6 zone id": (b"CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400,
                     b"IPv6 zone identifier in CONNECT target"),
    "head over 64 KiB in one piece": (
        b"GET http://localhost:9/ HTTP/1.1\r\nHost: localhost:9\r\nX-Pad: " +
        b"a" * (70 * 1024) + b"\r\n\r\n", 431, b"request head larger than 65536 bytes"),
    "head just over 64 KiB": (
        b"GET http://localhost:9/ HTTP/1.1\r\nHost: localhost:9\r\nX-Pad: " +
        b"a" * (65536 - 60) + b"\r\n\r\n", 431, b"request head larger than 65536 bytes"),
    "head over 64 KiB without an end": (
        b"GET http://localhost:9/ HTTP/1.1\r\nHost: localhost:9\r\nX-Pad: " +
        b"a" * (200 * 1024), 431, b"malformed HTTP request"),
}
# fmt: on


@pytest.mark.parametrize(("raw", "code", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_or_ambiguous_requests_are_refused(raw: bytes, code: int, reason: bytes) -> None:
    async def body() -> None:
        up = await Upstream(http=True).start()
        policy = Policy(allow=[allow_host("localhost", 9), allow_host("localhost", up.port)])
        async with rig(policy, unsafe=("127.0.0.0/8", "::1/128")) as g:
            answer = await g.ask(raw)
            assert status(answer) == code, answer
            assert reason in answer, answer
            refusal = g.refusals()[-1]
            assert refusal.decision == "deny" and refusal.reason
        assert up.accepted == 0
        up.close()

    run(body())


def test_keep_alive_host_switching_is_refused() -> None:
    async def body() -> None:
        a = await Upstream(http=True).start()
        policy = Policy(
            allow=[allow_host("localhost", a.port), allow_host("ip6-localhost", a.port)]
        )
        async with rig(policy, unsafe=("127.0.0.0/8", "::1/128")) as g:
            r, w = await g.open()
            target = f"localhost:{a.port}"
            w.write(f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            first = await r.readuntil(b"ok")
            w.write(
                f"GET http://other.localhost:{a.port}/ HTTP/1.1\r\n"
                f"Host: other.localhost:{a.port}\r\n\r\n".encode()
            )
            second = await asyncio.wait_for(r.read(), 10)
            w.close()
            assert status(first) == 200
            assert status(second) == 403
            assert b"on a connection bound to localhost" in second
        assert a.received == len(f"GET / HTTP/1.1\r\nHost: localhost:{a.port}\r\n\r\n")
        a.close()

    run(body())


# ---- limits --------------------------------------------------------------------------


def test_max_connections_refuses_the_one_too_many() -> None:
    async def body() -> None:
        async with rig(Policy(limits=Limits(max_connections=2))) as g:
            held = [await g.open(), await g.open()]
            await asyncio.sleep(0.05)  # both accepted and counted
            answer = await g.ask(b"")
            assert status(answer) == 503
            assert b"session connection limit reached" in answer
            refusal = g.refusals()[-1]
            assert refusal.reason == "session limit of 2 concurrent connections reached"
            assert refusal.rule == "limits.max_connections"
            for _, w in held:
                w.close()
            await asyncio.sleep(0.1)
            r, w = await g.open()  # a slot is free again
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status(await asyncio.wait_for(r.read(), 10)) == 400
            w.close()

    run(body())


def test_max_bytes_out_cuts_the_tunnel_and_refuses_new_ones() -> None:
    async def body() -> None:
        up = await Upstream().start()
        policy = Policy(allow=[allow_loopback(up.port)], limits=Limits(max_bytes_out=1000))
        async with rig(policy) as g:
            head, r, w = await g.connect(f"{LOOP}:{up.port}")
            assert status(head) == 200
            w.write(b"x" * 600)
            assert await r.readexactly(600) == b"x" * 600
            w.write(b"y" * 600)  # 1,200 in all: over the cap
            with contextlib.suppress(ConnectionError):
                rest = await asyncio.wait_for(r.read(), 10)
                assert rest == b""
            w.close()
            cut = g.refusals()[-1]
            assert cut.reason == "session limit of 1000 bytes sent upstream reached"
            assert cut.rule == "limits.max_bytes_out"
            head, _, w = await g.connect(f"{LOOP}:{up.port}")
            w.close()
            assert status(head) == 403
            assert g.refusals()[-1].rule == "limits.max_bytes_out"
        assert up.received == 600  # not one byte over the cap went upstream
        up.close()

    run(body())


def test_idle_tunnel_is_closed_after_the_idle_timeout() -> None:
    async def body() -> None:
        up = await Upstream().start()
        async with rig(Policy(allow=[allow_loopback(up.port)]), idle_timeout_s=TICK) as g:
            head, r, w = await g.connect(f"{LOOP}:{up.port}")
            assert status(head) == 200
            start = time.monotonic()
            assert await asyncio.wait_for(r.read(), SLACK + TICK) == b""
            assert TICK * 0.9 <= time.monotonic() - start < TICK + SLACK
            w.close()
            await asyncio.sleep(0.05)
            assert g.ends()[-1].reason == "idle timeout"
        up.close()

    run(body())


def test_a_busy_tunnel_outlives_the_idle_timeout() -> None:
    async def body() -> None:
        up = await Upstream().start()
        async with rig(Policy(allow=[allow_loopback(up.port)]), idle_timeout_s=TICK) as g:
            _, r, w = await g.connect(f"{LOOP}:{up.port}")
            for _ in range(6):  # 6 x TICK/2: twice the idle timeout, never idle that long
                w.write(b"z")
                assert await r.readexactly(1) == b"z"
                await asyncio.sleep(TICK / 2)
            w.close()

    run(body())


def test_half_closed_tunnel_is_closed_after_the_half_closed_timeout() -> None:
    async def body() -> None:
        up = await Upstream(hold_open=True).start()
        async with rig(Policy(allow=[allow_loopback(up.port)]), half_closed_timeout_s=TICK) as g:
            _, r, w = await g.connect(f"{LOOP}:{up.port}")
            w.write(b"bye")
            w.write_eof()  # our half ends; the echo server keeps its half open
            assert await r.readexactly(3) == b"bye"
            assert await asyncio.wait_for(r.read(), SLACK) == b""
            w.close()
            await asyncio.sleep(0.05)
            assert g.ends()[-1].reason == "half-closed timeout"
        up.close()

    run(body())


def test_a_request_head_must_arrive_within_the_head_timeout() -> None:
    async def body() -> None:
        async with rig(Policy(), head_timeout_s=TICK) as g:
            r, w = await g.open()
            start = time.monotonic()
            for _ in range(20):  # slowloris: one byte at a time, never a whole head
                try:
                    w.write(b"G")
                    await w.drain()
                except ConnectionError:
                    break
                await asyncio.sleep(TICK / 4)
                if r.at_eof():
                    break
            try:
                closed = await asyncio.wait_for(r.read(), SLACK) == b""
            except ConnectionResetError:
                # The gateway closed with the client's bytes unread: the kernel says so
                # with a reset instead of an orderly end. Either way it hung up.
                closed = True
            assert closed
            assert time.monotonic() - start < TICK + SLACK
            w.close()

    run(body())


def test_a_client_that_does_not_read_cannot_grow_the_gateway_memory() -> None:
    """Backpressure: the upstream is held back once the buffers between are full."""
    total = 256 * 1024 * 1024
    chunk = b"\0" * (1024 * 1024)
    sent = 0

    async def flood(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            while sent < total:
                w.write(chunk)
                await w.drain()
                sent += len(chunk)

    async def body() -> None:
        server = await asyncio.start_server(flood, LOOP, 0)
        port = server.sockets[0].getsockname()[1]
        async with rig(Policy(allow=[allow_loopback(port)])) as g:
            head, _r, w = await g.connect(f"{LOOP}:{port}")
            assert status(head) == 200
            await asyncio.sleep(2.0)  # the client reads nothing
            # Kernel socket buffers on loopback take a few MB each; the gateway itself
            # holds a few hundred KiB. Far below what the upstream wanted to send.
            assert sent < 64 * 1024 * 1024, sent
            w.close()
        server.close()

    run(body())


def test_dns_queries_in_flight_are_capped() -> None:
    async def body() -> None:
        async with rig(Policy(), max_dns_inflight=2) as g:
            gw = g.gateway
            assert gw.dns_slot() and gw.dns_slot()
            assert not gw.dns_slot() and not gw.dns_slot()
            assert gw.stats.dns_dropped == 2
            told = [e for e in g.events if e.kind is Kind.DNS]
            assert [e.rule for e in told] == ["limits.max_dns_inflight"]  # one per burst
            gw.dns_done()
            assert gw.dns_slot()

    run(body())


def test_ipv6_connect_is_checked_like_ipv4() -> None:
    async def body() -> None:
        up = await Upstream().start("::1")
        async with rig(Policy()) as g:
            head, _, w = await g.connect(f"[::1]:{up.port}")
            w.close()
            assert status(head) == 403
            assert g.refusals()[-1].reason == "ip literal not allowed"
        v6 = Rule(cidr=ip_network("::1/128"), ports=[up.port], origin="cidr ::1")
        async with rig(Policy(allow=[v6])) as g:
            head, r, w = await g.connect(f"[::1]:{up.port}")
            assert status(head) == 200
            w.write(b"six")
            assert await r.readexactly(3) == b"six"
            w.close()
        # The v4-mapped spelling is IPv4 loopback, which the ::1 rule does not name.
        async with rig(Policy(allow=[v6])) as g:
            head, _, w = await g.connect(f"[::ffff:127.0.0.1]:{up.port}")
            w.close()
            assert status(head) == 403
        assert up.accepted == 1
        up.close()

    run(body())


def test_a_deny_rule_on_the_resolved_address_holds_and_audit_mode_records_it() -> None:
    async def body() -> None:
        up = await Upstream().start()
        deny = Rule(cidr=ip_network("127.0.0.0/8"), origin="deny loopback")
        allow = allow_host("localhost", up.port)
        async with rig(Policy(allow=[allow], deny=[deny]), unsafe=("127.0.0.0/8",)) as g:
            head, _, w = await g.connect(f"localhost:{up.port}")
            w.close()
            assert status(head) == 403
            assert (g.refusals()[-1].reason, g.refusals()[-1].rule) == (
                "denied by rule",
                "deny loopback",
            )
        assert up.accepted == 0
        audit = Policy(allow=[allow], deny=[deny], mode="audit")
        async with rig(audit, unsafe=("127.0.0.0/8",)) as g:
            head, r, w = await g.connect(f"localhost:{up.port}")
            assert status(head) == 200
            w.write(b"a")
            assert await r.readexactly(1) == b"a"
            w.close()
            noted = [e for e in g.events if e.kind is Kind.CONNECTION]
            assert [(e.decision, e.reason, e.rule) for e in noted] == [
                ("would-deny", "denied by rule", "deny loopback")
            ]
        assert up.accepted == 1
        up.close()

    run(body())


# ---- the CONNECT head recogniser (no h11 for a plain CONNECT) --------------------------

MAX_HEAD = 65536
# name: (bytes the client sent first, (target, headers, rest) or None: left to h11)
# fmt: off
CONNECT_HEADS: dict[str, tuple[bytes, tuple[bytes, tuple, bytes] | None]] = {
    "plain": (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
              (b"a.test:443", ((b"host", b"a.test:443"),), b"")),
    "ClientHello in the same read": (
        b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n\x16\x03\x01",
        (b"a.test:443", ((b"host", b"a.test:443"),), b"\x16\x03\x01")),
    "headers as curl sends them, OWS trimmed": (
        b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\nUser-Agent:  curl/8.5 \r\n"
        b"Proxy-Connection:\tKeep-Alive\r\n\r\n",
        (b"[::1]:8443", ((b"host", b"[::1]:8443"), (b"user-agent", b"curl/8.5"),
                         (b"proxy-connection", b"Keep-Alive")), b"")),
    "incomplete head": (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n", None),
    "not CONNECT": (b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", None),
    "lower-case method": (b"connect a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", None),
    "HTTP/1.0": (b"CONNECT a.test:443 HTTP/1.0\r\nHost: a.test:443\r\n\r\n", None),
    "no Host": (b"CONNECT a.test:443 HTTP/1.1\r\n\r\n", None),
    "two Hosts": (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nhost: b.test:443\r\n\r\n",
                  None),
    "LF-only lines": (b"CONNECT a.test:443 HTTP/1.1\nHost: a.test:443\n\n", None),
    "obs-fold": (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n b.test\r\n\r\n", None),
    "NUL in the target": (b"CONNECT a.test\x00b.test:443 HTTP/1.1\r\nHost: a\r\n\r\n", None),
    "CR in the target": (b"CONNECT a.test\rb:443 HTTP/1.1\r\nHost: a\r\n\r\n", None),
    "percent in the target": (b"CONNECT a%2etest:443 HTTP/1.1\r\nHost: a\r\n\r\n", None),
    "NUL in a header value": (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\x00:443\r\n\r\n",
                              None),
    "space before the colon": (b"CONNECT a.test:443 HTTP/1.1\r\nHost : a.test:443\r\n\r\n",
                               None),
    "Content-Length": (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n"
                       b"Content-Length: 3\r\n\r\nabc", None),
    "Transfer-Encoding": (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n", None),
    "non-ASCII header value": ("CONNECT a.test:443 HTTP/1.1\r\nHost: a.tеst:443\r\n\r\n"
                               .encode(), None),
    "head over the limit": (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nX-Pad: "
                            + b"a" * MAX_HEAD + b"\r\n\r\n", None),
}
# fmt: on


@pytest.mark.parametrize(("raw", "expected"), CONNECT_HEADS.values(), ids=CONNECT_HEADS.keys())
def test_connect_head_takes_only_plain_connect_heads(raw: bytes, expected) -> None:
    got = connect_head(raw, MAX_HEAD)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.target, got.headers, got.rest) == expected
        assert _h11_view(raw) == (got.target, got.headers, got.rest)


def _h11_view(raw: bytes) -> tuple[bytes, tuple, bytes] | None:
    """What the h11 path makes of a head: (target, headers, bytes after it), or None."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(raw)
    try:
        ev = conn.next_event()
        if not isinstance(ev, h11.Request) or ev.method != b"CONNECT":
            return None
        if not isinstance(conn.next_event(), h11.EndOfMessage):
            return None
    except h11.RemoteProtocolError:
        return None
    return ev.target, tuple((n, v) for n, v in ev.headers), bytes(conn.trailing_data[0])


_VALID = st.sampled_from([b"a", b"Z", b"0", b"9", b".", b"-", b":", b"[", b"]", b"_"])
_TRICKY = st.sampled_from(
    [b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x00", b"%", b"@", b"/", b"\x7f", b"\xd0",
     b"\x0b", b"Host: x\r\n", b"\r\n\r\n"]
)  # fmt: skip


@st.composite
def _piece(draw: st.DrawFn) -> bytes:
    """Bytes of a target or value: valid characters, sometimes one tricky piece inside."""
    text = b"".join(draw(st.lists(_VALID, min_size=1, max_size=12)))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(_TRICKY) + text[at:]
    return text


@settings(max_examples=400, deadline=None)
@given(
    target=_piece(),
    host=st.one_of(st.none(), _piece()),
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"Host", b"host", b"User-Agent", b"X-a", b"Ho st", b"", b"TE"]),
            st.sampled_from([b": ", b":", b":\t", b" :", b""]),
            _piece(),
            st.sampled_from([b"\r\n", b"\r\n", b"\n"]),
        ),
        max_size=3,
    ),
    end=st.sampled_from([b"\r\n", b"\r\n", b"\n", b""]),
    rest=st.binary(max_size=4),
)
def test_connect_head_agrees_with_h11_on_whatever_it_takes(
    target, host, headers, end, rest
) -> None:
    raw = b"CONNECT " + target + b" HTTP/1.1\r\n"
    if host is not None:
        raw += b"Host: " + host + b"\r\n"
    raw += b"".join(n + sep + v + eol for n, sep, v, eol in headers) + end + rest
    got = connect_head(raw, MAX_HEAD)
    if got is not None:
        assert _h11_view(raw) == (got.target, got.headers, got.rest)


def test_a_connect_head_in_pieces_or_with_bytes_after_it_still_tunnels() -> None:
    async def body() -> None:
        up = await Upstream().start()
        async with rig(Policy(allow=[allow_loopback(up.port)])) as g:
            target = f"{LOOP}:{up.port}".encode()
            # In pieces: the recogniser sees half a head and hands it to h11.
            r, w = await g.open()
            w.write(b"CONNECT " + target)
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
            assert status(await asyncio.wait_for(r.readuntil(HEAD_END), 10)) == 200
            w.write(b"one")
            assert await r.readexactly(3) == b"one"
            w.close()
            # With the first tunnel bytes in the same write: they reach upstream first.
            r, w = await g.open()
            w.write(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\nearly")
            assert status(await asyncio.wait_for(r.readuntil(HEAD_END), 10)) == 200
            assert await r.readexactly(5) == b"early"
            w.close()
        assert up.accepted == 2
        up.close()

    run(body())


# ---- caches --------------------------------------------------------------------------


def test_ttl_cache_expires_and_forgets_the_oldest_beyond_its_size() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl=10.0, size=3)
    cache.put("a", 1, now=0.0)
    assert cache.get("a", now=9.9) == 1
    assert cache.get("a", now=10.0) is None  # expired
    cache.put("b", 2, now=1.0)
    cache.put("c", 3, now=2.0)
    cache.put("a", 4, now=3.0)  # re-stored: now the newest
    cache.put("d", 5, now=4.0)  # full: the oldest ("b") goes
    assert [cache.get(k, now=5.0) for k in "abcd"] == [4, None, 3, 5]
    cache.put("e", 6, now=13.5)  # full again: expired entries go first ("c", "a")
    assert len(cache) == 2
    assert [cache.get(k, now=13.5) for k in "de"] == [5, 6]


def test_decisions_and_address_checks_are_remembered_per_destination() -> None:
    async def body() -> None:
        async with rig(Policy(allow=[allow_host("a.test", 443)])) as g:
            gw = g.gateway
            first = gw.decide(Target(host="a.test", port=443))
            assert first.allowed
            assert gw.decide(Target(host="a.test", port=443)) is first
            assert not gw.decide(Target(host="a.test", port=444)).allowed
            check = gw.check_address(ip_address(LOOP), 443)
            assert check.reason == "127.0.0.1 is a loopback address"
            assert gw.check_address(ip_address(LOOP), 443) is check

    run(body())
