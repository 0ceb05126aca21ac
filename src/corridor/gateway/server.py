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
import math
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

from corridor.audit.events import Event, Kind
from corridor.gateway import dns_msg
from corridor.gateway.addresses import UnsafeRange, check_dial, unmapped
from corridor.gateway.credentials import Broker
from corridor.gateway.droplog import Drop, drop_event, watch_drops
from corridor.gateway.http_proxy import MAX_HEAD_BYTES, HttpExchange
from corridor.gateway.http_target import TargetError, connect_head, request_target
from corridor.gateway.limits import READ_LIMIT, GatewayLimits, LimitReached, SessionBudget
from corridor.gateway.names import NameMap
from corridor.gateway.origdst import original_destination
from corridor.gateway.relay import (
    Counters,
    RelayTimeouts,
    Tunnel,
    close_quietly,
    plain,
    relay,
    reset,
)
from corridor.gateway.sniff import Kind as Sniffed
from corridor.gateway.sniff import classify
from corridor.gateway.tls_hello import ClientHelloReader, TLSParseError
from corridor.gateway.tls_stream import TLSStream
from corridor.gateway.upstream import (
    CACHE_TTL_S,
    IPAddress,
    Resolver,
    TtlCache,
    UpstreamError,
    dial,
    dial_protocol,
    is_own_address,
)
from corridor.gateway.upstream_tls import upstream_context
from corridor.policy.compiled import CompiledPolicy, compile_policy
from corridor.policy.decide import Decision, Target, decide, decide_dns
from corridor.policy.hosts import InvalidHost, normalize_host

if TYPE_CHECKING:
    # tlsca loads cryptography (about 10 MB): imported only when a session CA is given.
    from corridor.gateway.tlsca import SessionCA
    from corridor.policy.model import Policy

PEEK_TIMEOUT_S = 0.3  # server-speaks-first protocols (SSH banners, SMTP) send nothing first
HELLO_TIMEOUT_S = 10.0  # a client that started a TLS handshake finishes it within this
PEEK_MAX = 64 * 1024  # a ClientHello larger than this is not one we accept
DNS_TTL_S = 30  # short: the synthetic map lives only as long as the session
# Decisions remembered per destination without a path (tunnels, transparent TCP: the
# policy does not change during a session). A session's hot destinations are a few dozen;
# a wildcard rule lets the agent mint endless names, so beyond this the oldest go
# (a few hundred bytes each: the bound keeps the cache around a megabyte).
MAX_CACHED_DECISIONS = 4096
# Address checks (with the own-address probe) remembered per (address, port), as long as
# the resolver remembers names: the machine's addresses change rarely, never per request.
MAX_CACHED_CHECKS = 4096
UNKNOWN_SYNTHETIC = "synthetic address this session's DNS never handed out"
NO_ADDRESS = "name resolved to no address"


@dataclass(frozen=True, slots=True)
class Vetted:
    """Addresses that passed the address check, in the resolver's order."""

    addresses: tuple[IPAddress, ...]
    audit_note: Decision | None = None  # a would-deny an address drew in audit mode


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
    dns_dropped: int = 0  # UDP queries dropped because too many were being answered


