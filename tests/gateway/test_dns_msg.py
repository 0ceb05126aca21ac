"""DNS wire format for the sandbox's resolver: queries in, answers out."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import pytest

from corridor.gateway.dns_msg import (
    EDNS_PAYLOAD,
    MAX_QUERY_BYTES,
    PLAIN_UDP_LIMIT,
    DNSParseError,
    Query,
    TcpDnsReader,
    answer,
    error_reply,
    formerr_for,
    frame,
    nxdomain,
    parse_query,
    refused,
)

SYNTH_V4 = IPv4Address("198.18.0.1")
SYNTH_V6 = IPv6Address("fd63:6f72:7269:646f::1")


def query_wire(name: str = "a.test", qtype: str = "A", **kw: object) -> bytes:
    return dns.message.make_query(name, qtype, **kw).to_wire()  # type: ignore[arg-type]


def reply(wire: bytes) -> dns.message.Message:
    return dns.message.from_wire(wire)


# --- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "qtype", "expected_name"),
    [
        ("a.test", "A", "a.test"),
        ("WWW.Example.TEST.", "AAAA", "www.example.test"),
        ("svc.test", "HTTPS", "svc.test"),
        ("_http._tcp.a.test", "SRV", "_http._tcp.a.test"),
        ("a.test", "TYPE65280", "a.test"),
        (".".join(["b" * 63, "c" * 63, "d" * 63, "e" * 61]), "A", None),  # 253 characters
    ],
)
def test_parse_query(name: str, qtype: str, expected_name: str | None) -> None:
    wire = query_wire(name, qtype)
    q = parse_query(wire)
    assert q.id == int.from_bytes(wire[:2], "big")
    assert q.name == (expected_name or name)
    assert q.qtype == qtype
    assert q.raw.question[0].name == dns.name.from_text(name)


def _two_questions() -> bytes:
    m = dns.message.make_query("a.test", "A")
    m.question.append(dns.message.make_query("b.test", "A").question[0])
    return m.to_wire()


def _opcode(op: dns.opcode.Opcode) -> bytes:
    m = dns.message.make_query("a.test", "A")
    m.set_opcode(op)
    return m.to_wire()


def _tsig_signed() -> bytes:
    m = dns.message.make_query("a.test", "A")
    m.use_tsig(dns.tsigkeyring.from_text({"key.test.": "c2VjcmV0c2VjcmV0"}))
    return m.to_wire()


def _raw_name(labels: list[bytes]) -> bytes:
    m = dns.message.make_query(dns.name.Name([*labels, b""]), "A")
    return m.to_wire()


HEADER_ONLY = b"\x12\x34\x01\x00" + b"\x00" * 8
F, N, R = dns.rcode.FORMERR, dns.rcode.NOTIMP, dns.rcode.REFUSED

REFUSED_QUERIES = {
    "empty": (b"", "shorter than a DNS header", None),
    "11 bytes": (HEADER_ONLY[:11], "shorter than a DNS header", None),
    "response": (
        dns.message.make_response(dns.message.make_query("a.test", "A")).to_wire(),
        "message is a response, not a query",
        None,
    ),
    "no question": (HEADER_ONLY, "no question", F),
    "question count lies": (
        b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6,
        "malformed message (FormError)",
        F,
    ),
    "trailing junk": (query_wire() + b"x", "malformed message (TrailingJunk)", F),
    "too large": (
        query_wire() + b"\x00" * MAX_QUERY_BYTES,
        f"query larger than {MAX_QUERY_BYTES} bytes",
        F,
    ),
    "two questions": (_two_questions(), "more than one question", F),
    "NOTIFY": (_opcode(dns.opcode.NOTIFY), "opcode NOTIFY is not supported", N),
    "STATUS": (_opcode(dns.opcode.STATUS), "opcode STATUS is not supported", N),
    "EDNS version 1": (
        query_wire(use_edns=1),
        "EDNS version 1 is not supported",
        dns.rcode.BADVERS,
    ),
    "class CH": (query_wire("version.bind", "TXT", rdclass="CH"), "class CH is not supported", R),
    "TSIG": (_tsig_signed(), "TSIG-signed query", R),
    "root": (query_wire(".", "NS"), "query name is not a host name: empty host name", R),
    "dot inside a label": (_raw_name([b"a.b", b"test"]), "'.' inside a label of the query name", R),
    "space in a label": (
        _raw_name([b"a b", b"test"]),
        "query name is not a host name: whitespace in host name",
        R,
    ),
    "NUL in a label": (
        _raw_name([b"a\x00", b"test"]),
        "query name is not a host name: NUL byte in host name",
        R,
    ),
    "slash in a label": (
        _raw_name([b"a/b", b"test"]),
        "query name is not a host name: invalid character '/' in host name",
        R,
    ),
    "binary label": (
        _raw_name([b"\xff\xfe", b"test"]),
        "query name is not a host name: non-ASCII host name (IDN must be sent as punycode)",
        R,
    ),
    "numeric name": (
        query_wire("2130706433"),
        "query name is not a host name: numeric host name that is not a dotted-quad IPv4 address",
        R,
    ),
}


@pytest.mark.parametrize(
    ("wire", "reason", "rcode"), REFUSED_QUERIES.values(), ids=REFUSED_QUERIES.keys()
)
def test_refused_queries(wire: bytes, reason: str, rcode: dns.rcode.Rcode | None) -> None:
    with pytest.raises(DNSParseError) as e:
        parse_query(wire)
    assert (e.value.reason, e.value.rcode) == (reason, rcode)


def test_query_is_comparable_and_hashable_without_raw() -> None:
    wire = query_wire()
    a, b = parse_query(wire), parse_query(wire)
    assert a == b
    assert hash(a) == hash(b)
    assert "raw" not in repr(a)


# --- answers -----------------------------------------------------------------------------


def _check_header(r: dns.message.Message, q: Query, rcode: dns.rcode.Rcode) -> None:
    assert r.id == q.id
    assert r.rcode() == rcode
    assert r.flags & dns.flags.QR
    assert r.flags & dns.flags.RA
    assert r.flags & dns.flags.AA
    assert r.flags & dns.flags.RD  # echoed from the query (make_query sets it)
    assert r.question == q.raw.question


def test_nxdomain() -> None:
    q = parse_query(query_wire("Blocked.TEST"))
    r = reply(nxdomain(q))
    _check_header(r, q, dns.rcode.NXDOMAIN)
    assert r.answer == []
    assert str(r.question[0].name) == "Blocked.TEST."  # the client's spelling (0x20) is kept


def test_refused() -> None:
    q = parse_query(query_wire())
    r = reply(refused(q))
    _check_header(r, q, dns.rcode.REFUSED)
    assert r.answer == []


@pytest.mark.parametrize(
    ("qtype", "addresses", "expected"),
    [
        ("A", [SYNTH_V4, SYNTH_V6], [SYNTH_V4]),
        ("AAAA", [SYNTH_V4, SYNTH_V6], [SYNTH_V6]),
        ("A", [SYNTH_V6], []),  # no address of that family: NODATA
        ("A", [SYNTH_V4, SYNTH_V4], [SYNTH_V4]),
        ("A", [ip_address("192.0.2.1"), ip_address("192.0.2.2")], None),
        ("HTTPS", [SYNTH_V4, SYNTH_V6], []),
        ("MX", [SYNTH_V4], []),
        ("ANY", [SYNTH_V4], []),
    ],
)
def test_answer(
    qtype: str, addresses: list[IPv4Address | IPv6Address], expected: list | None
) -> None:
    q = parse_query(query_wire("a.test", qtype))
    r = reply(answer(q, addresses, 60))
    _check_header(r, q, dns.rcode.NOERROR)
    got = [ip_address(rd.address) for rrset in r.answer for rd in rrset]
    assert sorted(got) == sorted(addresses if expected is None else expected)
    for rrset in r.answer:
        assert rrset.ttl == 60
        assert rrset.name == q.raw.question[0].name
        assert rrset.rdtype == dns.rdatatype.from_text(qtype)


@pytest.mark.parametrize("ttl", [-1, 2**31])
def test_answer_ttl_range(ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl"):
        answer(parse_query(query_wire()), [SYNTH_V4], ttl)


def test_answer_wants_address_objects() -> None:
    with pytest.raises(TypeError, match="IPv4Address or IPv6Address"):
        answer(parse_query(query_wire()), ["198.18.0.1"], 60)  # type: ignore[list-item]


def _many(n: int) -> list[IPv4Address | IPv6Address]:
    return [IPv4Address(0xC0000200 + i) for i in range(n)]


@pytest.mark.parametrize(
    ("edns", "payload", "count", "tcp", "truncated", "limit"),
    [
        (False, 0, 28, False, False, PLAIN_UDP_LIMIT),  # 16 bytes an address: 28 fit 512
        (False, 0, 40, False, True, PLAIN_UDP_LIMIT),
        (False, 0, 40, True, False, 65535),
        (True, 4096, 40, False, False, EDNS_PAYLOAD),  # fits our 1232 but not 512
        (True, 4096, 100, False, True, EDNS_PAYLOAD),  # client could take it; we don't send it
        (True, 512, 40, False, True, PLAIN_UDP_LIMIT),
        (True, 100, 40, False, True, PLAIN_UDP_LIMIT),  # below 512 counts as 512
        (True, 4096, 100, True, False, 65535),
    ],
)
def test_udp_truncation(
    edns: bool, payload: int, count: int, tcp: bool, truncated: bool, limit: int
) -> None:
    kw = {"use_edns": 0, "payload": payload} if edns else {}
    q = parse_query(query_wire("many.test", "A", **kw))
    wire = answer(q, _many(count), 30, tcp=tcp)
    r = reply(wire)
    assert len(wire) <= limit
    assert bool(r.flags & dns.flags.TC) is truncated
    answered = len(r.answer[0]) if r.answer else 0
    assert answered == (0 if truncated else count)
    assert r.rcode() == dns.rcode.NOERROR
    assert (r.edns >= 0) is edns


def test_edns_reply_advertises_our_payload() -> None:
    q = parse_query(query_wire(use_edns=0, payload=4096))
    r = reply(answer(q, [SYNTH_V4], 5))
    assert (r.edns, r.payload) == (0, EDNS_PAYLOAD)


def test_padded_query_gets_padded_reply() -> None:
    q = parse_query(query_wire(use_edns=0, options=[dns.edns.GenericOption(12, b"\x00" * 8)]))
    wire = nxdomain(q)
    assert len(wire) % 468 == 0  # RFC 8467 block padding


# --- error replies -----------------------------------------------------------------------


def test_formerr_for_garbage_with_an_id() -> None:
    r = reply(formerr_for(b"\xbe\xef\x01\x00\x00\x01" + b"\x00" * 6 + b"\xff" * 5) or b"")
    assert r.id == 0xBEEF
    assert r.rcode() == dns.rcode.FORMERR
    assert r.flags & dns.flags.QR
    assert r.flags & dns.flags.RD
    assert r.question == []


def test_formerr_echoes_what_parses() -> None:
    wire = _two_questions()
    r = reply(formerr_for(wire) or b"")
    assert r.rcode() == dns.rcode.FORMERR
    assert len(r.question) == 2


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x12",
        HEADER_ONLY[:11],
        dns.message.make_response(dns.message.make_query("a.test", "A")).to_wire(),
    ],
    ids=["empty", "one byte", "11 bytes", "a response"],
)
def test_no_error_reply_without_an_id_or_to_a_response(wire: bytes) -> None:
    assert formerr_for(wire) is None


def test_refused_error_reply_echoes_the_question() -> None:
    wire = query_wire("version.bind", "TXT", rdclass="CH")
    with pytest.raises(DNSParseError) as e:
        parse_query(wire)
    assert e.value.rcode is not None
    r = reply(error_reply(wire, e.value.rcode) or b"")
    assert r.rcode() == dns.rcode.REFUSED
    assert r.question == dns.message.from_wire(wire).question


def test_badvers_reply_carries_the_extended_rcode() -> None:
    wire = query_wire(use_edns=1)
    with pytest.raises(DNSParseError) as e:
        parse_query(wire)
    r = reply(error_reply(wire, e.value.rcode or 0) or b"")
    assert r.rcode() == dns.rcode.BADVERS
    assert r.edns == 0


def test_notimp_for_update_keeps_the_opcode() -> None:
    wire = _opcode(dns.opcode.UPDATE)
    r = reply(error_reply(wire, dns.rcode.NOTIMP) or b"")
    assert (r.rcode(), r.opcode()) == (dns.rcode.NOTIMP, dns.opcode.UPDATE)


# --- TCP framing -------------------------------------------------------------------------


def test_frame() -> None:
    assert frame(b"abc") == b"\x00\x03abc"
    assert frame(b"") == b"\x00\x00"
    assert len(frame(b"x" * 65535)) == 65537
    with pytest.raises(ValueError, match="does not fit"):
        frame(b"x" * 65536)


def test_reader_splits_a_stream_however_it_arrives() -> None:
    messages = [query_wire("a.test"), query_wire("b.test", "AAAA"), b"", query_wire("c.test")]
    stream = b"".join(frame(m) for m in messages)
    for chunk in (1, 2, 3, 7, len(stream)):
        reader = TcpDnsReader()
        got: list[bytes] = []
        for i in range(0, len(stream), chunk):
            got += reader.feed(stream[i : i + chunk])
        assert got == messages
        assert reader.pending == 0


def test_reader_holds_a_partial_frame() -> None:
    reader = TcpDnsReader()
    assert reader.feed(frame(b"abcdef")[:4]) == []
    assert reader.pending == 4
    assert reader.feed(b"cdef") == [b"abcdef"]


def test_reader_cap() -> None:
    reader = TcpDnsReader(max_message=100)
    assert reader.feed(frame(b"x" * 100)) == [b"x" * 100]
    with pytest.raises(DNSParseError) as e:
        reader.feed(b"\x00\x65")  # 101
    assert e.value.reason == "TCP DNS message of 101 bytes exceeds 100"
    assert e.value.rcode is None
    assert reader.pending == 0
    with pytest.raises(DNSParseError):
        reader.feed(frame(b"ok"))  # stays failed: the stream cannot be resynchronised


def test_reader_default_cap_is_the_query_limit() -> None:
    reader = TcpDnsReader()
    assert reader.feed(frame(b"q" * MAX_QUERY_BYTES)) == [b"q" * MAX_QUERY_BYTES]
    with pytest.raises(DNSParseError):
        reader.feed((MAX_QUERY_BYTES + 1).to_bytes(2, "big"))


def test_tcp_round_trip() -> None:
    reader = TcpDnsReader()
    (wire,) = reader.feed(frame(query_wire("a.test", "AAAA")))
    q = parse_query(wire)
    r = reply(answer(q, [SYNTH_V4, SYNTH_V6], 10, tcp=True))
    assert [rd.address for rd in r.answer[0]] == [str(SYNTH_V6)]
