"""Request targets: which host and port an HTTP/1 request names, and what is refused."""

from __future__ import annotations

import h11
import pytest

from corridor.gateway.http_target import (
    RequestTarget,
    TargetError,
    request_target,
    rewrite_origin_form,
)

NAME_253 = ".".join(["b" * 63, "c" * 63, "d" * 63, "e" * 61])
LABEL_63 = "a" * 63

Headers = list[tuple[bytes, bytes]]
HostField = str | bytes | list[str] | None  # one Host value, several, or none
PROXY, TRANSPARENT = True, False
AUTH, ABS, ORIGIN = "authority", "absolute", "origin"


def host(value: str | bytes) -> Headers:
    return [(b"host", value.encode("latin-1") if isinstance(value, str) else value)]


def headers_for(field: HostField) -> Headers:
    if field is None:
        return []
    if isinstance(field, list):
        return [h for value in field for h in host(value)]
    return host(field)


def call(line: str, field: HostField, proxy: bool, default_port: int = 80) -> RequestTarget:
    method, _, target = line.partition(" ")
    return request_target(
        method.encode(),
        target.encode("latin-1"),
        headers_for(field),
        default_port=default_port,
        proxy=proxy,
    )


# name: (request line, Host header, where it arrived, (host, port, form, scheme, path))
# fmt: off
ACCEPTED = {
    "CONNECT": ("CONNECT a.test:443", "a.test:443", PROXY,
                ("a.test", 443, AUTH, None, "")),
    "CONNECT without Host": ("CONNECT a.test:8443", None, PROXY,
                             ("a.test", 8443, AUTH, None, "")),
    "CONNECT Host without port": ("CONNECT a.test:443", "A.test.", PROXY,
                                  ("a.test", 443, AUTH, None, "")),
    "CONNECT port 65535": ("CONNECT a.test:65535", None, PROXY,
                           ("a.test", 65535, AUTH, None, "")),
    "CONNECT port 1": ("CONNECT a.test:1", None, PROXY,
                       ("a.test", 1, AUTH, None, "")),
    "CONNECT IPv6": ("CONNECT [2001:db8::1]:443", "[2001:DB8:0::1]:443", PROXY,
                     ("2001:db8::1", 443, AUTH, None, "")),
    "CONNECT IPv4": ("CONNECT 192.0.2.1:22", None, PROXY,
                     ("192.0.2.1", 22, AUTH, None, "")),
    "CONNECT keeps case": ("CONNECT A.Test:443", None, PROXY,
                           ("A.Test", 443, AUTH, None, "")),
    "absolute http": ("GET http://a.test/p?q=1", "a.test", PROXY,
                      ("a.test", 80, ABS, "http", "/p?q=1")),
    "absolute https default port": ("GET https://a.test/", "a.test", PROXY,
                                    ("a.test", 443, ABS, "https", "/")),
    "absolute explicit port": ("POST http://a.test:8080/x", "a.test:8080", PROXY,
                               ("a.test", 8080, ABS, "http", "/x")),
    "absolute Host names default port": ("GET http://a.test/", "a.test:80", PROXY,
                                         ("a.test", 80, ABS, "http", "/")),
    "absolute URI names default port": ("GET http://a.test:80/", "a.test", PROXY,
                                        ("a.test", 80, ABS, "http", "/")),
    "absolute case and dot": ("GET http://Example.TEST/", "example.test.", PROXY,
                              ("Example.TEST", 80, ABS, "http", "/")),
    "absolute uppercase scheme": ("GET HTTP://a.test/", "a.test", PROXY,
                                  ("a.test", 80, ABS, "http", "/")),
    "absolute no path": ("GET http://a.test", "a.test", PROXY,
                         ("a.test", 80, ABS, "http", "/")),
    "absolute query only": ("GET http://a.test?x=1", "a.test", PROXY,
                            ("a.test", 80, ABS, "http", "/?x=1")),
    "absolute without Host (HTTP/1.0)": ("GET http://a.test/", None, PROXY,
                                         ("a.test", 80, ABS, "http", "/")),
    "absolute on transparent path": ("GET http://a.test/x", "a.test", TRANSPARENT,
                                     ("a.test", 80, ABS, "http", "/x")),
    "absolute IPv6": ("GET http://[::1]:8080/", "[::1]:8080", PROXY,
                      ("::1", 8080, ABS, "http", "/")),
    "origin": ("GET /x?y", "a.test", TRANSPARENT,
               ("a.test", 80, ORIGIN, None, "/x?y")),
    "origin Host port": ("GET /", "a.test:9000", TRANSPARENT,
                         ("a.test", 9000, ORIGIN, None, "/")),
    "origin IPv6 Host": ("GET /", "[fd00::1]:8080", TRANSPARENT,
                         ("fd00::1", 8080, ORIGIN, None, "/")),
    "origin IPv4 Host": ("GET /", "192.0.2.7", TRANSPARENT,
                         ("192.0.2.7", 80, ORIGIN, None, "/")),
    "origin 253-char host": ("GET /", NAME_253, TRANSPARENT,
                             (NAME_253, 80, ORIGIN, None, "/")),
    "origin 63-char label": ("GET /", f"{LABEL_63}.test", TRANSPARENT,
                             (f"{LABEL_63}.test", 80, ORIGIN, None, "/")),
    "origin non-ASCII path kept": ("GET /\xe4", "a.test", TRANSPARENT,
                                   ("a.test", 80, ORIGIN, None, "/\xe4")),
}
# fmt: on


@pytest.mark.parametrize(
    ("line", "field", "proxy", "expected"), ACCEPTED.values(), ids=ACCEPTED.keys()
)
def test_accepted(line: str, field: HostField, proxy: bool, expected: tuple) -> None:
    assert call(line, field, proxy) == RequestTarget(*expected)


def test_origin_form_takes_the_default_port() -> None:
    got = call("GET /", "a.test", TRANSPARENT, default_port=8080)
    assert got == RequestTarget("a.test", 8080, ORIGIN, None, "/")


def test_host_header_name_in_any_case() -> None:
    got = request_target(b"GET", b"/", [(b"Host", b"a.test")], proxy=False)
    assert got == RequestTarget("a.test", 80, ORIGIN, None, "/")


MISMATCH = "Host header {!r} does not match request target {!r}"
OUT_OF_RANGE = "port {!r} out of range (1-65535) in CONNECT target"
NOT_A_FORM = "request target {!r} is not origin-, absolute- or authority-form"

# name: (request line, Host header, where it arrived, reason)
# fmt: off
REFUSED = {
    "CONNECT on transparent path": ("CONNECT a.test:443", None, TRANSPARENT,
                                    "CONNECT is only accepted on the proxy port"),
    "CONNECT without port": ("CONNECT a.test", None, PROXY,
                             "CONNECT target must be host:port"),
    "CONNECT with a path": ("CONNECT /x", None, PROXY,
                            "CONNECT target must be host:port"),
    "CONNECT with a URI": ("CONNECT http://a.test:80", None, PROXY,
                           "CONNECT target must be host:port"),
    "CONNECT IPv6 without port": ("CONNECT [::1]", None, PROXY,
                                  "CONNECT target must be host:port"),
    "port 0": ("CONNECT a.test:0", None, PROXY, OUT_OF_RANGE.format("0")),
    "port 65536": ("CONNECT a.test:65536", None, PROXY, OUT_OF_RANGE.format("65536")),
    "port of 6 digits": ("CONNECT a.test:000443", None, PROXY, OUT_OF_RANGE.format("000443")),
    "port of 5000 digits": ("CONNECT a.test:" + "9" * 5000, None, PROXY,
                            OUT_OF_RANGE.format("9" * 60 + "...")),
    "port named": ("CONNECT a.test:https", None, PROXY,
                   "non-numeric port 'https' in CONNECT target"),
    "port signed": ("CONNECT a.test:+443", None, PROXY,
                    "non-numeric port '+443' in CONNECT target"),
    "port in Arabic digits": ("CONNECT a.test:\xd9\xa4\xd9\xa4", None, PROXY,
                              "non-numeric port 'Ù¤Ù¤' in CONNECT target"),
    "port empty": ("CONNECT a.test:", None, PROXY, "empty port in CONNECT target"),
    "CONNECT Host mismatch": ("CONNECT a.test:443", "b.test:443", PROXY,
                              MISMATCH.format("b.test:443", "a.test:443")),
    "CONNECT Host port mismatch": ("CONNECT a.test:443", "a.test:8443", PROXY,
                                   MISMATCH.format("a.test:8443", "a.test:443")),
    "two Host headers": ("GET /", ["a.test", "a.test"], TRANSPARENT,
                         "more than one Host header"),
    "two Host headers on CONNECT": ("CONNECT a.test:443", ["a.test", "b.test"], PROXY,
                                    "more than one Host header"),
    "origin-form on proxy": ("GET /x", "a.test", PROXY,
                             "origin-form request on the proxy port (expected CONNECT or a URI)"),
    "origin-form without Host": ("GET /x", None, TRANSPARENT, "missing Host header"),
    "origin-form empty Host": ("GET /x", "", TRANSPARENT, "empty host in Host header"),
    "absolute Host mismatch": ("GET http://a.test/", "b.test", PROXY,
                               MISMATCH.format("b.test", "a.test")),
    "absolute Host port mismatch": ("GET http://a.test/", "a.test:8080", PROXY,
                                    MISMATCH.format("a.test:8080", "a.test")),
    "absolute https, Host port 80": ("GET https://a.test/", "a.test:80", PROXY,
                                     MISMATCH.format("a.test:80", "a.test")),
    "absolute mismatch, transparent": ("GET http://a.test/", "b.test", TRANSPARENT,
                                       MISMATCH.format("b.test", "a.test")),
    "absolute Host subdomain": ("GET http://a.test/", "x.a.test", PROXY,
                                MISMATCH.format("x.a.test", "a.test")),
    "ftp scheme": ("GET ftp://a.test/f", "a.test", PROXY, "scheme 'ftp' is not http or https"),
    "ws scheme": ("GET ws://a.test/", "a.test", PROXY, "scheme 'ws' is not http or https"),
    "userinfo in URI": ("GET http://u:p@a.test/", "a.test", PROXY,
                        "userinfo ('@') in host in request target"),
    "userinfo in Host": ("GET /", "u@a.test", TRANSPARENT,
                         "userinfo ('@') in host in Host header"),
    "userinfo in CONNECT": ("CONNECT evil.test@a.test:443", None, PROXY,
                            "userinfo ('@') in host in CONNECT target"),
    "NUL in URI host": ("GET http://a\x00.test/", None, PROXY,
                        "NUL byte in host in request target"),
    "CR LF in Host": ("GET /", "a.test\r\nX: y", TRANSPARENT, "CR or LF in host in Host header"),
    "space in Host": ("GET /", "a .test", TRANSPARENT, "whitespace in host in Host header"),
    "254-char host": ("GET /", "f" + NAME_253, TRANSPARENT,
                      "invalid host in Host header: host name longer than 253 characters"),
    "64-char label": ("GET /", "a" * 64 + ".test", TRANSPARENT,
                      "invalid host in Host header: label longer than 63 characters in host name"),
    "bad character": ("GET /", "a$.test", TRANSPARENT,
                      "invalid host in Host header: invalid character '$' in host name"),
    "numeric host": ("CONNECT 2130706433:443", None, PROXY,
                     "invalid host in CONNECT target: "
                     "numeric host name that is not a dotted-quad IPv4 address"),
    "raw UTF-8 host": ("GET /", "bücher.test".encode(), TRANSPARENT,
                       "invalid host in Host header: "
                       "non-ASCII host name (IDN must be sent as punycode)"),
    "empty URI host": ("GET http:///x", None, PROXY, "empty host in request target"),
    "empty label": ("GET http://a..test/", None, PROXY,
                    "invalid host in request target: empty label in host name"),
    "IPv6 without brackets": ("GET /", "2001:db8::1", TRANSPARENT,
                              "IPv6 address without brackets in Host header"),
    "bad IPv6": ("CONNECT [2001:db8::g]:443", None, PROXY,
                 "invalid IPv6 address '2001:db8::g' in CONNECT target"),
    "IPv4 in brackets": ("CONNECT [192.0.2.1]:443", None, PROXY,
                         "invalid IPv6 address '192.0.2.1' in CONNECT target"),
    "unclosed bracket": ("CONNECT [::1:443", None, PROXY, "unclosed '[' in CONNECT target"),
    "zone identifier": ("CONNECT [fe80::1%25eth0]:443", None, PROXY,
                        "IPv6 zone identifier in CONNECT target"),
    "junk after bracket": ("CONNECT [::1]x:443", None, PROXY,
                           "unexpected 'x:443' after IPv6 address in CONNECT target"),
    "asterisk-form": ("OPTIONS *", "a.test", TRANSPARENT,
                      "asterisk-form (OPTIONS *) is not supported"),
    "authority-form without CONNECT": ("GET a.test:443", "a.test", PROXY,
                                       "authority-form target is only valid with CONNECT"),
    "fragment": ("GET /x#frag", "a.test", TRANSPARENT, "fragment ('#') in request target"),
    "nonsense target": ("GET foo", "a.test", TRANSPARENT, NOT_A_FORM.format("foo")),
    "empty target": ("GET ", "a.test", TRANSPARENT, NOT_A_FORM.format("")),
    "scheme without authority": ("GET http:/x", "a.test", PROXY, NOT_A_FORM.format("http:/x")),
}
# fmt: on


