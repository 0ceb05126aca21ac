"""Plain HTTP/1 through the gateway: the explicit proxy and transparent port 80.

h11 parses both sides (one connection object for the client, one for upstream), so
every request on a kept-alive connection is seen, decided and framed, not only the
first. A connection is bound to the host of its first request: a later request for
another host is refused (keep-alive host switching is a classic filter bypass).
CONNECT hands over to the gateway's tunnel path.

A WebSocket handshake (`Connection: Upgrade`, `Upgrade: websocket`) is decided, scanned
and injected like any request, and goes upstream with its upgrade headers; when upstream
answers 101 the client gets the 101 and from then on bytes are relayed both ways as on a
tunnel (byte cap and idle timeout still apply). When credentials are brokered, what the
client sends in the WebSocket is searched too (ws_scan.py: frames unmasked, payloads
scanned, a split value held back), and the client's compression offer is removed so that
frames stay readable. Other upgrades (h2c, TLS/1.x) carry further HTTP requests that
would then go unchecked: their offer is removed and the request goes on as HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import TYPE_CHECKING

import h11

from corridor.audit.events import ALLOW, WOULD_DENY, Kind
from corridor.gateway.http_target import (
    RequestTarget,
    TargetError,
    request_target,
    rewrite_origin_form,
)
from corridor.gateway.limits import RELAY_CHUNK, LimitReached
from corridor.gateway.relay import Counters, close_quietly, relay, reset, take_buffered
from corridor.gateway.scan import Finding
from corridor.gateway.splice import SpliceTimeout, splice_exactly
from corridor.gateway.upstream import UpstreamError, UpstreamTLSError, dial
from corridor.gateway.ws_scan import FrameError, FrameScanner
from corridor.policy.decide import Decision, Target
from corridor.policy.hosts import InvalidHost, normalize_host, parse_ip_literal

if TYPE_CHECKING:
    from corridor.gateway.scan import BodyScanner
    from corridor.gateway.server import Gateway

# Request heads larger than this are refused (431): h11's default, close to what nginx
# (8 KiB per line, 32 KiB total by default) and Squid (64 KiB) accept.
MAX_HEAD_BYTES = 64 * 1024
# Response bodies at least this big go on by splice(2) when neither side is TLS: below
# it, the pipe and the extra system calls cost more than the copies they save.
SPLICE_MIN_BYTES = 256 * 1024
SPLICE_IDLE_DEFAULT_S = 300.0  # when the policy sets no idle timeout
# Over TLS splice cannot help, but a large response body still need not pass through
# h11 (three copies and an event per read): it is copied in reads of COPY_CHUNK. Below
# COPY_MIN_BYTES the upstream connection it closes (h11 lost count) costs more than it saves.
COPY_MIN_BYTES = SPLICE_MIN_BYTES
COPY_CHUNK = 256 * 1024
_ZEROS = memoryview(bytes(1 << 20))  # stands in for spliced bytes in h11's count
READ_SIZE = RELAY_CHUNK
# The client's h11 states once its request has ended (MUST_CLOSE: "Connection: close").
REQUEST_SENT = (h11.DONE, h11.MUST_CLOSE)

# After a refusal, what the client still sends is read and dropped for this long (or up
# to this much) before the close: closing with unread bytes makes the kernel send a
# reset, which can destroy the refusal before the client reads it (nginx lingering_close).
LINGER_S = 1.0
LINGER_BYTES = 1024 * 1024

# Hop-by-hop headers (RFC 9110 7.6.1) and proxy credentials never go upstream.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
    }
)

# Protocols a request may switch to (RFC 9110 7.8). WebSocket messages go to the endpoint
# whose handshake request was checked; h2c or TLS/1.x would carry further requests that
# the gateway no longer sees, bypassing method and path rules, so they are not offered.
RELAYED_UPGRADES = frozenset({b"websocket"})
WS_EXTENSIONS = b"sec-websocket-extensions"


class _Closed(Exception):
    """The peer went away, broke protocol or stalled; the exchange ends."""


class _Exfiltration(Exception):
    """A request body carries a credential bound to another host; the request stops."""

    def __init__(self, finding: Finding):
        super().__init__(finding.reason)
        self.finding = finding


class HttpExchange:
    """One client connection carrying HTTP/1 requests."""

    def __init__(
        self,
        gw: Gateway,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bytes,
        conn_id: int,
        *,
        proxy: bool,
        dest,
        tls_host: str | None = None,
    ):
        self.gw = gw
        self.reader = reader
        self.writer = writer
        self.conn_id = conn_id
        self.proxy = proxy
        self.dest = dest  # transparent: (address, port, name from the synthetic map)
        # Inspected HTTPS: the TLS server name the client asked for (the SNI, or the
        # CONNECT host); requests must name it, and upstream is TLS to it, verified.
        self.tls_host = tls_host
        self.client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        if first:  # h11 reads an empty chunk as end-of-stream
            self.client.receive_data(first)
        self.protocol = "https" if tls_host is not None else "http"
        self.request_up = 0  # body bytes of the current request / response, for its event
        self.request_down = 0
        self.status: int | None = None
        # The upgrade offered upstream for the current request (None: none), and the
        # protocol upstream switched to (None until a 101 arrives).
        self.upgrade: bytes | None = None
        self.switched: bytes | None = None
        self.up: tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection] | None = None
        self.bound: tuple[str, int] | None = None
        self.counters = Counters(budget=gw.budget)
        self.started = time.monotonic()
        self.up_address: str | None = None
        # An upstream connection was made (it may be closed since: a spliced body's is).
        self.dialled = False
        self.ended: str | None = None  # why the connection ended early, for connection_end
        self.refused = False  # a refusal was sent: let the client read it before we close
        assert gw.limits is not None
        self.limits = gw.limits

    async def run(self) -> None:
        try:
            while await self._one_request():
                pass
        except _Closed:
            pass
        except LimitReached as e:
            self.ended = e.reason
            host, port = self.bound if self.bound is not None else (None, 0)
            self.gw.record_limit(self.conn_id, self.protocol, host, port, self.up_address, e)
            reset(self.writer)
            if self.up is not None:
                reset(self.up[1])
        finally:
            if self.up is not None:
                close_quietly(self.up[1])
            if self.dialled:
                assert self.bound is not None
                self.gw.record_end(
                    self.conn_id,
                    self.started,
                    self.counters,
                    self.bound[0],
                    self.bound[1],
                    self.up_address,
                    self.protocol,
                    self.ended,
                )
            if self.refused:
                await _linger(self.reader, self.writer)
            close_quietly(self.writer)

    async def _one_request(self) -> bool:
        """Handle one request; True when the connection may carry another."""
        try:
            # The whole head within the head timeout: a client dripping one byte a minute
            # (slowloris) does not hold the connection longer than one that sends nothing.
            async with asyncio.timeout(self.limits.head_timeout_s):
                ev = await _next_event(self.client, self.reader, None)
        except TimeoutError:
            self.ended = "request head timeout"
            return False
        except h11.RemoteProtocolError as e:
            self._deny_raw(e.error_status_hint, f"malformed HTTP request: {e}")
            return False
        if not isinstance(ev, h11.Request):
            return False
        if head_size(ev) > MAX_HEAD_BYTES:
            # h11 bounds only an incomplete head; one that arrives whole in a read or two
            # is bounded here, so the cap does not depend on how the bytes were cut.
            reason = f"request head larger than {MAX_HEAD_BYTES} bytes"
            await self._deny(ev, None, 0, Decision(False, reason, None), status=431)
            return False
        smuggling = framing_problem(ev.headers)
        if smuggling is not None:
            await self._deny(ev, None, 0, Decision(False, smuggling, None), status=400)
            return False
        try:
            default_port = self.dest[1] if self.dest is not None else 80
            tgt = request_target(
                ev.method, ev.target, ev.headers, proxy=self.proxy, default_port=default_port
            )
        except TargetError as e:
            await self._deny(ev, None, 0, Decision(False, e.reason, None), status=e.status)
            return False
        if ev.method == b"CONNECT":
            if self.up is not None:
                await self._deny(
                    ev,
                    tgt.host,
                    tgt.port,
                    Decision(False, "CONNECT on a connection already used for plain HTTP", None),
                )
                return False
            leftover = await self._connect_leftover()
            await self.gw.connect_tunnel(
                self.conn_id, tgt.host, tgt.port, self.reader, self.writer, leftover
            )
            raise _Closed
        port = tgt.port
        problem = self._mismatch(tgt)
        if problem:
            await self._deny(ev, tgt.host, port, Decision(False, problem, None))
            return False
        d = self.gw.decide(
            Target(host=tgt.host, port=port, method=ev.method.decode("ascii"), path=tgt.path)
        )
        if not d.allowed:
            await self._deny(ev, tgt.host, port, d)
            return False
        headers = _forward_headers(ev.headers)
        used: tuple[str, ...] = ()
        broker = self.gw.broker
        if broker is not None:
            # Every request we can read is searched for credentials bound elsewhere; only
            # inspected ones (TLS to the bound host, verified) ever get a real value.
            finding = broker.scan(tgt.host, ev.target, ev.headers)
            if finding is not None:
                await self._exfiltration(tgt.host, port, finding)
                return False
            if self.tls_host is not None:
                injected = broker.inject(headers, tgt.host, time.monotonic())
                if injected.refusal is not None:
                    await self._deny(ev, tgt.host, port, Decision(False, injected.refusal, None))
                    return False
                headers, used = injected.headers, injected.used
        self.upgrade = upgrade_offer(ev.headers)
        if self.upgrade is not None:
            if broker is not None and broker.scans(tgt.host):
                # Compressed frames could not be searched: offer the server none.
                headers = [(n, v) for n, v in headers if n.lower() != WS_EXTENSIONS]
            headers += [(b"Connection", b"Upgrade"), (b"Upgrade", self.upgrade)]
        if self.up is None and not await self._open_upstream(ev, tgt, port, d):
            return False
        for name in used:
            self.gw.record(
                Kind.CREDENTIAL,
                conn_id=self.conn_id,
                protocol=self.protocol,
                host=tgt.host,
                port=port,
                data={"name": name},  # which credential, never its value
            )
        self.request_up = self.request_down = 0
        self.status = None
        self.switched = None
        self._record_package(tgt, port)
        try:
            await self._exchange(ev, tgt, headers)
        finally:
            # Inspected requests each get an event; a plain one when it is a would-deny
            # (audit mode), so that every request enforce mode would refuse is recorded.
            if self.tls_host is not None or d.would_deny:
                self._record_request(ev, tgt, port, d)
        return self._next_cycle()

    def _record_package(self, tgt: RequestTarget, port: int) -> None:
        """A `package` event when the request URL is a recognised package download."""
        from corridor.audit import packages

        scheme = "https" if self.tls_host is not None else "http"
        url = f"{scheme}://{tgt.host}:{port}{tgt.path}"
        package = packages.parse(url)
        if package is not None:
            # The query is left out of the record: it may carry tokens (placeholders).
            self.gw.emit(
                packages.package_event(
                    self.gw.session,
                    time.time(),
                    url.split("?", 1)[0],
                    package,
                    host=tgt.host,
                    port=port,
                    conn_id=self.conn_id,
                )
            )

    def _record_request(self, ev: h11.Request, tgt: RequestTarget, port: int, d: Decision) -> None:
        """One HTTP event per request that went upstream: method, path (never the query),
        status, and for a switched protocol its name and the bytes relayed after the 101.

        Refused requests are recorded by _deny; a request let through in audit mode that
        enforce mode would refuse says `would-deny`, why, and by which rule.
        """
        self.gw.record(
            Kind.HTTP,
            conn_id=self.conn_id,
            decision=WOULD_DENY if d.would_deny else ALLOW,
            reason=d.reason if d.would_deny else None,
            rule=d.rule if d.would_deny else None,
            protocol=self.protocol,
            host=tgt.host,
            port=port,
            method=ev.method.decode("ascii", "replace"),
            path=tgt.path.split("?", 1)[0],
            status=self.status,
            bytes_up=self.request_up,
            bytes_down=self.request_down,
            data=(
                {"upgrade": self.switched.decode("ascii", "replace")}
                if self.switched is not None
                else None
            ),
        )

    def _mismatch(self, tgt: RequestTarget) -> str | None:
        try:
            host = _host_key(tgt.host)
        except InvalidHost as e:
            return f"invalid host name: {e}"
        if self.tls_host is not None and _host_key(self.tls_host) != host:
            return f"Host {tgt.host} differs from the TLS server name {self.tls_host}"
        if self.dest is not None:
            address, port, mapped = self.dest
            if tgt.port != port:
                return f"Host port {tgt.port} differs from the destination port {port}"
            if mapped is not None and normalize_host(mapped) != host:
                return f"Host {tgt.host} differs from the name resolved for {address} ({mapped})"
        if self.bound is not None and self.bound != (
            host,
            tgt.port if self.dest is None else self.dest[1],
        ):
            return f"request for {tgt.host} on a connection bound to {self.bound[0]}"
        return None

    async def _open_upstream(
        self, ev: h11.Request, tgt: RequestTarget, port: int, d: Decision
    ) -> bool:
        if self.dest is not None:
            port = self.dest[1]
        try:
            found = await self.gw.upstream_addresses(tgt.host, port)
            self.gw.budget.check_bytes_left()
        except UpstreamError as e:
            await self._deny(ev, tgt.host, port, Decision(False, e.reason, d.rule), status=502)
            return False
        except LimitReached as e:
            await self._deny(ev, tgt.host, port, Decision(False, e.reason, e.rule))
            return False
        if isinstance(found, Decision):
            await self._deny(ev, tgt.host, port, found)
            return False
        # The event is queued before the first packet goes upstream.
        d = found.audit_note or d
        addresses = found.addresses
        self.gw.record_decision(self.conn_id, self.protocol, tgt.host, port, str(addresses[0]), d)
        self.bound = (_host_key(tgt.host), port)
        try:
            if self.tls_host is not None:
                up_r, up_w, addr = await dial(
                    addresses, port, tls=self.gw.upstream_tls, server_hostname=self.tls_host
                )
            else:
                up_r, up_w, addr = await dial(addresses, port)
        except UpstreamTLSError as e:
            # A certificate we cannot verify is a refusal with its reason, never a pass.
            self.bound = None
            await self._deny(ev, tgt.host, port, Decision(False, e.reason, d.rule), status=502)
            return False
        except UpstreamError as e:
            self.up = None
            self.dialled = False  # its end is recorded here, once
            await self._send_simple(502, f"corridor: {e.reason}\n")
            self.gw.record_end(
                self.conn_id,
                self.started,
                self.counters,
                tgt.host,
                port,
                None,
                self.protocol,
                reason=e.reason,
            )
            self.bound = None
            raise _Closed from None
        self.up_address = str(addr)
        self.dialled = True
        self.up = (up_r, up_w, h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES))
        return True

    async def _exfiltration(self, host: str, port: int, finding: Finding) -> None:
        """Refuse a request that carries a credential bound to another host, and flag it."""
        self.refused = True
        self._record_exfiltration(host, port, finding)
        from corridor.gateway.server import refusal_body

        d = Decision(False, finding.reason, None)
        extra = [(b"X-Corridor-Decision", f'deny; reason="{_safe(d.reason)}"'.encode())]
        await self._send_simple(403, refusal_body(d), extra)

    def _record_exfiltration(self, host: str, port: int, finding: Finding) -> None:
        self.gw.stats.blocked += 1
        self.gw.record(
            Kind.EXFILTRATION,
            conn_id=self.conn_id,
            protocol=self.protocol,
            host=host,
            port=port,
            decision="deny",
            reason=finding.reason,
            data={
                "name": finding.credential,
                "what": finding.what,
                "where": finding.where,
                "encoding": finding.encoding,
            },
        )

    async def _exchange(
        self, req: h11.Request, tgt: RequestTarget, headers: list[tuple[bytes, bytes]]
    ) -> None:
        assert self.up is not None
        up_r, _up_w, uc = self.up
        if not any(n.lower() == b"host" for n, _ in headers):
            headers.append((b"Host", tgt.host.encode()))
        self._write_up(
            uc.send(
                h11.Request(
                    method=req.method,
                    target=rewrite_origin_form(tgt),
                    headers=headers,
                    http_version="1.1",
                )
            )
        )
        try:
            # Most requests have no body, and h11 has its end already: then the response
            # is all there is to wait for, without a task group and two tasks per request.
            first = self.client.next_event()
            if isinstance(first, h11.EndOfMessage):
                await self._end_body(uc, tgt.host, first, None)
                await self._pump_response(uc, up_r, req.method)
            else:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._pump_body(uc, tgt.host, first))
                    tg.create_task(self._pump_response(uc, up_r, req.method))
        except* _Exfiltration as group:
            # The body part holding the value never went upstream; neither does the rest.
            reset(self.up[1])
            finding = group.exceptions[0].finding  # type: ignore[attr-defined]
            await self._exfiltration(tgt.host, tgt.port, finding)
            raise _Closed from None
        except* LimitReached as group:
            raise group.exceptions[0] from None
        except* (h11.ProtocolError, ConnectionError, OSError, _Closed) as group:
            raise _Closed from group
        if self.switched is not None:
            await self._relay_switched(uc, tgt)

    async def _relay_switched(self, uc: h11.Connection, tgt: RequestTarget) -> None:
        """After a 101: what either side sent past the heads, then bytes both ways.

        With credentials to protect, the client's side is read through a FrameScanner: a
        value found ends the WebSocket (reset both ways) and is flagged like any other.
        """
        assert self.up is not None
        up_r, up_w, _ = self.up
        up_up, down = self.counters.up, self.counters.down
        broker = self.gw.broker
        frames = None
        reader: asyncio.StreamReader | _ScanningReader = self.reader
        if broker is not None and broker.scans(tgt.host):
            frames = FrameScanner(broker.body_scanner(tgt.host, "websocket message"))
            reader = _ScanningReader(self.reader, frames)
        # TLS towards the client has no half-close: once upstream is done, the client's
        # connection is closed instead, or the client would wait for the half-closed timeout.
        client_w = self.writer if self.writer.can_write_eof() else _CloseOnEof(self.writer)
        try:
            self._write_client(bytes(uc.trailing_data[0]))
            early = bytes(self.client.trailing_data[0])
            if frames is not None and early:
                step = frames.feed(early)
                if step.finding is not None:
                    raise _Exfiltration(step.finding)
                early = step.release
            self._write_up(early)
            self.ended = await relay(
                reader,  # type: ignore[arg-type]  # the StreamReader subset relay uses
                client_w,  # type: ignore[arg-type]  # the StreamWriter subset relay uses
                up_r,
                up_w,
                self.counters,
                self.gw.timeouts,
            )
        except* _Exfiltration as group:
            # The frames holding the value never went upstream; the WebSocket ends here.
            finding = group.exceptions[0].finding  # type: ignore[attr-defined]
            self._record_exfiltration(tgt.host, tgt.port, finding)
            self.ended = finding.reason
            reset(up_w)
            reset(self.writer)
        except* FrameError as group:
            reason = group.exceptions[0].reason  # type: ignore[attr-defined]
            d = Decision(False, reason, None)
            self.gw.record_decision(self.conn_id, self.protocol, tgt.host, tgt.port, None, d)
            self.ended = reason
            reset(up_w)
            reset(self.writer)
        finally:
            self.request_up = self.counters.up - up_up
            self.request_down = self.counters.down - down

    async def _pump_body(self, uc: h11.Connection, host: str, first: object = None) -> None:
        """The request body upstream, scanned; `first` is an event already taken from
        the client's h11 (h11.NEED_DATA or None: none)."""
        broker = self.gw.broker
        scanner = broker.body_scanner(host) if broker is not None else None
        ev = first
        if ev is h11.NEED_DATA:
            ev = None
        elif ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
            raise _Closed  # as _next_event's None
        while True:
            if ev is None:
                ev = await _next_event(self.client, self.reader, self.limits.idle_timeout_s)
            if isinstance(ev, h11.Data):
                data = ev.data
                if scanner is not None:
                    # Bytes that may begin a value the next piece completes stay here.
                    step = scanner.feed(data)
                    if step.finding is not None:
                        raise _Exfiltration(step.finding)
                    data = step.release
                await self._send_body(uc, data)
                ev = None
            elif isinstance(ev, h11.EndOfMessage):
                await self._end_body(uc, host, ev, scanner)
                return
            else:
                raise _Closed

    async def _end_body(
        self, uc: h11.Connection, host: str, ev: h11.EndOfMessage, scanner: BodyScanner | None
    ) -> None:
        """The request's end upstream: what `scanner` held back, then trailers, searched."""
        if scanner is not None:
            await self._send_body(uc, scanner.finish())
        broker = self.gw.broker
        if broker is not None and ev.headers:
            # Trailers (chunked bodies) are headers too.
            finding = broker.scan(host, b"", ev.headers)
            if finding is not None:
                raise _Exfiltration(finding)
        self._write_up(uc.send(h11.EndOfMessage(headers=ev.headers)))

    async def _send_body(self, uc: h11.Connection, data: bytes) -> None:
        if data:
            self.request_up += len(data)
            self._write_up(uc.send(h11.Data(data=data)))
            await self.up[1].drain()  # type: ignore[index]

    async def _pump_response(
        self, uc: h11.Connection, up_r: asyncio.StreamReader, method: bytes
    ) -> None:
        while True:
            ev = await _next_event(uc, up_r, self.limits.idle_timeout_s)
            if isinstance(ev, h11.InformationalResponse):
                if ev.status_code == 101:
                    self._switch(ev)
                    return
                self._write_client(self.client.send(ev))
            elif isinstance(ev, h11.Response):
                self.status = ev.status_code
                self._write_client(
                    self.client.send(
                        h11.Response(
                            status_code=ev.status_code,
                            headers=_forward_headers(ev.headers),
                            reason=ev.reason,
                        )
                    )
                )
                length = _spliceable_length(method, ev)
                # Both fast paths close the upstream connection at the body's end: only
                # once the request body is all sent, or its pump would find none to use.
                if (
                    length is not None
                    and self.client.their_state in REQUEST_SENT
                    and (
                        await self._splice_body(uc, up_r, length)
                        or await self._copy_body(uc, up_r, length)
                    )
                ):
                    return
            elif isinstance(ev, h11.Data):
                self.request_down += len(ev.data)
                self._write_client(self.client.send(h11.Data(data=ev.data)))
                await self.writer.drain()
            elif isinstance(ev, h11.EndOfMessage):
                self._write_client(self.client.send(h11.EndOfMessage(headers=ev.headers)))
                await self.writer.drain()
                return
            else:
                raise _Closed

    async def _splice_body(
        self, uc: h11.Connection, up_r: asyncio.StreamReader, length: int
    ) -> bool:
        """Send a large response body on in the kernel (gateway/splice.py): nothing reads
        it, so it need not pass through Python. False when this connection cannot (TLS
        on either side): the caller goes on with h11.

        What h11 and the stream reader already hold goes first, through h11; the rest is
        spliced, exactly `length` bytes in all. The client's h11 is then told the body
        was sent; the upstream connection is closed rather than re-synchronised (its h11
        never saw the bytes), and the next request on this connection dials again.
        """
        assert self.up is not None
        up_w = self.up[1]
        up_sock = up_w.get_extra_info("socket")
        client_sock = self.writer.get_extra_info("socket")
        if (
            self.tls_host is not None
            or up_sock is None
            or client_sock is None
            or up_w.get_extra_info("sslcontext") is not None
            or self.writer.get_extra_info("sslcontext") is not None
        ):
            return False
        up_w.transport.pause_reading()  # from here on only splice reads upstream
        buffered = take_buffered(up_r)
        if buffered:  # h11 reads an empty chunk as the end of the stream
            uc.receive_data(buffered)
        sent = self._send_held_body(uc, length)
        await _drain_fully(self.writer)

        def moved(n: int) -> None:
            self.request_down += n
            self.counters.down += n

        rest = length - sent
        try:
            done = await splice_exactly(
                up_sock,
                client_sock,
                rest,
                idle_timeout_s=self.limits.idle_timeout_s or SPLICE_IDLE_DEFAULT_S,
                on_moved=moved,
            )
        except (SpliceTimeout, OSError) as e:
            raise _Closed(str(e)) from e
        if done < rest:
            raise _Closed("upstream closed the connection inside the body")
        self._passed_body(rest, up_w)
        return True

    async def _copy_body(self, uc: h11.Connection, up_r: asyncio.StreamReader, length: int) -> bool:
        """Send a large response body on in big reads, past h11 (TLS on either side, where
        splice cannot). Like `_splice_body`: nothing reads the body, so h11 need not frame
        it; what h11 already holds goes first through it, then `length` bytes in all are
        copied from upstream's stream to the client's, COPY_CHUNK at a time, and the
        client's h11 is given the count. Upstream's h11 never saw the bytes: that
        connection is closed, and the next request on this connection dials again.
        False when the body is not worth it (below COPY_MIN_BYTES).
        """
        if length < COPY_MIN_BYTES:
            return False
        assert self.up is not None
        up_w = self.up[1]
        sent = self._send_held_body(uc, length)
        # What h11 had read past the body's start is in its buffer, and only the body can
        # follow a response head on this connection, so none is left there once the loop
        # above ran dry; the rest of the body is in (or still coming to) the stream.
        rest = length - sent
        idle_s = self.limits.idle_timeout_s
        while rest:
            try:
                async with asyncio.timeout(idle_s):
                    data = await up_r.read(min(rest, COPY_CHUNK))
            except TimeoutError as e:
                raise _Closed("idle timeout") from e
            if not data:
                raise _Closed("upstream closed the connection inside the body")
            rest -= len(data)
            self.request_down += len(data)
            self.counters.down += len(data)
            self.writer.write(data)
            await self.writer.drain()
        self._passed_body(length - sent, up_w)
        return True

    def _send_held_body(self, uc: h11.Connection, length: int) -> int:
        """Send on, through h11, the body bytes upstream's h11 already holds (up to
        `length`); return how many."""
        sent = 0
        while sent < length:
            ev = uc.next_event()
            if ev is h11.NEED_DATA:
                break
            if not isinstance(ev, h11.Data):  # an early end: h11's own checks said why
                raise _Closed
            self.request_down += len(ev.data)
            self._write_client(self.client.send(h11.Data(data=ev.data)))
            sent += len(ev.data)
        return sent

    def _passed_body(self, count: int, up_w: asyncio.StreamWriter) -> None:
        """After `count` body bytes went to the client past h11: end the response and
        close the upstream connection, whose h11 never saw them (the next request on
        this connection dials again)."""
        # The client's h11 counts the body against its Content-Length; give it the count
        # without the bytes (a view of zeros, passed through, never copied or sent).
        while count:
            piece = _ZEROS[: min(count, len(_ZEROS))]
            self.client.send_with_data_passthrough(h11.Data(data=piece))
            count -= len(piece)
        self._write_client(self.client.send(h11.EndOfMessage()))
        close_quietly(up_w)
        self.up = None

    def _switch(self, ev: h11.InformationalResponse) -> None:
        """Pass upstream's 101 on, when it switches to the protocol we offered."""
        chosen = _tokens(ev.headers, b"upgrade")
        if self.upgrade is None or len(chosen) != 1 or chosen[0] not in _offered(self.upgrade):
            raise _Closed  # a switch nobody asked for: the exchange cannot go on
        protocol = next(v for n, v in ev.headers if n.lower() == b"upgrade").strip()
        headers = [
            *_forward_headers(ev.headers),
            (b"Connection", b"Upgrade"),
            (b"Upgrade", protocol),
        ]
        self._write_client(
            self.client.send(h11.InformationalResponse(status_code=101, headers=headers))
        )
        self.status = 101
        self.switched = protocol

    def _next_cycle(self) -> bool:
        client_done = self.client.our_state is h11.DONE and self.client.their_state is h11.DONE
        if self.up is None:  # the upstream connection was closed after a spliced body
            if client_done:
                self.client.start_next_cycle()
            return client_done
        uc = self.up[2]
        if client_done and uc.our_state is h11.DONE and uc.their_state is h11.DONE:
            self.client.start_next_cycle()
            uc.start_next_cycle()
            return True
        return False

    async def _connect_leftover(self) -> bytes:
        ev = await _next_event(self.client, self.reader, self.limits.head_timeout_s)
        if not isinstance(ev, h11.EndOfMessage):
            raise _Closed
        data, _closed = self.client.trailing_data
        return bytes(data)

    def _write_up(self, data: bytes | None) -> None:
        if data:
            assert self.up is not None
            self.counters.add_up(len(data))  # LimitReached before a byte over the cap leaves
            self.up[1].write(data)

    def _write_client(self, data: bytes | None) -> None:
        if data:
            self.writer.write(data)
            self.counters.down += len(data)

    async def _deny(
        self, ev: h11.Request, host: str | None, port: int, d: Decision, status: int = 403
    ) -> None:
        self.refused = True
        if self.up is None:
            self.gw.record_decision(self.conn_id, self.protocol, host, port, None, d)
        else:
            self.gw.record(
                Kind.CONNECTION,
                conn_id=self.conn_id,
                protocol=self.protocol,
                host=host,
                port=port,
                decision="deny",
                reason=d.reason,
                rule=d.rule,
            )
            self.gw.stats.blocked += 1
        from corridor.gateway.server import refusal_body

        body = refusal_body(d) if status == 403 else f"corridor: {d.reason}\n".encode()
        extra = [(b"X-Corridor-Decision", f'deny; reason="{_safe(d.reason)}"'.encode())]
        await self._send_simple(status, body, extra)

    def _deny_raw(self, status: int, reason: str) -> None:
        self.refused = True
        d = Decision(False, reason, None)
        self.gw.record_decision(self.conn_id, self.protocol, None, 0, None, d)
        body = f"corridor: {reason}\n".encode()
        head = (
            f"HTTP/1.1 {status} Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nX-Corridor-Decision: deny\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(ConnectionError, OSError):
            self.writer.write(head + body)

    async def _send_simple(
        self, status: int, body: bytes | str, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        if isinstance(body, str):
            body = body.encode()
        headers = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
            *(extra or []),
        ]
        try:
            if self.client.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                data = self.client.send(h11.Response(status_code=status, headers=headers))
                data = (data or b"") + (self.client.send(h11.Data(data=body)) or b"")
                data += self.client.send(h11.EndOfMessage()) or b""
            else:
                raise h11.LocalProtocolError("late")
        except h11.LocalProtocolError:
            data = (
                f"HTTP/1.1 {status} Error\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode() + body
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            pass


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then drop what the client still sends for a moment (LINGER_*)."""
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_S):
            dropped = 0
            while dropped < LINGER_BYTES and (chunk := await reader.read(READ_SIZE)):
                dropped += len(chunk)


def head_size(req: h11.Request) -> int:
    """The size of a request head as sent (request line, header lines, blank line)."""
    line = len(req.method) + len(req.target) + len(b"  HTTP/1.1\r\n")
    return line + sum(len(n) + len(v) + 4 for n, v in req.headers) + 2


def framing_problem(headers) -> str | None:
    """Why a request's body framing is ambiguous (a smuggling attempt), or None.

    h11 already refuses conflicting Content-Lengths and any Transfer-Encoding but a single
    "chunked"; it accepts Content-Length together with Transfer-Encoding (RFC 9112 §6.1
    lets a server use the latter), which a server behind us may read the other way round.
    We refuse it, as RFC 9112 permits.
    """
    names = {name.lower() for name, _ in headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        return "request smuggling: both Content-Length and Transfer-Encoding"
    return None


def upgrade_offer(headers) -> bytes | None:
    """The `Upgrade` value to send upstream for a request, or None.

    An upgrade counts only when `Connection` names it (RFC 9110 7.8); of the protocols
    offered, only those in RELAYED_UPGRADES are kept, as the client spelled them.
    """
    if b"upgrade" not in _tokens(headers, b"connection"):
        return None
    kept = [
        p.strip()
        for name, value in headers
        if name.lower() == b"upgrade"
        for p in value.split(b",")
        if p.strip().split(b"/", 1)[0].lower() in RELAYED_UPGRADES
    ]
    return b", ".join(kept) or None


def _offered(upgrade: bytes) -> set[bytes]:
    return {p.strip().lower() for p in upgrade.split(b",")}


def _tokens(headers, name: bytes) -> list[bytes]:
    """The comma-separated tokens of every `name` header, lower-cased."""
    return [
        t.strip().lower()
        for n, v in headers
        if n.lower() == name
        for t in v.split(b",")
        if t.strip()
    ]


class _ScanningReader:
    """The client's side of a WebSocket, read through a FrameScanner: only what has been
    searched comes out; a value found raises _Exfiltration."""

    def __init__(self, reader: asyncio.StreamReader, frames: FrameScanner) -> None:
        self._reader = reader
        self._frames = frames
        self._ended = False

    async def read(self, n: int = -1) -> bytes:
        while not self._ended:
            data = await self._reader.read(n)
            if not data:
                self._ended = True
                return self._frames.finish()  # what was held; b"" is the end
            step = self._frames.feed(data)
            if step.finding is not None:
                raise _Exfiltration(step.finding)
            if step.release:  # b"" would read as the end: wait for more instead
                return step.release
        return b""


class _CloseOnEof:
    """A client stream whose end-of-output closes it (TLS: close_notify, then close)."""

    def __init__(self, stream: asyncio.StreamWriter) -> None:
        self._stream = stream

    def write(self, data: bytes) -> None:
        self._stream.write(data)

    async def drain(self) -> None:
        await self._stream.drain()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._stream.close()

    def close(self) -> None:
        self._stream.close()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._stream.get_extra_info(name, default)


# Each request compares its Host (and the TLS name) this way, two or three times; a
# connection's requests name the same few hosts. Invalid names raise and are not cached.
HOST_KEY_CACHE = 1024


@functools.lru_cache(maxsize=HOST_KEY_CACHE)
def _host_key(host: str) -> str:
    """How hosts compare: normalised names; addresses in their one canonical spelling."""
    literal = parse_ip_literal(host)
    return str(literal) if literal is not None else normalize_host(host)


def _safe(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 and c != '"' else "?" for c in text)


def _forward_headers(headers) -> list[tuple[bytes, bytes]]:
    """Headers minus hop-by-hop ones and any the Connection header names."""
    named = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named |= {v.strip().lower() for v in value.split(b",")}
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named]


def _spliceable_length(method: bytes, ev: h11.Response) -> int | None:
    """The body length when a response body is large enough to splice, else None.

    Only a body framed by Content-Length (h11 has already refused a response framed two
    ways); none for HEAD, 1xx, 204 and 304, which have no body whatever they say.
    """
    if method == b"HEAD" or ev.status_code in (204, 304) or ev.status_code < 200:
        return None
    lengths = [v for n, v in ev.headers if n == b"content-length"]
    if len(lengths) != 1 or any(n == b"transfer-encoding" for n, _ in ev.headers):
        return None
    length = int(lengths[0])  # h11 checked it is a decimal number
    return length if length >= SPLICE_MIN_BYTES else None


async def _drain_fully(writer: asyncio.StreamWriter) -> None:
    """Wait until the transport has handed every queued byte to the kernel: bytes
    spliced into the socket after would otherwise overtake them."""
    transport = writer.transport
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0)
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits(high=high, low=low)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader, idle_s: float | None):
    """The next h11 event; _Closed when the peer goes away or sends nothing for `idle_s`."""
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            try:
                # asyncio.timeout, not wait_for: wait_for makes a task for every read.
                async with asyncio.timeout(idle_s):
                    data = await reader.read(READ_SIZE)
            except TimeoutError as e:
                raise _Closed("idle timeout") from e
            except (ConnectionError, OSError) as e:
                raise _Closed from e
            conn.receive_data(data)
            continue
        if ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
            return None
        return ev
