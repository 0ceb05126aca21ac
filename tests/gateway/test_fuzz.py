"""Fuzzing every gateway parser: each returns or raises its own error, never anything else.

The default run makes FAST_EXAMPLES inputs per target. The slow variant (`pytest -m slow`)
makes at least SLOW_TOTAL inputs across all targets.
"""

from __future__ import annotations

import contextlib
import itertools
import ssl
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import dns.message
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corridor.gateway.dns_msg import (
    DNSParseError,
    TcpDnsReader,
    answer,
    error_reply,
    frame,
    nxdomain,
    parse_query,
    refused,
)
from corridor.gateway.http_target import (
    FORM_ABSOLUTE,
    FORM_AUTHORITY,
    FORM_ORIGIN,
    RequestTarget,
    TargetError,
    request_target,
    rewrite_origin_form,
)
from corridor.gateway.names import hostname_problem
from corridor.gateway.sniff import SNIFF_BYTES, Kind, classify
from corridor.gateway.tls_hello import (
    MAX_HELLO_BYTES,
    ClientHello,
    ClientHelloReader,
    TLSParseError,
    parse_client_hello,
)

FAST_EXAMPLES = 300
SLOW_TOTAL = 100_000

# --- seeds -------------------------------------------------------------------------------


def _real_hello(server_hostname: str | None, alpn: list[str] | None = None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = server_hostname is not None
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the ServerHello
        tls.do_handshake()
    return outgoing.read()


def _refragment(hello: bytes, size: int) -> bytes:
    # The hello's handshake bytes re-cut into records of `size` bytes.
    message = hello[5:]  # the ssl module's small hellos are one record
    return b"".join(
        b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk
        for chunk in (message[i : i + size] for i in range(0, len(message), size))
    )


HELLOS = [
    _real_hello("x.test"),
    _real_hello("x.test", ["h2", "http/1.1"]),
    _real_hello(None),
    _refragment(_real_hello("frag.test", ["h2"]), 64),
    _refragment(_real_hello("frag.test"), 7),
]

QUERIES = [
    dns.message.make_query("a.test", "A").to_wire(),
    dns.message.make_query("Www.Example.Test.", "AAAA", use_edns=0, payload=4096).to_wire(),
    dns.message.make_query("svc.test", "HTTPS", want_dnssec=True).to_wire(),
]

# --- strategies --------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with a few byte flips, insertions, deletions or a truncation."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=12))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


_LATIN1 = st.text(alphabet=st.characters(max_codepoint=255), max_size=24)
_HOSTS = st.one_of(
    st.sampled_from(
        [
            "a.test",
            "A.Test.",
            "[::1]",
            "[fe80::1%eth0]",
            "[1.2.3.4]",
            "192.0.2.1",
            "127.1",
            "u@a.test",
            "",
            "a..test",
            "[::1",
            "2001:db8::1",
            "a" * 64 + ".test",
        ]
    ),
    _LATIN1,
)
_PORTS = st.one_of(
    st.sampled_from(["", ":80", ":443", ":0", ":65535", ":65536", ":", ":x", ":+1", ":99999"]),
    _LATIN1.map(lambda s: ":" + s),
)
_PATHS = st.one_of(st.sampled_from(["", "/", "/x?y", "?q", "#f", "/a b", "*"]), _LATIN1)
_SCHEMES = st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "", "http:/", "h+x://"])
_METHODS = st.one_of(st.sampled_from([b"CONNECT", b"GET", b"OPTIONS", b"POST"]), st.binary())


@st.composite
def authority(draw: st.DrawFn) -> str:
    return draw(_HOSTS) + draw(_PORTS)


@st.composite
def request_pieces(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    target = draw(_SCHEMES) + draw(authority()) + draw(_PATHS)
    names = st.sampled_from([b"host", b"Host", b"x-other"])
    values = st.one_of(authority().map(lambda s: s.encode("latin-1")), st.binary(max_size=20))
    headers = draw(st.lists(st.tuples(names, values), max_size=3))
    return draw(_METHODS), target.encode("latin-1"), headers


# --- targets -----------------------------------------------------------------------------


def fuzz_classify(data: st.DataObject) -> None:
    first = data.draw(st.binary(max_size=2 * SNIFF_BYTES))
    more = data.draw(st.binary(max_size=4))
    kind = classify(first)
    assert isinstance(kind, Kind)
    if len(first) >= SNIFF_BYTES:
        assert kind is not Kind.NEED_MORE
    if kind is not Kind.NEED_MORE:
        assert classify(first + more) is kind  # a decision never changes with more bytes


def _outcome(fn: Callable[[], ClientHello | None]) -> ClientHello | str | None:
    try:
        return fn()
    except TLSParseError as e:
        return e.reason


def _check_hello(result: ClientHello | str | None, data: bytes) -> None:
    if isinstance(result, ClientHello):
        assert 0 < result.length <= min(len(data), MAX_HELLO_BYTES)
        assert result.records >= 1
        assert result.sni is None or hostname_problem(result.sni) is None
        assert all(result.alpn)


def fuzz_hello_bytes(data: st.DataObject) -> None:
    raw = data.draw(st.binary(max_size=600))
    # Half the time behind a plausible record header, so the body parser is reached.
    if data.draw(st.booleans()):
        raw = b"\x16\x03\x01" + len(raw).to_bytes(2, "big") + raw
    _check_hello(_outcome(lambda: parse_client_hello(raw)), raw)


def fuzz_hello_mutated_chunked(data: st.DataObject) -> None:
    raw = data.draw(mutated(HELLOS))
    whole = _outcome(lambda: parse_client_hello(raw))
    _check_hello(whole, raw)
    reader = ClientHelloReader()

    def feed_all() -> ClientHello | None:
        result = None
        for chunk in data.draw(chunked(raw)):
            result = reader.feed(chunk)
        return result

    # However the bytes arrive, the answer is the one the whole buffer gives.
    assert _outcome(feed_all) == whole


def _check_target(result: RequestTarget, proxy: bool) -> None:
    assert 1 <= result.port <= 65535
    assert result.form in (FORM_AUTHORITY, FORM_ABSOLUTE, FORM_ORIGIN)
    if ":" in result.host:
        IPv6Address(result.host)
    else:
        assert hostname_problem(result.host) is None
    if result.form == FORM_AUTHORITY:
        assert proxy
        assert result.path == ""
    else:
        assert rewrite_origin_form(result).startswith(b"/")
        assert not (proxy and result.form == FORM_ORIGIN)


def _run_target(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], proxy: bool
) -> None:
    try:
        result = request_target(method, target, headers, proxy=proxy)
    except TargetError as e:
        assert e.reason
        assert e.status == 400
        return
    _check_target(result, proxy)


