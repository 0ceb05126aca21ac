"""WebSocket upgrades, per-request audit mode and split credentials, through the real gateway.

The gateway serves listening sockets bound on loopback here; upstream is a small asyncio
server on loopback that answers a WebSocket handshake with 101 and then echoes raw bytes
(the gateway does not read frames, so the echo need not speak them), and answers other
requests with 200. Inspected tests go through CONNECT and the gateway's TLS termination
with a real session CA, to an upstream TLS server with a certificate from a test CA.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.gateway.loopback import loopback_listeners
from tests.lab.ca import write_lab_pki
from tests.lab.world_ws import frame

from corridor.audit.events import Event, Kind
from corridor.gateway.addresses import parse_unsafe_range
from corridor.gateway.credentials import Broker, parse_credentials
from corridor.gateway.http_proxy import upgrade_offer
from corridor.gateway.limits import GatewayLimits
from corridor.gateway.server import Gateway
from corridor.gateway.tlsca import SessionCA
from corridor.gateway.ws_scan import UNREADABLE_FRAME
from corridor.policy import Policy, Rule

LOOP = "127.0.0.1"
HOST = "localhost"  # resolves to loopback, which the rigs allow with an unsafe range
HEAD_END = b"\r\n\r\n"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 4.2.2
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # the RFC 6455 example key
ACCEPT = base64.b64encode(hashlib.sha1(KEY + WS_GUID).digest())
TIMEOUT = 10.0
TICK = 0.3


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def header(head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` in a raw head, or None."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


@dataclass
class WsUpstream:
    """Loopback upstream: `/ws` with a WebSocket offer -> 101 then raw echo; `/echo` -> the
    body; anything else -> 200 `upgrade=<the Upgrade header it got, or none>`."""

    tls: ssl.SSLContext | None = None
    early: bytes = b""  # sent in the same write as the 101
    close_after: int | None = None  # end the echo (and close) after this many bytes
    heads: list[bytes] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)  # every byte read, in order
    accepted: int = 0
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> WsUpstream:
        self.server = await asyncio.start_server(self._handle, LOOP, 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _read(self, r: asyncio.StreamReader, n: int) -> bytes:
        """`n` bytes, each recorded in `raw` as soon as it arrives."""
        data = b""
        while len(data) < n:
            piece = await r.read(n - len(data))
            if not piece:
                raise asyncio.IncompleteReadError(data, n)
            self.raw += piece
            data += piece
        return data

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while True:
                head = await r.readuntil(HEAD_END)
                self.raw += head
                self.heads.append(head)
                body = await self._read(r, int(header(head, b"content-length") or 0))
                path = head.split(b" ")[1]
                offer = (header(head, b"upgrade") or b"").lower()
                if path == b"/ws" and b"websocket" in offer:
                    await self._switch(r, w, head)
                    return
                reply = body if path == b"/echo" else b"upgrade=" + (offer or b"none")
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(reply) + reply)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()

    async def _switch(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        key = header(head, b"sec-websocket-key") or b""
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        w.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + HEAD_END + self.early
        )
        echoed = 0
        while data := await r.read(65536):
            self.raw += data
            w.write(data)
            await w.drain()
            echoed += len(data)
            if self.close_after is not None and echoed >= self.close_after:
                break

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


@dataclass
class Rig:
    gateway: Gateway
    events: list[Event]
    proxy_port: int
    client_tls: ssl.SSLContext | None  # trusts the session CA, when there is one

    async def open(
        self, port: int, *, tls: bool
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to HOST:port through the proxy: CONNECT + TLS (inspected) or plain."""
        r, w = await asyncio.open_connection(LOOP, self.proxy_port)
        if tls:
            w.write(f"CONNECT {HOST}:{port} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
            head = await asyncio.wait_for(r.readuntil(HEAD_END), TIMEOUT)
            assert status(head) == 200, head
            await w.start_tls(self.client_tls, server_hostname=HOST)  # type: ignore[arg-type]
        return r, w

    def of(self, kind: Kind) -> list[Event]:
        return [e for e in self.events if e.kind is kind]


@contextlib.asynccontextmanager
async def rig(
    policy: Policy,
    tmp_path: Path | None = None,
    broker: Broker | None = None,
    **limits: float | int | None,
) -> AsyncIterator[Rig]:
    """A gateway on loopback; with `tmp_path`, inspecting, trusting a test CA upstream."""
    socks = loopback_listeners()
    ca = SessionCA.generate("test") if tmp_path is not None else None
    upstream_cas = (tmp_path / "lab-ca.pem",) if tmp_path is not None else ()
    events: list[Event] = []
    gw = Gateway(
        policy=policy,
        session="test",
        emit=events.append,
        unsafe=(parse_unsafe_range("127.0.0.0/8"),),
        limits=GatewayLimits.from_policy(policy.limits, **limits),
        ca=ca,
        upstream_cas=upstream_cas,
        broker=broker,
    )
    client_tls = None
    if ca is not None:
        from cryptography.hazmat.primitives import serialization

        pem = ca.cert.public_bytes(serialization.Encoding.PEM).decode()
        client_tls = ssl.create_default_context(cadata=pem)
    await gw.start(socks)
    try:
        yield Rig(gw, events, socks["proxy"].getsockname()[1], client_tls)
    finally:
        await gw.stop()
        for s in socks.values():
            s.close()


def upstream_tls(tmp_path: Path) -> ssl.SSLContext:
    """Server TLS for HOST from a test CA written to tmp_path/lab-ca.pem."""
    pki = write_lab_pki(tmp_path, [HOST])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert_pem, pki.key_pem)
    return ctx


