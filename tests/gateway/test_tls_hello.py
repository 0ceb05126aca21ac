"""ClientHello parsing: real hellos from the ssl module, fragmented ones, malformed ones."""

from __future__ import annotations

import ssl

import pytest

from corridor.gateway.tls_hello import (
    MAX_HELLO_BYTES,
    MAX_RECORD_PAYLOAD,
    ClientHello,
    ClientHelloReader,
    TLSParseError,
    parse_client_hello,
)

# --- real hellos -------------------------------------------------------------------------


def real_hello(server_hostname: str | None = "x.test", alpn: list[str] | None = None) -> bytes:
    """The first flight of a real TLS client (OpenSSL through the ssl module)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def handshake_of(records: bytes) -> bytes:
    """The handshake-layer bytes carried by a run of TLS records."""
    out, pos = b"", 0
    while pos < len(records):
        length = int.from_bytes(records[pos + 3 : pos + 5], "big")
        out += records[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return out


# --- hand-built hellos -------------------------------------------------------------------


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def ext(ext_type: int, data: bytes) -> bytes:
    return u16(ext_type) + u16(len(data)) + data


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + u16(len(n)) + n for n in names)
    return ext(0, u16(len(entries)) + entries)


def alpn_ext(*protocols: bytes) -> bytes:
    entries = b"".join(bytes([len(p)]) + p for p in protocols)
    return ext(16, u16(len(entries)) + entries)


def hello_body(
    extensions: bytes | None = b"",
    *,
    version: bytes = b"\x03\x03",
    session_id: bytes = b"\x07" * 32,
    suites: bytes = b"\x13\x01\x13\x02",
    compression: bytes = b"\x01\x00",
) -> bytes:
    body = version + b"\x11" * 32 + bytes([len(session_id)]) + session_id
    body += u16(len(suites)) + suites + compression
    if extensions is not None:
        body += u16(len(extensions)) + extensions
    return body


def handshake(body: bytes, handshake_type: int = 1) -> bytes:
    return bytes([handshake_type]) + len(body).to_bytes(3, "big") + body


def records(data: bytes, sizes: list[int] | None = None, content_type: int = 22) -> bytes:
    """`data` cut into TLS records of the given sizes (the rest in records of 2^14)."""
    out, pos = b"", 0
    for size in sizes or []:
        out += bytes([content_type, 3, 1]) + u16(size) + data[pos : pos + size]
        pos += size
    while pos < len(data):
        chunk = data[pos : pos + MAX_RECORD_PAYLOAD]
        out += bytes([content_type, 3, 1]) + u16(len(chunk)) + chunk
        pos += len(chunk)
    return out


def hello(*exts: bytes, **body_kw: bytes) -> bytes:
    return records(handshake(hello_body(b"".join(exts), **body_kw)))


def padded_hello(total: int) -> bytes:
    """A hello whose records (headers included) take exactly `total` bytes."""
    base = hello_body(sni_ext(b"big.test"))
    n_records = -(-(total - 4) // (MAX_RECORD_PAYLOAD + 5))
    pad = total - 5 * n_records - 4 - len(base) - 4  # 4: the padding extension's header
    body = hello_body(sni_ext(b"big.test") + ext(21, b"\x00" * pad))
    data = records(handshake(body))
    assert len(data) == total
    return data


NAME_253 = ".".join(["b" * 63, "c" * 63, "d" * 63, "e" * 61])

# X25519MLKEM768 (0x11ec) share of 1216 bytes, the hybrid that makes hellos ~1.8 KB.
PQ_KEY_SHARE = ext(
    51,
    u16(2 + 2 + 1216 + 2 + 2 + 32)
    + u16(0x11EC)
    + u16(1216)
    + b"\x42" * 1216
    + u16(0x001D)
    + u16(32)
    + b"\x24" * 32,
)


# --- accepted ----------------------------------------------------------------------------


def test_real_hello_with_sni() -> None:
    data = real_hello()
    assert parse_client_hello(data) == ClientHello(
        sni="x.test", alpn=(), ech=False, length=len(data), records=1
    )


def test_real_hello_with_alpn() -> None:
    parsed = parse_client_hello(real_hello(alpn=["h2", "http/1.1"]))
    assert parsed is not None
    assert parsed.sni == "x.test"
    assert parsed.alpn == ("h2", "http/1.1")


def test_real_hello_without_sni() -> None:
    parsed = parse_client_hello(real_hello(server_hostname=None))
    assert parsed is not None
    assert parsed.sni is None
    assert parsed.alpn == ()


def test_real_hello_that_openssl_itself_fragments() -> None:
    # An ALPN list this long pushes the hello past 2^14, so OpenSSL sends two records.
    protocols = [f"p{i:03d}" + "x" * 250 for i in range(80)]
    data = real_hello(server_hostname="frag.test", alpn=protocols)
    parsed = parse_client_hello(data)
    assert parsed is not None
    assert parsed.records == 2
    assert parsed.length == len(data) > MAX_RECORD_PAYLOAD
    assert parsed.sni == "frag.test"
    assert parsed.alpn == tuple(protocols)


@pytest.mark.parametrize("sizes", [[1], [4], [5, 7], [1] * 60, [100, 1], [300]])
def test_real_hello_refragmented(sizes: list[int]) -> None:
    message = handshake_of(real_hello(alpn=["h2"]))
    data = records(message, sizes)
    parsed = parse_client_hello(data)
    assert parsed is not None
    assert (parsed.sni, parsed.alpn, parsed.length) == ("x.test", ("h2",), len(data))
    assert parsed.records == len(sizes) + (1 if sum(sizes) < len(message) else 0)


def test_every_proper_prefix_needs_more() -> None:
    data = records(handshake_of(real_hello()), [3, 50, 200])
    for n in range(len(data)):
        assert parse_client_hello(data[:n]) is None, n
    assert parse_client_hello(data) is not None


def test_reader_fed_one_byte_at_a_time() -> None:
    data = records(handshake_of(real_hello(alpn=["h2"])), [2, 9])
    reader = ClientHelloReader()
    results = [reader.feed(data[i : i + 1]) for i in range(len(data))]
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] == parse_client_hello(data)
    assert reader.feed(b"more") is results[-1]  # later bytes belong to the stream


def test_bytes_after_the_hello_are_left_alone() -> None:
    data = real_hello()
    early_data = b"\x17\x03\x03\x00\x05hello"
    parsed = parse_client_hello(data + early_data)
    assert parsed is not None
    assert parsed.length == len(data)


def test_post_quantum_sized_hello_across_records() -> None:
    # With the padding (RFC 7685) browsers add, this is the size of a hybrid-share hello.
    exts = sni_ext(b"pq.test") + PQ_KEY_SHARE + ext(21, b"\x00" * 400)
    data = records(handshake(hello_body(exts)), [600, 600])
    assert 1700 < len(data) < 2000
    parsed = parse_client_hello(data)
    assert parsed is not None
    assert (parsed.sni, parsed.records) == ("pq.test", 3)


def test_hello_exactly_at_the_cap() -> None:
    data = padded_hello(MAX_HELLO_BYTES)
    parsed = parse_client_hello(data)
    assert parsed is not None
    assert parsed.sni == "big.test"
    assert parsed.length == MAX_HELLO_BYTES


def test_hello_one_byte_over_the_cap() -> None:
    data = padded_hello(MAX_HELLO_BYTES + 1)
    with pytest.raises(TLSParseError) as e:
        parse_client_hello(data)
    assert e.value.reason == f"ClientHello larger than {MAX_HELLO_BYTES} bytes"


def test_tiny_records_cannot_stretch_the_cap() -> None:
    # 12 KB of hello in 1-byte records is 72 KB on the wire: refused once past the cap,
    # before all of it has been fed.
    message = handshake(hello_body(sni_ext(b"a.test") + ext(21, b"\x00" * 12_000)))
    data = records(message, [1] * len(message))
    reader = ClientHelloReader()
    with pytest.raises(TLSParseError, match="ClientHello larger than"):
        for i in range(0, len(data), 1000):
            assert reader.feed(data[i : i + 1000]) is None
            assert i < MAX_HELLO_BYTES
    assert len(reader._buf) <= MAX_HELLO_BYTES


ACCEPTED = {
    "no extensions at all": (records(handshake(hello_body(None))), None, ()),
    "empty extensions": (hello(), None, ()),
    "sni and alpn": (hello(sni_ext(b"a.test"), alpn_ext(b"h2")), "a.test", ("h2",)),
    "trailing dot kept": (hello(sni_ext(b"a.test.")), "a.test.", ()),
    "uppercase kept": (hello(sni_ext(b"A.Test")), "A.Test", ()),
    "63-char label": (hello(sni_ext(b"a" * 63 + b".test")), "a" * 63 + ".test", ()),
    "253-char name": (hello(sni_ext(NAME_253.encode())), NAME_253, ()),
    "GREASE and unknown extensions": (hello(ext(0x0A0A, b""), ext(0xFFEE, b"x" * 9)), None, ()),
    "ALPN bytes kept as latin-1": (hello(alpn_ext(b"\x0a\x0a", b"h2")), None, ("\n\n", "h2")),
    "empty session id": (hello(sni_ext(b"a.test"), session_id=b""), "a.test", ()),
    "SSL 3.0 legacy version": (hello(version=b"\x03\x00"), None, ()),
}


@pytest.mark.parametrize(("data", "sni", "alpn"), ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted(data: bytes, sni: str | None, alpn: tuple[str, ...]) -> None:
    parsed = parse_client_hello(data)
    assert parsed is not None
    assert (parsed.sni, parsed.alpn, parsed.ech) == (sni, alpn, False)


def test_ech_is_reported() -> None:
    parsed = parse_client_hello(hello(sni_ext(b"public.test"), ext(0xFE0D, b"\x00" * 40)))
    assert parsed is not None
    assert (parsed.sni, parsed.ech) == ("public.test", True)


# --- refused -----------------------------------------------------------------------------


def _record(payload: bytes, content_type: int = 22, version: bytes = b"\x03\x01") -> bytes:
    return bytes([content_type]) + version + u16(len(payload)) + payload


_BODY = hello_body(sni_ext(b"a.test"))
_HS = handshake(_BODY)

MALFORMED = {
    "SSLv2 hello": (
        b"\x80\x2e\x01\x03\x01" + b"\x00" * 45,
        "SSLv2-format ClientHello is not supported",
    ),
    "HTTP request": (b"GET / HTTP/1.1\r\n", "not a TLS handshake record (content type 71)"),
    "alert record": (_record(b"\x02\x28", 21), "not a TLS handshake record (content type 21)"),
    "high bit but not SSLv2": (b"\x80\x2e\x02", "not a TLS handshake record (content type 128)"),
    "record major 2": (b"\x16\x02\x00", "unknown record version major 2"),
    "record version 3.5": (b"\x16\x03\x05", "unknown record version 3.5"),
    "empty record": (b"\x16\x03\x01\x00\x00", "empty handshake record"),
    "record over 2^14": (b"\x16\x03\x01" + u16(16385), "record of 16385 bytes exceeds 16384"),
    "ServerHello": (records(handshake(_BODY, 2)), "not a ClientHello (handshake type 2)"),
    "declared length over cap": (
        _record(b"\x01\x01\x11\x70" + b"\x00" * 10),
        "ClientHello larger than 65536 bytes",
    ),
    "application data inside the hello": (
        _record(_HS[:10]) + _record(_HS[10:], 23),
        "record of content type 23 inside the ClientHello",
    ),
    "handshake data after the hello": (
        _record(_HS + b"\x14"),
        "handshake data after the ClientHello",
    ),
    "legacy version 2.0": (hello(version=b"\x02\x00"), "unknown ClientHello version 0x0200"),
    "truncated random": (records(handshake(b"\x03\x03" + b"\x00" * 10)), "truncated random"),
    "session id of 33": (hello(session_id=b"\x00" * 33), "legacy_session_id longer than 32 bytes"),
    "odd cipher_suites": (
        hello(suites=b"\x13\x01\x13"),
        "cipher_suites length 3 is not a positive even number",
    ),
    "no cipher_suites": (hello(suites=b""), "cipher_suites length 0 is not a positive even number"),
    "no compression methods": (hello(compression=b"\x00"), "no compression methods"),
    "truncated compression": (
        records(handshake(hello_body(None, compression=b"\x02\x00"))),
        "truncated legacy_compression_methods",
    ),
    "extensions length too long": (
        records(handshake(hello_body(b"")[:-2] + u16(10) + sni_ext(b"a")[:8])),
        "extensions length 10 does not match the 8 bytes left",
    ),
    "one stray byte of extensions": (
        records(handshake(hello_body(None) + b"\x00")),
        "truncated extensions length",
    ),
    "truncated extension": (hello(u16(0) + u16(100) + b"abcd"), "truncated extension 0"),
    "truncated extension header": (hello(b"\x00\x10\x00"), "truncated extension length"),
    "one byte of an extension type": (hello(b"\x00"), "truncated extension type"),
    "two bytes of an extension header": (hello(b"\x00\x10"), "truncated extension length"),
    "truncated extension after a good one": (
        hello(sni_ext(b"a.test") + u16(16) + u16(9) + b"\x00"),
        "truncated extension 16",
    ),
    "empty extension of length 0 at the end, then junk": (
        hello(ext(21, b"") + b"\x00"),
        "truncated extension type",
    ),
    "duplicate unknown extension": (hello(ext(21, b""), ext(21, b"")), "duplicate extension 21"),
    "duplicate ALPN": (hello(alpn_ext(b"h2"), alpn_ext(b"h2")), "duplicate extension 16"),
    "duplicate SNI": (hello(sni_ext(b"a.test"), sni_ext(b"b.test")), "duplicate extension 0"),
    "SNI with NUL": (hello(sni_ext(b"a.test\x00.evil.test")), "invalid SNI: NUL byte in host name"),
    "SNI not ASCII": (
        hello(sni_ext("bücher.test".encode())),
        "invalid SNI: non-ASCII host name (IDN must be sent as punycode)",
    ),
    "SNI with slash": (
        hello(sni_ext(b"a.test/x")),
        "invalid SNI: invalid character '/' in host name",
    ),
    "SNI with space": (hello(sni_ext(b"a .test")), "invalid SNI: whitespace in host name"),
    "SNI empty name": (hello(sni_ext(b"")), "invalid SNI: empty host name"),
    "SNI 64-char label": (
        hello(sni_ext(b"a" * 64 + b".test")),
        "invalid SNI: label longer than 63 characters in host name",
    ),
    "SNI 254 chars": (
        hello(sni_ext(b"f" + NAME_253.encode())),
        "invalid SNI: host name longer than 253 characters",
    ),
    "SNI numeric": (
        hello(sni_ext(b"2130706433")),
        "invalid SNI: numeric host name that is not a dotted-quad IPv4 address",
    ),
    "two host_names": (
        hello(sni_ext(b"a.test", b"b.test")),
        "more than one host_name in server_name",
    ),
    "unknown name type": (hello(sni_ext(b"a.test", name_type=1)), "server_name of unknown type 1"),
    "SNI list length wrong": (
        hello(ext(0, u16(10) + b"\x00" + u16(6) + b"a.test")),
        "server_name list length does not match the extension",
    ),
    "SNI list empty": (hello(ext(0, u16(0))), "empty server_name list"),
    "SNI extension empty": (hello(ext(0, b"")), "truncated server_name list length"),
    "SNI name truncated": (
        hello(ext(0, u16(5) + b"\x00" + u16(9) + b"ab")),
        "truncated server_name",
    ),
    "ALPN empty protocol": (hello(alpn_ext(b"h2", b"")), "empty ALPN protocol name"),
    "ALPN list length wrong": (
        hello(ext(16, u16(7) + b"\x02h2")),
        "ALPN list length does not match the extension",
    ),
    "ALPN list empty": (hello(ext(16, u16(0))), "empty ALPN list"),
    "ALPN protocol truncated": (hello(ext(16, u16(3) + b"\x05h2")), "truncated ALPN protocol"),
}


@pytest.mark.parametrize(("data", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(TLSParseError) as e:
        parse_client_hello(data)
    assert e.value.reason == reason


@pytest.mark.parametrize(("data", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_fed_byte_by_byte_fails_the_same_way(data: bytes, reason: str) -> None:
    reader = ClientHelloReader()
    with pytest.raises(TLSParseError) as e:
        for i in range(len(data)):
            reader.feed(data[i : i + 1])
    assert e.value.reason == reason
    with pytest.raises(TLSParseError) as again:
        reader.feed(b"")  # a failed reader stays failed
    assert again.value.reason == reason
