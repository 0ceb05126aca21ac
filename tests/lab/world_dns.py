"""The world's DNS server: authoritative for the table's names, NXDOMAIN for the rest.

`answer` is sans-IO (query bytes in, reply bytes and log fields out); the asyncio classes
below only move bytes. Every query that arrives is logged, even one that cannot be parsed,
so a test can assert that a name never reached the world.
"""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from tests.lab.config import HostEntry, normalize_name
from tests.lab.records import JsonlWriter

TTL = 60  # short, so nothing in a test run trusts an answer for long
_RECORD_TYPES = {dns.rdatatype.A: "a", dns.rdatatype.AAAA: "aaaa"}
# A queries answered so far per rebinding name (one world process, shared by all sockets).
_REBIND_TURNS: Counter[str] = Counter()


@dataclass(frozen=True)
class DnsAnswer:
    """What the server replies (None: nothing, the query was unreadable) and what it logs."""

    reply: bytes | None
    questions: tuple[tuple[str, str], ...]  # (name, type) as asked, name normalised
    rcode: str


def answer(wire: bytes, hosts: Mapping[str, HostEntry]) -> DnsAnswer:
    """Answer one DNS query from the table."""
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return DnsAnswer(None, (), "MALFORMED")
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    questions = []
    rcode = dns.rcode.NOERROR
    for q in query.question:
        name = normalize_name(q.name.to_text())
        questions.append((name, dns.rdatatype.to_text(q.rdtype)))
        host = hosts.get(name)
        if host is None:
            rcode = dns.rcode.NXDOMAIN
            continue
        field = _RECORD_TYPES.get(q.rdtype)
        addresses = getattr(host, field) if field and q.rdclass == dns.rdataclass.IN else ()
        if host.rebind_a and field == "a":
            _REBIND_TURNS[name] += 1
            if _REBIND_TURNS[name] % 2 == 0:  # first answer: `a`, then the rebound one
                addresses = host.rebind_a
        if addresses:  # an existing name without this type gets an empty NOERROR (NODATA)
            response.answer.append(
                dns.rrset.from_text_list(q.name, TTL, q.rdclass, q.rdtype, list(addresses))
            )
    response.set_rcode(rcode)
    return DnsAnswer(response.to_wire(), tuple(questions), dns.rcode.to_text(rcode))


def log_answer(log: JsonlWriter, result: DnsAnswer, proto: str, peer: Any, local: Any) -> None:
    """One record per question (one with an empty name for an unreadable query)."""
    base = {
        "proto": proto,
        "src": peer[0],
        "sport": peer[1],
        "dst": local[0],
        "rcode": result.rcode,
    }
    for name, qtype in result.questions or (("", ""),):
        log.write({"name": name, "type": qtype, **base})


class UdpDns(asyncio.DatagramProtocol):
    """DNS over UDP on one bound socket."""

    def __init__(self, hosts: Mapping[str, HostEntry], log: JsonlWriter) -> None:
        self._hosts = hosts
        self._log = log
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self._transport is not None
        result = answer(data, self._hosts)
        log_answer(self._log, result, "udp", addr, self._transport.get_extra_info("sockname"))
        if result.reply is not None:
            self._transport.sendto(result.reply, addr)


StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def tcp_dns_handler(hosts: Mapping[str, HostEntry], log: JsonlWriter) -> StreamHandler:
    """A stream handler serving length-prefixed DNS messages until the client closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                result = answer(await reader.readexactly(length), hosts)
                log_answer(log, result, "tcp", peer, local)
                if result.reply is None:
                    break
                writer.write(struct.pack("!H", len(result.reply)) + result.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle
