"""The gateway: asyncio listeners on the sockets the sandbox handed over.

Three entrances, one policy:
- transparent (every TCP connect from the sandbox, redirected by nft): the name comes
  from the TLS ClientHello (SNI), the HTTP Host header, or the sandbox's own DNS answer
  (synthetic address -> name); an address with no name is decided by address alone;
- explicit HTTP proxy (HTTP_PROXY/HTTPS_PROXY): CONNECT and absolute-form requests;
- DNS (UDP and TCP): allowed names are answered, others get NXDOMAIN locally.

Each connection is decided before anything goes upstream, and its event is queued
before the dial. Denials: 403 with a reason for HTTP clients, a TCP reset for TLS and
raw TCP, NXDOMAIN for DNS.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from corridor.audit.events import Event, Kind
from corridor.gateway import dns_msg
from corridor.gateway.http_proxy import HttpExchange
from corridor.gateway.names import NameMap
from corridor.gateway.origdst import original_destination
from corridor.gateway.relay import Counters, close_quietly, relay, reset
from corridor.gateway.sniff import Kind as Sniffed
from corridor.gateway.sniff import classify
from corridor.gateway.tls_hello import ClientHelloReader, TLSParseError
from corridor.gateway.upstream import Resolver, UpstreamError, dial
from corridor.policy import Decision, Policy, Target, decide, decide_dns
from corridor.policy.hosts import InvalidHost, normalize_host

PEEK_TIMEOUT_S = 0.3  # server-speaks-first protocols (SSH banners, SMTP) send nothing first
HELLO_TIMEOUT_S = 10.0  # a client that started a TLS handshake finishes it within this
PEEK_MAX = 64 * 1024  # a ClientHello larger than this is not one we accept
DNS_TTL_S = 30  # short: the synthetic map lives only as long as the session
READ_LIMIT = 256 * 1024


def decision_label(d: Decision) -> str:
    if d.would_deny:
        return "would-deny"
    return "allow" if d.allowed else "deny"


@dataclass
class Stats:
    allowed: int = 0
    blocked: int = 0
    dns: int = 0
    dns_refused: int = 0


@dataclass
class Gateway:
    policy: Policy
    session: str
    emit: Callable[[Event], None]
    resolver: Resolver = field(default_factory=Resolver)
    names: NameMap = field(default_factory=NameMap)
    stats: Stats = field(default_factory=Stats)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _servers: list = field(default_factory=list)
    _tasks: set = field(default_factory=set)

    # ---- start / stop -------------------------------------------------------------

    async def start(self, listeners: dict[str, socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        self._servers.append(
            await asyncio.start_server(
                self._on_transparent, sock=listeners["transparent"], limit=READ_LIMIT
            )
        )
        self._servers.append(
            await asyncio.start_server(self._on_proxy, sock=listeners["proxy"], limit=READ_LIMIT)
        )
        self._servers.append(
            await asyncio.start_server(self._on_dns_tcp, sock=listeners["dns_tcp"])
        )
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DnsUdp(self), sock=listeners["dns_udp"]
        )
        self._servers.append(transport)

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- events -------------------------------------------------------------------

    def record(self, kind: Kind, **fields) -> None:
        self.emit(Event(session=self.session, kind=kind, ts=time.time(), **fields))

    def record_decision(
        self,
        conn_id: int,
        protocol: str,
        host: str | None,
        port: int,
        address: str | None,
        d: Decision,
    ) -> None:
        if d.allowed:
            self.stats.allowed += 1
        else:
            self.stats.blocked += 1
        self.record(
            Kind.CONNECTION,
            conn_id=conn_id,
            protocol=protocol,
            host=host,
            port=port,
            address=address,
            decision=decision_label(d),
            reason=d.reason,
            rule=d.rule,
        )

    def record_end(
        self,
        conn_id: int,
        started: float,
        counters: Counters,
        host: str | None,
        port: int,
        address: str | None,
        protocol: str,
        reason: str | None = None,
    ) -> None:
        self.record(
            Kind.CONNECTION_END,
            conn_id=conn_id,
            host=host,
            port=port,
            address=address,
            protocol=protocol,
            bytes_up=counters.up,
            bytes_down=counters.down,
            duration_ms=round((time.monotonic() - started) * 1000, 3),
            reason=reason,
        )

    def decide(self, target: Target) -> Decision:
        return decide(self.policy, target)

    def _track(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- transparent ----------------------------------------------------------------

    async def _on_transparent(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        conn_id = next(self._ids)
        sock = writer.get_extra_info("socket")
        orig = original_destination(sock) if sock is not None else None
        if orig is None:
            # A direct connect to the listener itself: nothing to forward to.
            self.record_decision(
                conn_id, "tcp", None, 0, None, Decision(False, "no original destination", None)
            )
            reset(writer)
            return
        address, port = orig
        mapped_name = self.names.name_for(address)
        first, kind = await _sniff(reader, PEEK_TIMEOUT_S)
        if kind is Sniffed.HTTP:
            await HttpExchange(
                self, reader, writer, first, conn_id, proxy=False, dest=(address, port, mapped_name)
            ).run()
            return
        host: str | None = mapped_name
        protocol = "tcp"
        if kind is Sniffed.TLS:
            protocol = "tls"
            hello, first = await _read_client_hello(reader, first)
            if isinstance(hello, str):
                d = Decision(False, hello, None)
                self.record_decision(conn_id, protocol, mapped_name, port, str(address), d)
                reset(writer)
                return
            if hello.sni:
                if _names_differ(mapped_name, hello.sni):
                    d = Decision(
                        False,
                        f"SNI {hello.sni} differs from the name resolved for "
                        f"{address} ({mapped_name})",
                        None,
                    )
                    self.record_decision(conn_id, protocol, hello.sni, port, str(address), d)
                    reset(writer)
                    return
                host = hello.sni
        target = Target(host=host, port=port, address=None if host else address)
        await self._forward(
            conn_id, protocol, target, reader, writer, first or b"", shown_address=str(address)
        )

    async def _forward(
        self,
        conn_id: int,
        protocol: str,
        target: Target,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bytes,
        shown_address: str | None = None,
        on_allowed: bytes | None = None,
    ) -> None:
        """Decide, resolve, record, dial, then relay (the one path every tunnel takes)."""
        d = self.decide(target)
        if not d.allowed:
            self.record_decision(conn_id, protocol, target.host, target.port, shown_address, d)
            if on_allowed is not None:
                await _send_403(writer, d)
            else:
                reset(writer)
            return
        dial_host = target.host or str(target.address)
        try:
            resolved = await self.resolver.resolve(dial_host)
        except UpstreamError as e:
            self.record_decision(
                conn_id,
                protocol,
                target.host,
                target.port,
                shown_address,
                Decision(False, e.reason, d.rule),
            )
            await _refuse(writer, on_allowed, 502, e.reason)
            return
        # The event is queued before the first packet goes upstream.
        self.record_decision(
            conn_id,
            protocol,
            target.host,
            target.port,
            str(resolved.addresses[0]) if resolved.addresses else None,
            d,
        )
        started = time.monotonic()
        counters = Counters()
        try:
            up_r, up_w, addr = await dial(resolved.addresses, target.port)
        except UpstreamError as e:
            self.record_end(
                conn_id,
                started,
                counters,
                target.host,
                target.port,
                None,
                protocol,
                reason=e.reason,
            )
            await _refuse(writer, on_allowed, 502, e.reason)
            return
        try:
            if on_allowed is not None:
                writer.write(on_allowed)
            if first:
                up_w.write(first)
                counters.up += len(first)
            await relay(reader, writer, up_r, up_w, counters)
        finally:
            self.record_end(
                conn_id, started, counters, target.host, target.port, str(addr), protocol
            )

    # ---- explicit proxy -------------------------------------------------------------

    async def _on_proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        conn_id = next(self._ids)
        await HttpExchange(self, reader, writer, b"", conn_id, proxy=True, dest=None).run()

    async def connect_tunnel(
        self,
        conn_id: int,
        host: str,
        port: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        leftover: bytes,
    ) -> None:
        """After an allowed CONNECT: check the SNI that follows, then relay."""
        d = self.decide(Target(host=host, port=port))
        if not d.allowed:
            self.record_decision(conn_id, "connect", host, port, None, d)
            await _send_403(writer, d)
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        first, kind = await _sniff(reader, PEEK_TIMEOUT_S, leftover)
        protocol = "connect"
        if kind is Sniffed.TLS:
            protocol = "tls"
            hello, first = await _read_client_hello(reader, first)
            if isinstance(hello, str):
                self.record_decision(
                    conn_id, protocol, host, port, None, Decision(False, hello, None)
                )
                reset(writer)
                return
            if hello.sni and _names_differ(host, hello.sni):
                self.record_decision(
                    conn_id,
                    protocol,
                    hello.sni,
                    port,
                    None,
                    Decision(False, f"SNI {hello.sni} differs from CONNECT host {host}", None),
                )
                reset(writer)
                return
        await self._forward(
            conn_id, protocol, Target(host=host, port=port), reader, writer, first or b""
        )

    # ---- DNS --------------------------------------------------------------------------

    async def answer_dns(self, wire: bytes, transport: str) -> bytes | None:
        tcp = transport == "dns-tcp"
        try:
            q = dns_msg.parse_query(wire)
        except dns_msg.DNSParseError as e:
            self.stats.dns += 1
            self.stats.dns_refused += 1
            self.record(
                Kind.DNS, protocol=transport, decision="deny", reason=f"bad query: {e.reason}"
            )
            return dns_msg.error_reply(wire, e.rcode) if e.rcode is not None else None
        self.stats.dns += 1
        d = decide_dns(self.policy, q.name)
        if not d.allowed:
            self.stats.dns_refused += 1
            self.record(
                Kind.DNS,
                protocol=transport,
                host=q.name,
                qtype=q.qtype,
                decision="deny",
                reason=d.reason,
                rule=d.rule,
            )
            return dns_msg.nxdomain(q, tcp=tcp)
        try:
            resolved = await self.resolver.resolve(normalize_host(q.name))
        except (UpstreamError, InvalidHost) as e:
            reason = e.reason if isinstance(e, UpstreamError) else str(e)
            self.stats.dns_refused += 1
            self.record(
                Kind.DNS,
                protocol=transport,
                host=q.name,
                qtype=q.qtype,
                decision=decision_label(d),
                reason=reason,
                rule=d.rule,
            )
            return dns_msg.nxdomain(q, tcp=tcp)
        families = {a.version for a in resolved.addresses}
        answers = []
        if q.qtype == "A" and 4 in families:
            answers.append(self.names.address_for(q.name, socket.AF_INET))
        elif q.qtype == "AAAA" and 6 in families:
            answers.append(self.names.address_for(q.name, socket.AF_INET6))
        self.record(
            Kind.DNS,
            protocol=transport,
            host=q.name,
            qtype=q.qtype,
            decision=decision_label(d),
            reason=d.reason,
            rule=d.rule,
            address=",".join(str(a) for a in answers) or None,
        )
        return dns_msg.answer(q, answers, DNS_TTL_S, tcp=tcp)

    async def _on_dns_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = dns_msg.TcpDnsReader()
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                for wire in buf.feed(data):
                    reply = await self.answer_dns(wire, "dns-tcp")
                    if reply is not None:
                        writer.write(dns_msg.frame(reply))
                        await writer.drain()
        except (dns_msg.DNSParseError, ConnectionError, OSError):
            pass
        finally:
            close_quietly(writer)


class _DnsUdp(asyncio.DatagramProtocol):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.gateway._track(self._answer(data, addr))

    async def _answer(self, data: bytes, addr) -> None:
        reply = await self.gateway.answer_dns(data, "dns-udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


# ---- small helpers -------------------------------------------------------------------


def _names_differ(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return normalize_host(a) != normalize_host(b)
    except InvalidHost:
        return True


async def _sniff(
    reader: asyncio.StreamReader, timeout: float, first: bytes = b""
) -> tuple[bytes, Sniffed]:
    """Read until the first bytes say TLS, HTTP or other; nothing within `timeout` is other."""
    buf = first
    deadline = time.monotonic() + timeout
    while True:
        kind = classify(buf) if buf else Sniffed.NEED_MORE
        if kind is not Sniffed.NEED_MORE:
            return buf, kind
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return buf, Sniffed.OTHER
        try:
            more = await asyncio.wait_for(reader.read(PEEK_MAX), remaining)
        except (TimeoutError, ConnectionError, OSError):
            return buf, Sniffed.OTHER
        if not more:
            return buf, Sniffed.OTHER
        buf += more


async def _read_client_hello(reader: asyncio.StreamReader, first: bytes):
    """(ClientHello, bytes read so far), or (reason it is refused, None)."""
    parser = ClientHelloReader()
    buf = first
    deadline = time.monotonic() + HELLO_TIMEOUT_S
    chunk = first
    while True:
        try:
            hello = parser.feed(chunk)
        except TLSParseError as e:
            return f"malformed TLS ClientHello: {e.reason}", None
        if hello is not None:
            return hello, buf
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "TLS ClientHello not completed in time", None
        try:
            chunk = await asyncio.wait_for(reader.read(PEEK_MAX), remaining)
        except (TimeoutError, ConnectionError, OSError):
            return "connection ended during the TLS ClientHello", None
        if not chunk:
            return "connection ended during the TLS ClientHello", None
        buf += chunk


def refusal_body(d: Decision) -> bytes:
    rule = f" (rule: {d.rule})" if d.rule else ""
    return f"corridor: blocked: {d.reason}{rule}\n".encode()


async def _send_403(writer: asyncio.StreamWriter, d: Decision) -> None:
    body = refusal_body(d)
    head = (
        "HTTP/1.1 403 Forbidden\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f'X-Corridor-Decision: deny; reason="{_header_safe(d.reason)}"\r\n'
        "Connection: close\r\n\r\n"
    ).encode()
    try:
        writer.write(head + body)
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    close_quietly(writer)


async def _refuse(
    writer: asyncio.StreamWriter, http: bytes | None, status: int, reason: str
) -> None:
    if http is None:
        reset(writer)
        return
    body = f"corridor: {reason}\n".encode()
    head = (
        f"HTTP/1.1 {status} Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        writer.write(head + body)
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    close_quietly(writer)


def _header_safe(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 and c != '"' else "?" for c in text)