@dataclass
class Gateway:
    """The session's gateway: decide, check, dial and relay for every sandbox connection.

    `unsafe` are the --unsafe-allow-private ranges (addresses allowed names may resolve
    to); `limits` default to GatewayLimits.from_policy(policy.limits). `ca` is the session
    CA that TLS inspection presents leaves from (None: nothing is inspected, every TLS
    connection is relayed end to end); `upstream_cas` are the --upstream-ca files that
    inspected connections verify upstream certificates with, besides the system store.
    `broker` swaps credentials in on inspected requests to their hosts and flags them
    anywhere else a request is readable. `policy` may be the model (`Policy`) or its
    compiled form; it is compiled here, so `self.policy` is always a CompiledPolicy.
    """

    policy: CompiledPolicy | Policy
    session: str
    emit: Callable[[Event], None]
    resolver: Resolver = field(default_factory=Resolver)
    names: NameMap = field(default_factory=NameMap)
    stats: Stats = field(default_factory=Stats)
    unsafe: tuple[UnsafeRange, ...] = ()
    limits: GatewayLimits | None = None
    ca: SessionCA | None = None
    upstream_cas: tuple[Path, ...] = ()
    broker: Broker | None = None  # the session's credentials (gateway/credentials.py)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _servers: list = field(default_factory=list)
    _tasks: set = field(default_factory=set)
    _dns_inflight: int = 0
    _dns_overload_told: bool = False

    def __post_init__(self) -> None:
        self.policy = compile_policy(self.policy)
        if self.limits is None:
            self.limits = GatewayLimits.from_policy(self.policy.limits)
        self.budget = SessionBudget(self.limits)
        self.timeouts = RelayTimeouts(self.limits.idle_timeout_s, self.limits.half_closed_timeout_s)
        # The upstream client context (system roots: about 18 ms to load) is built on the
        # first inspected dial, so a session that inspects nothing never pays for it; with
        # --upstream-ca files it is built now, so that an unusable file fails at the start.
        self._upstream_tls: ssl.SSLContext | None = None
        if self.upstream_cas:
            self._upstream_tls = upstream_context(self.upstream_cas)
        self._decisions: TtlCache[Target, Decision] = TtlCache(math.inf, MAX_CACHED_DECISIONS)
        self._checks: TtlCache[tuple[IPAddress, int], Decision] = TtlCache(
            CACHE_TTL_S, MAX_CACHED_CHECKS
        )

    @property
    def upstream_tls(self) -> ssl.SSLContext:
        """The TLS client context inspected connections verify upstream servers with."""
        if self._upstream_tls is None:
            self._upstream_tls = upstream_context(self.upstream_cas)
        return self._upstream_tls

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
            await asyncio.start_server(
                self._on_dns_tcp, sock=listeners["dns_tcp"], limit=READ_LIMIT
            )
        )
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DnsUdp(self), sock=listeners["dns_udp"]
        )
        self._servers.append(transport)
        drop_log = listeners.get("drop_log")  # the sandbox's NFLOG socket (sandbox/nft.py)
        if drop_log is not None:
            self._track(watch_drops(drop_log, self._on_drop))

    def _on_drop(self, drop: Drop) -> None:
        """A packet the sandbox's firewall dropped (UDP, anything but TCP and DNS)."""
        self.stats.blocked += 1
        self.emit(drop_event(self.session, drop))

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
        """The policy's decision for `target`; remembered for destinations without a path
        (the policy is fixed per session; HTTP paths are too many to be worth keeping)."""
        if target.path is not None:
            return decide(self.policy, target)
        hit = self._decisions.get(target, 0.0)  # never expires: `now` does not matter
        if hit is None:
            hit = decide(self.policy, target)
            self._decisions.put(target, hit, 0.0)
        return hit

    def check_address(self, address: IPAddress, port: int) -> Decision:
        """May `address`:`port` be dialled (addresses.check_dial), remembered CACHE_TTL_S."""
        now = time.monotonic()
        hit = self._checks.get((address, port), now)
        if hit is None:
            own = is_own_address(address)
            hit = check_dial(address, port, self.policy, self.unsafe, own=own)
            self._checks.put((address, port), hit, now)
        return hit

    def _track(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _adopt(self) -> None:
        """Let stop() cancel the running connection handler."""
        task = asyncio.current_task()
        if task:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _admit(self, conn_id: int, protocol: str, host: str | None, port: int) -> bool:
        """Count a new sandbox connection; False (and an event) when the session is full."""
        try:
            self.budget.open()
        except LimitReached as e:
            self.record_decision(
                conn_id, protocol, host, port, None, Decision(False, e.reason, e.rule)
            )
            return False
        return True

    async def upstream_addresses(self, host: str, port: int) -> Vetted | Decision:
        """Resolve `host` once and keep the addresses the address check lets through.

        Returns the addresses to dial (exactly these, by number), or the refusal of the
        first address when none is left. Raises UpstreamError when the name does not
        resolve.
        """
        resolved = await self.resolver.resolve(host)
        kept: list[IPAddress] = []
        refusal: Decision | None = None
        note: Decision | None = None
        for raw in resolved.addresses:
            address = unmapped(raw)
            verdict = self.check_address(address, port)
            if verdict.allowed:
                kept.append(address)
                note = note or (verdict if verdict.would_deny else None)
            elif refusal is None:
                refusal = verdict
        if kept:
            return Vetted(tuple(kept), note)
        return refusal or Decision(False, NO_ADDRESS, None)

    # ---- transparent ----------------------------------------------------------------

    async def _on_transparent(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._adopt()
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
        if not self._admit(conn_id, "tcp", mapped_name, port):
            reset(writer)
            return
        try:
            await self._transparent(conn_id, reader, writer, address, port, mapped_name)
        finally:
            self.budget.close()
            close_quietly(writer)

    async def _transparent(
        self,
        conn_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: IPAddress,
        port: int,
        mapped_name: str | None,
    ) -> None:
        if mapped_name is None and self.names.is_synthetic(address):
            # Made up by the agent, not learnt from our DNS: it stands for nothing.
            d = Decision(False, UNKNOWN_SYNTHETIC, None)
            self.record_decision(conn_id, "tcp", None, port, str(address), d)
            reset(writer)
            return
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
        if kind is Sniffed.TLS and host is not None and self._inspects(target):
            await self._inspect(conn_id, reader, writer, first or b"", host, port, address)
            return
        await self._forward(
            conn_id, protocol, target, reader, writer, first or b"", shown_address=str(address)
        )

    def _inspects(self, target: Target) -> bool:
        """Whether this allowed TLS destination is inspected (a rule asks, and a CA exists)."""
        if self.ca is None:
            return False
        d = self.decide(target)
        return d.allowed and d.inspect

    async def _inspect(
        self,
        conn_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bytes,
        host: str,
        port: int,
        address: IPAddress | None,
    ) -> None:
        """Terminate the client's TLS with a leaf for `host`, then check every request.

        `first` is the ClientHello already read. Each request is decided with its method
        and path and goes upstream over TLS verified for `host` (http_proxy.py).
        """
        assert self.ca is not None
        shown = str(address) if address is not None else None
        try:
            context = self.ca.server_context(host)
        except InvalidHost as e:
            d = Decision(False, f"invalid host name: {e}", None)
            self.record_decision(conn_id, "https", host, port, shown, d)
            reset(writer)
            return
        from corridor.gateway.tlsca import ServerTLS  # loaded already: self.ca needs it

        stream = TLSStream(ServerTLS(context, first), reader, writer)
        try:
            await stream.handshake(HELLO_TIMEOUT_S)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as e:
            why = getattr(e, "reason", None) or e.__class__.__name__
            d = Decision(False, f"TLS handshake with the client failed: {why}", None)
            self.record_decision(conn_id, "https", host, port, shown, d)
            reset(writer)
            return
        await HttpExchange(
            self,
            stream,  # type: ignore[arg-type]  # the StreamReader/Writer subset it uses
            stream,  # type: ignore[arg-type]
            b"",
            conn_id,
            proxy=False,
            dest=(address, port, None),
            tls_host=host,
        ).run()

    async def _forward(
        self,
        conn_id: int,
        protocol: str,
        target: Target,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bytes,
        shown_address: str | None = None,
    ) -> None:
        """Decide, resolve, check, record, dial, then relay (the path every tunnel takes)."""
        cleared = await self._clear(conn_id, protocol, target, writer, shown_address, http=False)
        if cleared is not None:
            d, addresses = cleared
            await self._dial_and_relay(
                conn_id, protocol, target, d, addresses, reader, writer, first
            )

    async def _clear(
        self,
        conn_id: int,
        protocol: str,
        target: Target,
        writer: asyncio.StreamWriter,
        shown_address: str | None,
        *,
        http: bool,
    ) -> tuple[Decision, tuple[IPAddress, ...]] | None:
        """Policy, then the addresses, then the byte budget; None once refused and told.

        A refusal is recorded and answered: a 403/502 for an HTTP client (`http`), a
        reset otherwise.
        """
        d = self.decide(target)
        if not d.allowed:
            self.record_decision(conn_id, protocol, target.host, target.port, shown_address, d)
            await _tell(writer, http, d, 403)
            return None
        dial_host = target.host or str(target.address)
        try:
            found = await self.upstream_addresses(dial_host, target.port)
            self.budget.check_bytes_left()
        except UpstreamError as e:
            failed = Decision(False, e.reason, d.rule)
            self.record_decision(conn_id, protocol, target.host, target.port, shown_address, failed)
            await _tell(writer, http, failed, 502)
            return None
        except LimitReached as e:
            limited = Decision(False, e.reason, e.rule)
            self.record_decision(conn_id, protocol, target.host, target.port, None, limited)
            await _tell(writer, http, limited, 403)
            return None
        if isinstance(found, Decision):
            self.record_decision(conn_id, protocol, target.host, target.port, shown_address, found)
            await _tell(writer, http, found, 403)
            return None
        # In audit mode a deny rule on an address lets it through: record that would-deny.
        return found.audit_note or d, found.addresses

    async def _dial_and_relay(
        self,
        conn_id: int,
        protocol: str,
        target: Target,
        d: Decision,
        addresses: tuple[IPAddress, ...],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bytes,
    ) -> None:
        # The event is queued before the first packet goes upstream.
        self.record_decision(conn_id, protocol, target.host, target.port, str(addresses[0]), d)
        started = time.monotonic()
        counters = Counters(budget=self.budget)
        # asyncio's own streams on a plain socket (always, from our listeners): upstream
        # is dialled straight into the relay's protocol, no streams on that side.
        tunnel = Tunnel(counters, self.timeouts) if plain(reader, writer) else None
        try:
            if tunnel is not None:
                up_w, addr = await dial_protocol(addresses, target.port, tunnel.upstream_protocol)
            else:
                up_r, up_w, addr = await dial(addresses, target.port)
        except UpstreamError as e:
            self.record_end(
                conn_id, started, counters, target.host, target.port, None, protocol, e.reason
            )
            reset(writer)
            return
        ended: str | None = None
        try:
            if tunnel is not None:
                ended = await tunnel.run(reader, writer, first)
            else:
                if first:
                    counters.add_up(len(first))
                    up_w.write(first)
                ended = await relay(reader, writer, up_r, up_w, counters, self.timeouts)
        except LimitReached as e:
            ended = e.reason
            self.record_limit(conn_id, protocol, target.host, target.port, str(addr), e)
            reset(writer)
            reset(up_w)
        finally:
            self.record_end(
                conn_id, started, counters, target.host, target.port, str(addr), protocol, ended
            )

    def record_limit(
        self,
        conn_id: int,
        protocol: str,
        host: str | None,
        port: int,
        address: str | None,
        e: LimitReached,
    ) -> None:
        """A connection already under way was cut by a session limit: a refusal event."""
        self.stats.blocked += 1
        self.record(
            Kind.CONNECTION,
            conn_id=conn_id,
            protocol=protocol,
            host=host,
            port=port,
            address=address,
            decision="deny",
            reason=e.reason,
            rule=e.rule,
        )

    # ---- explicit proxy -------------------------------------------------------------

    async def _on_proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._adopt()
        conn_id = next(self._ids)
        if not self._admit(conn_id, "http", None, 0):
            await _send_503(writer, "session connection limit reached")
            return
        try:
            await self._proxy(conn_id, reader, writer)
        finally:
            self.budget.close()

    async def _proxy(
        self, conn_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A plain CONNECT goes straight to the tunnel; everything else, and every head
        the strict CONNECT recogniser does not take, goes through h11 (HttpExchange)."""
        assert self.limits is not None
        try:
            async with asyncio.timeout(self.limits.head_timeout_s):
                first = await reader.read(READ_LIMIT)
        except TimeoutError:
            close_quietly(writer)  # as HttpExchange does after a head timeout: no event
            return
        except (ConnectionError, OSError):
            close_quietly(writer)
            return
        head = connect_head(first, MAX_HEAD_BYTES)
        if head is not None:
            try:
                tgt = request_target(b"CONNECT", head.target, head.headers, proxy=True)
            except TargetError:
                head = None  # refused by HttpExchange, with the same words
        if head is None:
            await HttpExchange(self, reader, writer, first, conn_id, proxy=True, dest=None).run()
            return
        try:
            await self.connect_tunnel(conn_id, tgt.host, tgt.port, reader, writer, head.rest)
        except (ConnectionError, OSError):
            pass  # the client went away; HttpExchange ends the same way
        finally:
            close_quietly(writer)

    async def connect_tunnel(
        self,
        conn_id: int,
        host: str,
        port: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        leftover: bytes,
    ) -> None:
        """After a CONNECT: decide and check the addresses (a 403 tells the client why),
        answer 200, check that a ClientHello that follows names the same host, relay."""
        target = Target(host=host, port=port)
        cleared = await self._clear(conn_id, "connect", target, writer, None, http=True)
        if cleared is None:
            return
        d, addresses = cleared
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        transport = getattr(writer, "transport", None)
        if transport is None or transport.get_write_buffer_size():
            await writer.drain()  # only when the kernel did not take the 39 bytes at once
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
            if self._inspects(Target(host=hello.sni or host, port=port)):
                await self._inspect(conn_id, reader, writer, first or b"", host, port, None)
                return
        await self._dial_and_relay(
            conn_id, protocol, target, d, addresses, reader, writer, first or b""
        )

    # ---- DNS --------------------------------------------------------------------------

    def dns_slot(self) -> bool:
        """Take one of the in-flight UDP query slots; False (counted) when none is free."""
        assert self.limits is not None
        if self._dns_inflight >= self.limits.max_dns_inflight:
            self.stats.dns_dropped += 1
            if not self._dns_overload_told:
                self._dns_overload_told = True  # one event per burst, not one per datagram
                self.record(
                    Kind.DNS,
                    protocol="dns-udp",
                    decision="deny",
                    reason=f"more than {self.limits.max_dns_inflight} queries in flight; "
                    "queries dropped",
                    rule="limits.max_dns_inflight",
                )
            return False
        self._dns_inflight += 1
        return True

    def dns_done(self) -> None:
        self._dns_inflight -= 1
        if self._dns_inflight == 0:
            self._dns_overload_told = False

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
        self._adopt()
        conn_id = next(self._ids)
        if not self._admit(conn_id, "dns-tcp", None, 53):
            reset(writer)
            return
        try:
            await self._dns_tcp(reader, writer)
        finally:
            self.budget.close()

    async def _dns_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.limits is not None
        buf = dns_msg.TcpDnsReader()
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(4096), self.limits.dns_tcp_idle_s)
                except TimeoutError:
                    break
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
        if not self.gateway.dns_slot():
            return  # dropped, as an overloaded resolver does: the client retries
        self.gateway._track(self._answer(data, addr))

    async def _answer(self, data: bytes, addr) -> None:
        try:
            reply = await self.gateway.answer_dns(data, "dns-udp")
        finally:
            self.gateway.dns_done()
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
            # asyncio.timeout, not wait_for: no task per read (Python 3.11).
            async with asyncio.timeout(remaining):
                more = await reader.read(PEEK_MAX)
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
            async with asyncio.timeout(remaining):
                chunk = await reader.read(PEEK_MAX)
        except (TimeoutError, ConnectionError, OSError):
            return "connection ended during the TLS ClientHello", None
        if not chunk:
            return "connection ended during the TLS ClientHello", None
        buf += chunk


def refusal_body(d: Decision) -> bytes:
    rule = f" (rule: {d.rule})" if d.rule else ""
    return f"corridor: blocked: {d.reason}{rule}\n".encode()


async def _tell(writer: asyncio.StreamWriter, http: bool, d: Decision, status: int) -> None:
    """Answer a refusal: 403 (policy, addresses, limits) or 502 (upstream) for HTTP
    clients, a TCP reset for everything else."""
    if not http:
        reset(writer)
    elif status == 403:
        await _send_403(writer, d)
    else:
        await _refuse(writer, status, d.reason)


async def _send_403(writer: asyncio.StreamWriter, d: Decision) -> None:
    await _send_plain(writer, 403, refusal_body(d), decision_reason=d.reason)


async def _send_503(writer: asyncio.StreamWriter, reason: str) -> None:
    await _send_plain(writer, 503, f"corridor: {reason}\n".encode(), decision_reason=reason)


async def _refuse(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    await _send_plain(writer, status, f"corridor: {reason}\n".encode())


async def _send_plain(
    writer: asyncio.StreamWriter, status: int, body: bytes, *, decision_reason: str | None = None
) -> None:
    """One plain-text answer, then close: how the gateway speaks to HTTP clients it refuses."""
    decision = (
        f'X-Corridor-Decision: deny; reason="{_header_safe(decision_reason)}"\r\n'
        if decision_reason is not None
        else ""
    )
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n{decision}Connection: close\r\n\r\n"
    ).encode()
    try:
        writer.write(head + body)
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    close_quietly(writer)


def _header_safe(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 and c != '"' else "?" for c in text)
