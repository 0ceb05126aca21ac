"""DNS messages for the resolver the gateway runs for the sandbox: parse queries, build answers.

The sandbox's only resolver is the gateway. It answers allowed names itself (with the
synthetic addresses of names.py) and everything else NXDOMAIN, so no query ever leaves the
machine on the sandbox's behalf (no DNS tunnelling). This module is the wire format only:
bytes in, Query or bytes out; deciding what to answer is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from corridor.gateway.names import hostname_problem

HEADER_LEN = 12  # RFC 1035 §4.1.1: a message shorter than this has no id to answer to
PLAIN_UDP_LIMIT = 512  # RFC 1035 §4.2.1: a UDP answer without EDNS must fit in 512 bytes
# What we advertise and the most we put in one UDP answer even if the client offers more:
# the DNS Flag Day 2020 size, which no path fragments.
EDNS_PAYLOAD = 1232
TCP_LIMIT = 65535  # RFC 1035 §4.2.2: the 2-byte length prefix
# A query holds one question (at most 259 bytes) and an OPT record; even padded to 128-byte
# blocks (RFC 8467) real queries stay far below this. Larger input is not a query we serve.
MAX_QUERY_BYTES = 4096
MAX_TTL = 2**31 - 1  # RFC 2181 §8
_QR_BIT = 0x80  # in the third header byte
_OPCODE_MASK = 0x7800  # in the 16-bit flags word


class DNSParseError(Exception):
    """Not a query we serve. `rcode` is the answer to send (see error_reply), or None when
    nothing must be sent back (no readable id, or the message is itself a response)."""

    def __init__(self, reason: str, rcode: dns.rcode.Rcode | None = dns.rcode.FORMERR):
        super().__init__(reason)
        self.reason = reason
        self.rcode = rcode


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    name: str  # lowercase, no trailing dot; always a valid host name (names.hostname_problem)
    qtype: str  # "A", "AAAA", "HTTPS", ... ("TYPE65280" for types without a name)
    raw: dns.message.Message = field(compare=False, repr=False)


def parse_query(wire: bytes) -> Query:
    """Parse one DNS query (class IN, one question, opcode QUERY) or raise DNSParseError.

    The error's rcode says how to answer: FORMERR for malformed messages, NOTIMP for other
    opcodes, BADVERS for EDNS versions above 0, REFUSED for other classes and names that are
    not host names, None (send nothing) for responses and messages without a header.
    """
    if len(wire) < HEADER_LEN:
        raise DNSParseError("shorter than a DNS header", rcode=None)
    if wire[2] & _QR_BIT:
        # Answering a response could start a loop between two resolvers.
        raise DNSParseError("message is a response, not a query", rcode=None)
    if len(wire) > MAX_QUERY_BYTES:
        raise DNSParseError(f"query larger than {MAX_QUERY_BYTES} bytes")
    try:
        message = dns.message.from_wire(wire)
    except dns.message.UnknownTSIGKey:
        # We hold no keys: a signed query cannot be verified, so it is not served.
        raise DNSParseError("TSIG-signed query", dns.rcode.REFUSED) from None
    except dns.exception.DNSException as e:
        raise DNSParseError(f"malformed message ({type(e).__name__})") from None
    opcode = message.opcode()
    if opcode != dns.opcode.QUERY:
        raise DNSParseError(
            f"opcode {dns.opcode.to_text(opcode)} is not supported", dns.rcode.NOTIMP
        )
    if not message.question:
        raise DNSParseError("no question")
    if len(message.question) > 1:
        raise DNSParseError("more than one question")
    if message.edns > 0:
        raise DNSParseError(f"EDNS version {message.edns} is not supported", dns.rcode.BADVERS)
    question = message.question[0]
    if question.rdclass != dns.rdataclass.IN:
        cls = dns.rdataclass.to_text(question.rdclass)
        raise DNSParseError(f"class {cls} is not supported", dns.rcode.REFUSED)
    name = _host_name(question.name)
    return Query(message.id, name, dns.rdatatype.to_text(question.rdtype), message)


def nxdomain(q: Query, *, tcp: bool = False) -> bytes:
    """An authoritative-looking NXDOMAIN: the name does not exist for the sandbox."""
    return _to_wire(_response(q, dns.rcode.NXDOMAIN), q, tcp=tcp)


def refused(q: Query, *, tcp: bool = False) -> bytes:
    """REFUSED: we will not answer this query."""
    return _to_wire(_response(q, dns.rcode.REFUSED), q, tcp=tcp)


def answer(
    q: Query, addresses: Sequence[IPv4Address | IPv6Address], ttl: int, *, tcp: bool = False
) -> bytes:
    """NOERROR with the addresses that match the query type (IPv4 for A, IPv6 for AAAA).

    Other types, or no address of the asked family, give NOERROR with no answer (NODATA):
    the name exists, it has no such record. Over UDP an answer that does not fit the
    client's size (512 without EDNS) is sent empty with TC set, so the client retries on TCP.
    """
    if not 0 <= ttl <= MAX_TTL:
        raise ValueError(f"ttl {ttl} out of range")
    if not all(isinstance(a, IPv4Address | IPv6Address) for a in addresses):
        # A str would match neither family and silently become NODATA.
        raise TypeError("addresses must be IPv4Address or IPv6Address objects")
    response = _response(q, dns.rcode.NOERROR)
    question = q.raw.question[0]
    family = {dns.rdatatype.A: IPv4Address, dns.rdatatype.AAAA: IPv6Address}.get(question.rdtype)
    texts = [str(a) for a in addresses if family is not None and isinstance(a, family)]
    if texts:
        rrset = dns.rrset.from_text_list(
            question.name, ttl, dns.rdataclass.IN, question.rdtype, texts
        )
        response.answer.append(rrset)
    return _to_wire(response, q, tcp=tcp)


def error_reply(wire: bytes, rcode: dns.rcode.Rcode) -> bytes | None:
    """A best-effort error answer (no records) to whatever `wire` was, or None.

    None when no id can be read or the message is a response. The question is echoed when it
    can be parsed, because stub resolvers drop REFUSED answers whose question differs.
    """
    if len(wire) < HEADER_LEN or wire[2] & _QR_BIT:
        return None
    response = _echo_response(wire)
    if rcode > 15 and response.edns < 0:
        response.use_edns(0, 0, EDNS_PAYLOAD)  # extended rcodes live in the OPT record
    response.set_rcode(rcode)
    response.flags |= dns.flags.RA
    try:
        return response.to_wire(max_size=PLAIN_UDP_LIMIT, prefer_truncation=True)
    except dns.exception.DNSException:
        return None


def formerr_for(wire: bytes) -> bytes | None:
    """FORMERR for a message we could not parse, when an id can be read; else None."""
    return error_reply(wire, dns.rcode.FORMERR)


def frame(msg: bytes) -> bytes:
    """`msg` with the 2-byte length prefix of DNS over TCP (RFC 1035 §4.2.2)."""
    if len(msg) > TCP_LIMIT:
        raise ValueError(f"DNS message of {len(msg)} bytes does not fit a TCP frame")
    return len(msg).to_bytes(2, "big") + msg


class TcpDnsReader:
    """Splits a DNS-over-TCP byte stream into messages.

    A frame longer than `max_message` raises DNSParseError (rcode None: close the
    connection), and so does every later feed(). At most one partial frame is kept.
    """

    def __init__(self, max_message: int = MAX_QUERY_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_message
        self._error: DNSParseError | None = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (non-zero at EOF: the peer cut a message)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add `data`; return the messages it completed, in order."""
        if self._error is not None:
            raise self._error
        self._buf += data
        messages: list[bytes] = []
        pos = 0
        while len(self._buf) - pos >= 2:
            size = int.from_bytes(self._buf[pos : pos + 2], "big")
            if size > self._max:
                self._error = DNSParseError(
                    f"TCP DNS message of {size} bytes exceeds {self._max}", rcode=None
                )
                self._buf.clear()
                raise self._error
            if len(self._buf) - pos - 2 < size:
                break
            messages.append(bytes(self._buf[pos + 2 : pos + 2 + size]))
            pos += 2 + size
        del self._buf[:pos]  # once per feed: many small frames stay linear
        return messages