def fuzz_target_bytes(data: st.DataObject) -> None:
    method = data.draw(_METHODS)
    target = data.draw(st.binary(max_size=80))
    headers = data.draw(st.lists(st.tuples(st.binary(max_size=6), st.binary(max_size=40))))
    _run_target(method, target, headers, data.draw(st.booleans()))


def fuzz_target_pieces(data: st.DataObject) -> None:
    method, target, headers = data.draw(request_pieces())
    _run_target(method, target, headers, data.draw(st.booleans()))


def _run_query(wire: bytes) -> None:
    try:
        q = parse_query(wire)
    except DNSParseError as e:
        assert e.reason
        if e.rcode is not None:
            reply = error_reply(wire, e.rcode)
            assert reply is None or reply[:2] == wire[:2]
        return
    assert hostname_problem(q.name) is None
    assert q.name == q.name.lower()
    addresses = [IPv4Address("198.18.0.1"), IPv6Address("fd63:6f72:7269:646f::1")]
    for reply in (nxdomain(q), refused(q), answer(q, addresses, 60, tcp=True)):
        parsed = dns.message.from_wire(reply)
        assert parsed.id == q.id
        assert len(reply) <= 65535
    assert len(answer(q, addresses, 60)) <= 1232


def fuzz_query_bytes(data: st.DataObject) -> None:
    raw = data.draw(st.binary(max_size=300))
    if data.draw(st.booleans()):
        # A query-like header (QR clear, one question) so the name parser is reached.
        raw = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + raw
    _run_query(raw)


def fuzz_query_mutated(data: st.DataObject) -> None:
    _run_query(data.draw(mutated(QUERIES)))


def fuzz_tcp_reader(data: st.DataObject) -> None:
    max_message = data.draw(st.integers(0, 600))
    reader = TcpDnsReader(max_message)
    framed = [frame(m) for m in data.draw(st.lists(st.binary(max_size=40), max_size=4))]
    stream = b"".join(framed) + data.draw(st.binary(max_size=300))
    got: list[bytes] = []
    try:
        for chunk in data.draw(chunked(stream)):
            got += reader.feed(chunk)
    except DNSParseError as e:
        assert e.rcode is None
        return
    assert all(len(m) <= max_message for m in got)
    assert b"".join(frame(m) for m in got) == stream[: len(stream) - reader.pending]


TARGETS: dict[str, Callable[[st.DataObject], None]] = {
    "classify": fuzz_classify,
    "parse_client_hello bytes": fuzz_hello_bytes,
    "parse_client_hello mutated, chunked": fuzz_hello_mutated_chunked,
    "request_target bytes": fuzz_target_bytes,
    "request_target pieces": fuzz_target_pieces,
    "parse_query bytes": fuzz_query_bytes,
    "parse_query mutated": fuzz_query_mutated,
    "TcpDnsReader": fuzz_tcp_reader,
}
SLOW_EACH = -(-SLOW_TOTAL // len(TARGETS))  # rounded up: the total is at least SLOW_TOTAL

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=FAST_EXAMPLES, deadline=None, suppress_health_check=_HEALTH)
@given(data=st.data())
def test_fuzz(target: str, data: st.DataObject) -> None:
    TARGETS[target](data)


@pytest.mark.slow
# Only when asked for with -m slow: a plain `pytest` run stays fast.
@pytest.mark.skipif("'slow' not in config.option.markexpr", reason="run with -m slow")
@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=SLOW_EACH, deadline=None, suppress_health_check=_HEALTH)
@given(data=st.data())
def test_fuzz_slow(target: str, data: st.DataObject) -> None:
    TARGETS[target](data)


def test_slow_variant_reaches_the_total() -> None:
    assert SLOW_EACH * len(TARGETS) >= SLOW_TOTAL
