"""The world's catch-all: records every packet that is not for a listed service.

The world routes every address to itself (`local 0.0.0.0/0` and `local ::/0`), so a packet
to any address arrives. An nft prerouting chain lets packets for a listed service pass and
diverts all other TCP and UDP with tproxy to one port, where transparent sockets take them
without rewriting the destination: an accepted TCP socket's own address is the address
the client dialled, and a UDP datagram carries it as IP(V6)_ORIGDSTADDR. Raw ICMP sockets
see every ping. Each arrival is one record: protocol, source, original destination and
port, and the first bytes (as latin-1 text, so `rec["data"].encode("latin-1")` gives them).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Iterable
from typing import Any

from tests.lab.config import Service
from tests.lab.records import JsonlWriter

NFT_TABLE = "corridor_lab_world"
# How long a caught TCP connection may take to send its first bytes before it is logged
# without them: clients that speak first (HTTP, TLS, most leaks) do so at once.
HEAD_WAIT = 0.25
HEAD_BYTES = 256  # what a record keeps of a connection or datagram
_RECV_ANCILLARY = 256

# Linux socket options the socket module does not name on every Python version.
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
IP_RECVORIGDSTADDR = 20
IPV6_RECVORIGDSTADDR = 74
# ICMPv6 the kernel itself exchanges on a link (MLD 130-132, 143; router and neighbour
# discovery 133-137): not something a test sent.
_ICMPV6_LINK_TYPES = frozenset({130, 131, 132, 133, 134, 135, 136, 137, 143})


def nft_ruleset(services: Iterable[Service], catchall_port: int) -> str:
    """nft rules that divert everything but `services` to the catch-all port."""
    listed = list(services)
    v4 = sorted({f"{s.addr} . {s.proto} . {s.port}" for s in listed if ":" not in s.addr})
    v6 = sorted({f"{s.addr} . {s.proto} . {s.port}" for s in listed if ":" in s.addr})
    lines = [f"table inet {NFT_TABLE} {{"]
    for name, addr_type, elements in (("svc4", "ipv4_addr", v4), ("svc6", "ipv6_addr", v6)):
        lines.append(f"  set {name} {{ type {addr_type} . inet_proto . inet_service;")
        if elements:
            lines.append(f"    elements = {{ {', '.join(elements)} }}")
        lines.append("  }")
    port = catchall_port
    lines += [
        "  chain prerouting {",
        "    type filter hook prerouting priority mangle; policy accept;",
        '    iifname "lo" accept',
        "    ip daddr . meta l4proto . th dport @svc4 accept",
        "    ip6 daddr . meta l4proto . th dport @svc6 accept",
        f"    meta l4proto {{ tcp, udp }} meta nfproto ipv4 tproxy ip to :{port} accept",
        f"    meta l4proto {{ tcp, udp }} meta nfproto ipv6 tproxy ip6 to :{port} accept",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def parse_sockaddr(raw: bytes) -> tuple[str, int]:
    """A struct sockaddr_in or sockaddr_in6 as (address, port)."""
    (family,) = struct.unpack_from("=H", raw)
    (port,) = struct.unpack_from("!H", raw, 2)
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[4:8])), port
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(raw[8:24])), port
    raise ValueError(f"unexpected address family {family}")


def _text(data: bytes) -> str:
    return data[:HEAD_BYTES].decode("latin-1")


class CatchAll:
    """The catch-all listeners, all writing to one log."""

    def __init__(self, log: JsonlWriter, port: int) -> None:
        self._log = log
        self._port = port
        self._pending: set[asyncio.Task[None]] = set()
        self._sockets: list[socket.socket] = []

    async def start(self) -> list[asyncio.Server]:
        """Bind every listener; returns the TCP servers (UDP and ICMP use loop readers)."""
        loop = asyncio.get_running_loop()
        servers = []
        for family, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            tcp = _transparent(family, socket.SOCK_STREAM)
            tcp.bind((any_addr, self._port))
            tcp.listen(128)
            servers.append(await asyncio.start_server(self._on_tcp, sock=tcp))
            udp = _transparent(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET:
                udp.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
            else:
                udp.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
            udp.bind((any_addr, self._port))
            self._watch(loop, udp, self._on_udp)
        icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self._watch(loop, icmp, self._on_icmp)
        icmp6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        icmp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        self._watch(loop, icmp6, self._on_icmp6)
        return servers

    async def settle(self) -> None:
        """Wait until every caught TCP connection so far has been logged."""
        while self._pending:
            await asyncio.wait(set(self._pending))

    def _watch(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, fn: Any) -> None:
        sock.setblocking(False)
        self._sockets.append(sock)
        loop.add_reader(sock.fileno(), self._drain, sock, fn)

    @staticmethod
    def _drain(sock: socket.socket, fn: Any) -> None:
        while True:
            try:
                fn(*sock.recvmsg(65535, _RECV_ANCILLARY))
            except (BlockingIOError, InterruptedError):
                return

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pending.add(task)
        try:
            try:
                head = await asyncio.wait_for(reader.read(HEAD_BYTES), HEAD_WAIT)
            except (TimeoutError, ConnectionError):
                head = b""
            peer = writer.get_extra_info("peername")
            dst = writer.get_extra_info("sockname")  # tproxy keeps the dialled address
            self._log.write(
                {
                    "proto": "tcp",
                    "src": peer[0],
                    "sport": peer[1],
                    "dst": dst[0],
                    "dport": dst[1],
                    "data": _text(head),
                }
            )
            writer.close()
        finally:
            self._pending.discard(task)

    def _on_udp(self, data: bytes, ancdata: list[Any], _flags: int, peer: Any) -> None:
        dst: tuple[str | None, int | None] = (None, None)
        for level, kind, raw in ancdata:
            if (level, kind) in (
                (socket.SOL_IP, IP_RECVORIGDSTADDR),
                (socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR),
            ):
                dst = parse_sockaddr(raw)
        self._log.write(
            {
                "proto": "udp",
                "src": peer[0],
                "sport": peer[1],
                "dst": dst[0],
                "dport": dst[1],
                "data": _text(data),
            }
        )

    def _on_icmp(self, packet: bytes, _anc: list[Any], _flags: int, _peer: Any) -> None:
        header = (packet[0] & 0x0F) * 4  # a raw IPv4 socket hands over the IP header too
        icmp = packet[header:]
        self._log.write(
            {
                "proto": "icmp",
                "src": str(ipaddress.IPv4Address(packet[12:16])),
                "sport": None,
                "dst": str(ipaddress.IPv4Address(packet[16:20])),
                "dport": None,
                "icmp_type": icmp[0],
                "icmp_code": icmp[1],
                "data": _text(icmp[8:]),
            }
        )

    def _on_icmp6(self, icmp: bytes, ancdata: list[Any], _flags: int, peer: Any) -> None:
        if icmp[0] in _ICMPV6_LINK_TYPES:
            return
        dst = None
        for level, kind, raw in ancdata:
            if (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO):
                dst = str(ipaddress.IPv6Address(raw[:16]))
        self._log.write(
            {
                "proto": "icmpv6",
                "src": peer[0],
                "sport": None,
                "dst": dst,
                "dport": None,
                "icmp_type": icmp[0],
                "icmp_code": icmp[1],
                "data": _text(icmp[8:]),
            }
        )


def _transparent(family: int, kind: int) -> socket.socket:
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    return sock