def _host_name(name: dns.name.Name) -> str:
    # The text form of a name escapes odd bytes ("a\.b"), which a policy matcher splitting on
    # dots would misread; so only names whose every label is a host-name label are served.
    labels = [label for label in name.labels if label]
    if any(b"." in label for label in labels):
        raise DNSParseError("'.' inside a label of the query name", dns.rcode.REFUSED)
    text = ".".join(label.decode("latin-1") for label in labels)
    problem = hostname_problem(text)
    if problem is not None:
        raise DNSParseError(f"query name is not a host name: {problem}", dns.rcode.REFUSED)
    return text.lower()


def _response(q: Query, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(q.raw, recursion_available=True, our_payload=EDNS_PAYLOAD)
    response.set_rcode(rcode)
    # Authoritative: the gateway is the only source of truth the sandbox has.
    response.flags |= dns.flags.AA
    return response


def _to_wire(response: dns.message.Message, q: Query, *, tcp: bool) -> bytes:
    if tcp:
        limit = TCP_LIMIT
    elif q.raw.edns >= 0:
        limit = max(PLAIN_UDP_LIMIT, min(q.raw.payload, EDNS_PAYLOAD))
    else:
        limit = PLAIN_UDP_LIMIT
    # prefer_truncation drops whole RRsets that do not fit and sets TC.
    return response.to_wire(max_size=limit, prefer_truncation=True)


def _echo_response(wire: bytes) -> dns.message.Message:
    # Echo as much of the query as parses: all of it, its question, or just its header.
    for question_only in (False, True):
        try:
            query = dns.message.from_wire(wire, question_only=question_only)
            return dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
        except dns.exception.DNSException:
            continue
    ident = int.from_bytes(wire[:2], "big")
    flags = int.from_bytes(wire[2:4], "big")
    response = dns.message.Message(id=ident)
    response.flags = dns.flags.QR | (flags & (dns.flags.RD | _OPCODE_MASK))
    return response