@pytest.mark.parametrize(("line", "field", "proxy", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_refused(line: str, field: HostField, proxy: bool, reason: str) -> None:
    with pytest.raises(TargetError) as e:
        call(line, field, proxy)
    assert e.value.reason == reason
    assert e.value.status == 400


def test_default_port_must_be_a_port() -> None:
    with pytest.raises(ValueError, match="default_port 0 out of range"):
        request_target(b"GET", b"/", host("a.test"), default_port=0, proxy=False)


def _h11_request(raw: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return event


@pytest.mark.parametrize(
    ("raw", "proxy", "expected"),
    [
        (
            b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
            True,
            RequestTarget("a.test", 443, "authority", None, ""),
        ),
        (
            b"GET http://a.test:8080/x?y HTTP/1.1\r\nHost: A.TEST:8080\r\n\r\n",
            True,
            RequestTarget("a.test", 8080, "absolute", "http", "/x?y"),
        ),
        (
            b"PROPFIND /repo/ HTTP/1.1\r\nHOST: a.test\r\nDepth: 1\r\n\r\n",
            False,
            RequestTarget("a.test", 80, "origin", None, "/repo/"),
        ),
    ],
)
def test_with_heads_parsed_by_h11(raw: bytes, proxy: bool, expected: RequestTarget) -> None:
    event = _h11_request(raw)
    assert request_target(event.method, event.target, event.headers, proxy=proxy) == expected


def test_h11_smuggled_host_mismatch_is_refused() -> None:
    event = _h11_request(b"GET http://a.test/ HTTP/1.1\r\nHost: internal.test\r\n\r\n")
    with pytest.raises(TargetError, match="does not match"):
        request_target(event.method, event.target, event.headers, proxy=True)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (RequestTarget("a.test", 80, "absolute", "http", "/p?q=1"), b"/p?q=1"),
        (RequestTarget("a.test", 80, "origin", None, "/x"), b"/x"),
        (RequestTarget("a.test", 80, "origin", None, "/\xe4"), b"/\xe4"),
    ],
)
def test_rewrite_origin_form(target: RequestTarget, expected: bytes) -> None:
    assert rewrite_origin_form(target) == expected


def test_rewrite_of_absolute_uri_request() -> None:
    parsed = request_target(b"GET", b"http://a.test", [], proxy=True)
    assert rewrite_origin_form(parsed) == b"/"


def test_rewrite_refuses_connect() -> None:
    with pytest.raises(ValueError, match="CONNECT"):
        rewrite_origin_form(RequestTarget("a.test", 443, "authority", None, ""))
