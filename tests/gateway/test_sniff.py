"""Classifying a connection by its first bytes."""

from __future__ import annotations

import ssl

import pytest

from corridor.gateway.sniff import HTTP_METHODS, SNIFF_BYTES, Kind, classify

CASES = {
    "nothing yet": (b"", Kind.NEED_MORE),
    "TLS first byte": (b"\x16", Kind.NEED_MORE),
    "TLS two bytes": (b"\x16\x03", Kind.NEED_MORE),
    "TLS 1.0 record": (b"\x16\x03\x01", Kind.TLS),
    "TLS SSL3.0 record": (b"\x16\x03\x00\x00\x10", Kind.TLS),
    "TLS 1.3 record version": (b"\x16\x03\x04", Kind.TLS),
    "TLS unknown minor": (b"\x16\x03\x05", Kind.OTHER),
    "TLS wrong major": (b"\x16\x02\x01", Kind.OTHER),
    "TLS alert record": (b"\x15\x03\x01\x00\x02", Kind.OTHER),
    "SSLv2 hello": (b"\x80\x2e\x01\x03\x01", Kind.OTHER),
    "GET": (b"GET / HTTP/1.1\r\n", Kind.HTTP),
    "GET exactly": (b"GET ", Kind.HTTP),
    "GET without space yet": (b"GET", Kind.NEED_MORE),
    "G": (b"G", Kind.NEED_MORE),
    "CONNECT": (b"CONNECT a.test:443 HTTP/1.1\r\n", Kind.HTTP),
    "PROPFIND": (b"PROPFIND /repo/ HTTP/1.1\r\n", Kind.HTTP),
    "MKACTIVITY": (b"MKACTIVITY /svn/ HTTP/1.1\r\n", Kind.HTTP),
    "lowercase method": (b"get / HTTP/1.1\r\n", Kind.OTHER),
    "method then tab": (b"GET\t/", Kind.OTHER),
    "unknown method": (b"FOO / HTTP/1.1\r\n", Kind.OTHER),
    "method as prefix of a word": (b"GETX / HTTP/1.1", Kind.OTHER),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Kind.OTHER),
    "SSH banner": (b"SSH-2.0-OpenSSH_9.6\r\n", Kind.OTHER),
    "postgres startup": (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Kind.OTHER),
    "P could be POST or PUT": (b"P", Kind.NEED_MORE),
    "PU": (b"PU", Kind.NEED_MORE),
    "PUX": (b"PUX", Kind.OTHER),
}


@pytest.mark.parametrize(("data", "kind"), CASES.values(), ids=CASES.keys())
def test_classify(data: bytes, kind: Kind) -> None:
    assert classify(data) is kind


@pytest.mark.parametrize("method", sorted(HTTP_METHODS))
def test_every_method_and_its_prefixes(method: bytes) -> None:
    line = method + b" /x HTTP/1.1\r\n"
    for n in range(len(method) + 1):
        assert classify(line[:n]) is Kind.NEED_MORE, line[:n]
    assert classify(line[: len(method) + 1]) is Kind.HTTP
    assert classify(line) is Kind.HTTP


def test_brief_methods_are_known() -> None:
    wanted = {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"}
    assert wanted | {b"CONNECT", b"PROPFIND", b"MKCOL", b"LOCK", b"UNLOCK"} <= HTTP_METHODS


def test_sniff_bytes_is_enough_to_decide() -> None:
    assert len(b"MKACTIVITY ") == SNIFF_BYTES
    longest = max(HTTP_METHODS, key=len)
    assert classify(longest + b" ") is Kind.HTTP
    assert classify(longest[: SNIFF_BYTES - 1] + b"X") is Kind.OTHER


def test_real_client_hello_is_tls() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="x.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert classify(hello[:1]) is Kind.NEED_MORE
    assert classify(hello[:3]) is Kind.TLS
    assert classify(hello) is Kind.TLS