def token_broker() -> Broker:
    """A credential bound to api.test only: the loopback upstream is not its host."""
    spec = {"name": "TOKEN", "from": "env:T", "hosts": ["api.test"], "inject": "bearer"}
    return Broker.start(parse_credentials([spec]), 0.0, {"T": "real-value-123456"})


def allow(port: int, **rule) -> Policy:
    mode = rule.pop("mode", "enforce")
    return Policy(allow=[Rule(host=HOST, ports=[port], origin="test rule", **rule)], mode=mode)


def handshake(port: int, path: str = "/ws", *, tls: bool, extra: bytes = b"", **h: str) -> bytes:
    """A WebSocket handshake request (origin-form under TLS, absolute-form plain)."""
    target = path if tls else f"http://{HOST}:{port}{path}"
    headers = {
        "Host": f"{HOST}:{port}",
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Key": KEY.decode(),
        "Sec-WebSocket-Version": "13",
        **{k.replace("_", "-"): v for k, v in h.items()},
    }
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if v)
    return f"GET {target} HTTP/1.1\r\n{lines}\r\n".encode() + extra


async def read_head(r: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(r.readuntil(HEAD_END), TIMEOUT)


async def read_response(r: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await read_head(r)
    body = await r.readexactly(int(header(head, b"content-length") or 0))
    return head, body


# ---- the upgrade offer (pure) ----------------------------------------------------------

# name: (request headers, the Upgrade value offered upstream)
# fmt: off
OFFERS = {
    "websocket": ([(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], b"websocket"),
    "any case, among other tokens": (
        [(b"connection", b"keep-alive, UPGRADE"), (b"upgrade", b"WebSocket")], b"WebSocket"),
    "h2c is dropped": ([(b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c")], None),
    "TLS upgrade is dropped": ([(b"Connection", b"Upgrade"), (b"Upgrade", b"TLS/1.2")], None),
    "mixed offer keeps websocket": (
        [(b"Connection", b"Upgrade"), (b"Upgrade", b"h2c, websocket")], b"websocket"),
    "Upgrade without Connection naming it": ([(b"Upgrade", b"websocket")], None),
    "Connection without Upgrade": ([(b"Connection", b"Upgrade")], None),
}
# fmt: on


@pytest.mark.parametrize(("headers", "offered"), OFFERS.values(), ids=OFFERS)
def test_upgrade_offer(headers, offered):
    assert upgrade_offer(headers) == offered


# ---- WebSocket through the gateway ---------------------------------------------------------


def test_websocket_under_inspection_is_relayed_after_the_101(tmp_path: Path) -> None:
    async def body() -> None:
        up = await WsUpstream(tls=upstream_tls(tmp_path), early=b"hi!", close_after=12).start()
        # idle and half-closed timeouts far away: the close must come from upstream's end.
        policy = allow(up.port, paths=["/ws"])
        async with rig(policy, tmp_path, idle_timeout_s=60, half_closed_timeout_s=60) as g:
            r, w = await g.open(up.port, tls=True)
            w.write(handshake(up.port, tls=True))
            head = await read_head(r)
            assert status(head) == 101, head
            assert header(head, b"upgrade") == b"websocket"
            assert header(head, b"connection") == b"Upgrade"
            assert header(head, b"sec-websocket-accept") == ACCEPT
            assert await r.readexactly(3) == b"hi!"  # sent by upstream with its 101
            for part in (b"hello ", b"world!"):
                w.write(part)
                assert await asyncio.wait_for(r.readexactly(len(part)), TIMEOUT) == part
            started = time.monotonic()
            assert await asyncio.wait_for(r.read(), TIMEOUT) == b""  # upstream ended: so do we
            assert time.monotonic() - started < 5
            w.close()
            await asyncio.sleep(0.1)
        up.close()
        sent = up.heads[0]
        assert header(sent, b"upgrade") == b"websocket"
        assert header(sent, b"connection") == b"Upgrade"
        assert header(sent, b"sec-websocket-key") == KEY
        (http,) = g.of(Kind.HTTP)
        assert (http.method, http.path, http.status, http.decision) == ("GET", "/ws", 101, "allow")
        assert dict(http.data or {}) == {"upgrade": "websocket"}
        assert (http.bytes_up, http.bytes_down) == (12, 15)
        (end,) = g.of(Kind.CONNECTION_END)
        assert end.reason is None and end.bytes_up >= 12 and end.bytes_down >= 15

    run(body())


def test_websocket_through_the_plain_proxy_with_bytes_sent_early() -> None:
    async def body() -> None:
        up = await WsUpstream().start()
        async with rig(allow(up.port)) as g:
            r, w = await g.open(up.port, tls=False)
            # A client may send its first frame with the handshake, before the 101.
            w.write(handshake(up.port, tls=False, extra=b"early"))
            head = await read_head(r)
            assert status(head) == 101, head
            assert await asyncio.wait_for(r.readexactly(5), TIMEOUT) == b"early"
            w.write(b"more")
            assert await asyncio.wait_for(r.readexactly(4), TIMEOUT) == b"more"
            w.close()
        up.close()
        assert up.raw.endswith(HEAD_END + b"earlymore")
        assert b"proxy-connection" not in up.heads[0].lower()

    run(body())


def test_upstream_refusing_the_upgrade_leaves_an_ordinary_http_connection() -> None:
    async def body() -> None:
        up = await WsUpstream().start()
        async with rig(allow(up.port)) as g:
            r, w = await g.open(up.port, tls=False)
            w.write(handshake(up.port, "/plain", tls=False))
            head, answer = await read_response(r)
            assert (status(head), answer) == (200, b"upgrade=websocket")
            w.write(request("GET", "/again", up.port, tls=False))
            head, answer = await read_response(r)
            assert (status(head), answer) == (200, b"upgrade=none")
            w.close()
        assert up.accepted == 1  # both requests on one upstream connection
        up.close()

    run(body())


# name: (Upgrade and Connection sent by the client, what upstream got in Upgrade)
# fmt: off
NOT_RELAYED = {
    "h2c": ({"Upgrade": "h2c", "Connection": "Upgrade, HTTP2-Settings",
             "HTTP2_Settings": "AAMAAABkAAQAAP__"}, b"none"),
    "websocket without Connection: upgrade": ({"Connection": ""}, b"none"),
}
# fmt: on


@pytest.mark.parametrize(("headers", "seen"), NOT_RELAYED.values(), ids=NOT_RELAYED)
def test_offers_that_are_not_relayed_go_on_as_http(headers: dict[str, str], seen: bytes) -> None:
    async def body() -> None:
        up = await WsUpstream().start()
        async with rig(allow(up.port)) as g:
            r, w = await g.open(up.port, tls=False)
            w.write(handshake(up.port, "/plain", tls=False, **headers))
            head, answer = await read_response(r)
            assert (status(head), answer) == (200, b"upgrade=" + seen)
            w.close()
        up.close()

    run(body())


def test_a_path_rule_refuses_an_upgrade_like_any_request() -> None:
    async def body() -> None:
        up = await WsUpstream().start()
        async with rig(allow(up.port, paths=["/ws"])) as g:
            r, w = await g.open(up.port, tls=False)
            w.write(handshake(up.port, "/elsewhere", tls=False))
            head, answer = await read_response(r)
            assert status(head) == 403
            assert b"no rule allows this path" in answer
            w.close()
            (refusal,) = g.of(Kind.CONNECTION)
            assert (refusal.decision, refusal.reason) == ("deny", "no rule allows this path")
        assert up.accepted == 0
        up.close()

    run(body())


def test_a_placeholder_in_the_handshake_to_another_host_is_refused() -> None:
    async def body() -> None:
        up = await WsUpstream().start()
        broker = token_broker()
        placeholder = broker.sandbox_env()["TOKEN"]
        async with rig(allow(up.port), broker=broker) as g:
            r, w = await g.open(up.port, tls=False)
            w.write(handshake(up.port, tls=False, Sec_WebSocket_Protocol=placeholder))
            head, answer = await read_response(r)
            assert status(head) == 403
            assert b"TOKEN placeholder in the header sec-websocket-protocol" in answer
            w.close()
            (flag,) = g.of(Kind.EXFILTRATION)
            assert flag.data["where"] == "header sec-websocket-protocol"  # type: ignore[index]
        assert up.accepted == 0
        up.close()

    run(body())


def test_the_byte_cap_holds_after_the_switch() -> None:
    async def body() -> None:
        up = await WsUpstream().start()
        async with rig(allow(up.port), max_bytes_out=4000) as g:
            r, w = await g.open(up.port, tls=False)
            w.write(handshake(up.port, tls=False))
            assert status(await read_head(r)) == 101
            with contextlib.suppress(ConnectionError):
                for _ in range(10):
                    w.write(b"x" * 1000)
                    await w.drain()
                    await asyncio.sleep(0.02)
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(r.read(), TIMEOUT)  # cut: EOF or reset
            w.close()
            cut = [e for e in g.of(Kind.CONNECTION) if e.decision == "deny"]
            assert [e.reason for e in cut] == ["session limit of 4000 bytes sent upstream reached"]
        assert len(up.raw) <= 4000
        up.close()

    run(body())


def test_an_idle_websocket_is_closed_after_the_idle_timeout() -> None:
    async def body() -> None:
        up = await WsUpstream().start()
        async with rig(allow(up.port), idle_timeout_s=TICK) as g:
            r, w = await g.open(up.port, tls=False)
            w.write(handshake(up.port, tls=False))
            assert status(await read_head(r)) == 101
            started = time.monotonic()
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(r.read(), TIMEOUT) == b""
            assert time.monotonic() - started < TICK + 3
            w.close()
            await asyncio.sleep(0.1)
            (end,) = g.of(Kind.CONNECTION_END)
            assert end.reason == "idle timeout"
        up.close()

    run(body())


# ---- audit mode: per-request rules are recorded as would-deny --------------------------------


def exchange(*requests: bytes):
    """Send each request on one connection; the statuses answered."""

    async def go(g: Rig, port: int, tls: bool) -> list[int]:
        r, w = await g.open(port, tls=tls)
        statuses = []
        for raw in requests:
            w.write(raw)
            head, _ = await read_response(r)
            statuses.append(status(head))
        w.close()
        await asyncio.sleep(0.1)
        return statuses

    return go


def request(
    method: str, path: str, port: int, *, tls: bool, body: bytes = b"", length: int | None = None
) -> bytes:
    """A request with `body` (or only its head, announcing `length` bytes to follow)."""
    target = path if tls else f"http://{HOST}:{port}{path}"
    size = len(body) if length is None else length
    return (
        f"{method} {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Length: {size}\r\n\r\n"
    ).encode() + body


# name: (mode, inspected, statuses, http events (method, decision, reason),
#        connection events (decision, reason))
# fmt: off
AUDIT = {
    "enforce, inspected": ("enforce", True, [200, 403], [("GET", "allow", None)],
                           [("allow", "allowed by rule"), ("deny", "no rule allows this method")]),
    "audit, inspected": ("audit", True, [200, 200],
                         [("GET", "allow", None),
                          ("POST", "would-deny", "no rule allows this method")],
                         [("allow", "allowed by rule")]),
    "enforce, plain": ("enforce", False, [200, 403], [],
                       [("allow", "allowed by rule"), ("deny", "no rule allows this method")]),
    "audit, plain": ("audit", False, [200, 200],
                     [("POST", "would-deny", "no rule allows this method")],
                     [("allow", "allowed by rule")]),
}
# fmt: on


@pytest.mark.parametrize(("mode", "tls", "statuses", "http", "conns"), AUDIT.values(), ids=AUDIT)
def test_a_method_rule_in_audit_mode_lets_the_request_through_and_says_so(
    tmp_path: Path, mode: str, tls: bool, statuses: list[int], http: list, conns: list
) -> None:
    async def body() -> None:
        up = await WsUpstream(tls=upstream_tls(tmp_path) if tls else None).start()
        policy = allow(up.port, methods=["GET"], mode=mode)
        async with rig(policy, tmp_path if tls else None) as g:
            go = exchange(
                request("GET", "/a", up.port, tls=tls),
                request("POST", "/echo", up.port, tls=tls, body=b"data"),
            )
            assert await go(g, up.port, tls) == statuses
            assert [(e.method, e.decision, e.reason) for e in g.of(Kind.HTTP)] == http
            assert [(e.decision, e.reason) for e in g.of(Kind.CONNECTION)] == conns
            would = [e for e in g.of(Kind.HTTP) if e.decision == "would-deny"]
            assert all(e.path == "/echo" and e.status == 200 for e in would)
        up.close()

    run(body())


# ---- a credential split across body pieces ------------------------------------------------


def test_a_placeholder_split_across_two_body_pieces_never_leaves_even_in_part() -> None:
    async def body() -> None:
        up = await WsUpstream().start()
        broker = token_broker()
        placeholder = broker.sandbox_env()["TOKEN"].encode()
        prefix = b"z" * 5000  # longer than what the scanner holds back: some of it goes
        first, second = prefix + placeholder[:10], placeholder[10:] + b"&end"
        async with rig(allow(up.port), broker=broker) as g:
            r, w = await g.open(up.port, tls=False)
            head = request("POST", "/echo", up.port, tls=False, length=len(first + second))
            w.write(head + first)
            await asyncio.sleep(0.5)  # time for the gateway to pass on what it may
            assert b"z" * 1000 in up.raw  # the body streams: it is not buffered whole
            assert placeholder[:10] not in up.raw
            w.write(second)
            head, answer = await read_response(r)
            assert status(head) == 403
            assert b"TOKEN placeholder in the body (plain)" in answer
            w.close()
            (flag,) = g.of(Kind.EXFILTRATION)
            assert flag.reason.endswith("TOKEN placeholder in the body (plain)")  # type: ignore[union-attr]
        assert placeholder[:10] not in up.raw
        up.close()

    run(body())


def test_a_clean_body_in_many_pieces_arrives_whole() -> None:
    async def body() -> None:
        up = await WsUpstream().start()
        data = bytes(range(256)) * 800  # 200 KiB, several relay chunks
        async with rig(allow(up.port), broker=token_broker()) as g:
            r, w = await g.open(up.port, tls=False)
            w.write(request("POST", "/echo", up.port, tls=False, length=len(data)))
            for i in range(0, len(data), 7000):
                w.write(data[i : i + 7000])
                await w.drain()
            head, answer = await read_response(r)
            assert status(head) == 200
            assert answer == data
            w.close()
        up.close()

    run(body())


# ---- what a client sends inside a WebSocket, when credentials are brokered -----------------


def ws_frame(payload: bytes, *, fin: bool = True, opcode: int = 0x1, rsv: int = 0) -> bytes:
    """A client frame, masked with a zero key so that upstream's bytes can be read."""
    return frame(opcode, payload, b"\0\0\0\0", fin=fin, rsv=rsv)


def test_a_placeholder_sent_in_websocket_frames_never_leaves() -> None:
    async def body() -> None:
        up = await WsUpstream().start()
        broker = token_broker()
        placeholder = broker.sandbox_env()["TOKEN"].encode()
        async with rig(allow(up.port), broker=broker) as g:
            r, w = await g.open(up.port, tls=False)
            offer = "permessage-deflate; client_max_window_bits"
            w.write(handshake(up.port, tls=False, Sec_WebSocket_Extensions=offer))
            assert status(await read_head(r)) == 101
            clean = ws_frame(b"hello") + ws_frame(b"z" * 100, opcode=0x2) * 80
            w.write(clean)
            # Echoed, less what the scanner holds back until more comes or the stream ends.
            assert await asyncio.wait_for(r.readexactly(len(clean) // 2), TIMEOUT)
            w.write(ws_frame(b"t=" + placeholder[:10], fin=False))
            await asyncio.sleep(0.3)
            w.write(ws_frame(placeholder[10:], opcode=0x0))
            with contextlib.suppress(ConnectionError):
                while await asyncio.wait_for(r.read(65536), TIMEOUT):
                    pass  # the rest of the echo, then the end: reset or closed
            w.close()
            await asyncio.sleep(0.1)
            (flag,) = g.of(Kind.EXFILTRATION)
            assert flag.reason.endswith("TOKEN placeholder in the websocket message (plain)")  # type: ignore[union-attr]
            (end,) = g.of(Kind.CONNECTION_END)
            assert end.reason == flag.reason
        assert header(up.heads[0], b"sec-websocket-extensions") is None  # frames stay readable
        assert b"hello" in up.raw
        assert placeholder[:10] not in up.raw
        up.close()

    run(body())


def test_a_compressed_frame_ends_a_scanned_websocket() -> None:
    async def body() -> None:
        up = await WsUpstream().start()
        async with rig(allow(up.port), broker=token_broker()) as g:
            r, w = await g.open(up.port, tls=False)
            w.write(handshake(up.port, tls=False))
            assert status(await read_head(r)) == 101
            w.write(ws_frame(b"compressed?", rsv=0x40))
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(r.read(), TIMEOUT) == b""
            w.close()
            await asyncio.sleep(0.1)
            refused = [e for e in g.of(Kind.CONNECTION) if e.decision == "deny"]
            assert [e.reason for e in refused] == [UNREADABLE_FRAME]
        assert b"compressed?" not in up.raw
        up.close()

    run(body())
