"""Where an HTTP/1 request is going, from a request head h11 has already parsed.

h11 checks the syntax of the head; this module turns method, target and Host into the
host and port a policy decides on, and refuses every ambiguity a smuggler could use to
show the policy one host and the upstream another (RFC 9112 §3.2, RFC 9110 §7.2).

Which request-target forms are accepted where:
- explicit proxy port: CONNECT host:port, or an absolute URI (http://host/path);
- transparent path: origin-form (/path with Host), or an absolute URI, which servers
  must accept (RFC 9112 §3.2.2).
Wherever a Host header is present it must name the same host and port as the target.

`connect_head` is the one parser here that reads raw bytes: a strict recogniser for the
plain CONNECT heads proxy clients send, so that a tunnel does not need a full h11
connection. It accepts a subset of what h11 accepts and says None to everything else,
which then goes through h11 (and its refusals) as before.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address

from corridor.gateway.names import hostname_problem

MIN_PORT = 1  # port 0 cannot be dialled
MAX_PORT = 65535
_MAX_PORT_DIGITS = len(str(MAX_PORT))  # longer digit strings are refused before int()
SCHEME_PORTS = {"http": 80, "https": 443}  # the only schemes an HTTP proxy forwards
BAD_REQUEST = 400
_SHOW = 60  # characters of client-supplied text quoted in a reason; keeps log lines short
# Authorities parsed, remembered (a pure function of the text): a session connects to the
# same few hosts over and over. Refusals raise and are not remembered.
_AUTHORITY_CACHE = 4096
# RFC 3986 §3.1 scheme, then "://": an absolute URI with an authority.
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")

# A CONNECT head as clients send it: the request line, token: value header lines (no
# obs-fold, visible ASCII), an empty line. Targets are limited to the characters of
# host:port and [v6]:port; anything else is left to h11.
_CONNECT_LINE = re.compile(rb"CONNECT ([A-Za-z0-9._:\[\]-]{1,300}) HTTP/1\.1")
_HEADER_LINE = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}):[ \t]*([\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)[ \t]*"
)
# Headers that give a CONNECT request a body or change its framing: h11 decides on those.
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})

FORM_AUTHORITY = "authority"
FORM_ABSOLUTE = "absolute"
FORM_ORIGIN = "origin"


class TargetError(Exception):
    """The request does not name one clear destination; answer `status` with `reason`."""

    def __init__(self, reason: str, status: int = BAD_REQUEST):
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class RequestTarget:
    host: str  # as given (not normalised), no brackets for IPv6
    port: int
    form: str  # FORM_AUTHORITY (CONNECT), FORM_ABSOLUTE or FORM_ORIGIN
    scheme: str | None  # "http"/"https" (lowercase) for absolute-form, else None
    path: str  # path+query for absolute/origin (latin-1, as sent); "" for authority


@dataclass(frozen=True, slots=True)
class ConnectHead:
    """A CONNECT request head, parsed as h11 would: header names lower-cased."""

    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    rest: bytes  # bytes the client sent after the head (the tunnel's first bytes)


def connect_head(data: bytes, max_head: int) -> ConnectHead | None:
    """The CONNECT head at the start of `data`, or None when h11 must judge it.

    None unless `data` holds a whole head of at most `max_head` bytes with CRLF line
    ends: `CONNECT <host:port> HTTP/1.1`, header lines `token: value` of visible ASCII,
    exactly one Host header and no Content-Length or Transfer-Encoding. What it accepts,
    h11 parses to the same target and headers; the target itself is checked afterwards
    by `request_target`, as on the h11 path.
    """
    end = data.find(b"\r\n\r\n", 0, max_head + 1)
    if end < 0 or end + 4 > max_head:
        return None
    lines = data[:end].split(b"\r\n")
    line = _CONNECT_LINE.fullmatch(lines[0])
    if line is None:
        return None
    headers = []
    hosts = 0
    for raw in lines[1:]:
        header = _HEADER_LINE.fullmatch(raw)
        if header is None:
            return None
        name = header.group(1).lower()
        if name in _BODY_HEADERS:
            return None
        hosts += name == b"host"
        headers.append((name, header.group(2)))
    if hosts != 1:
        return None
    return ConnectHead(line.group(1), tuple(headers), data[end + 4 :])


def request_target(
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    default_port: int = 80,
    proxy: bool,
) -> RequestTarget:
    """Host, port and path of a request, or TargetError.

    `headers` are (name, value) pairs as h11 gives them. `proxy` is True when the request
    came to the explicit proxy port. `default_port` is the port of an origin-form request
    whose Host names none (on the transparent path: the port the client dialled).
    Checks, in order: at most one Host header; then by form, CONNECT (proxy port only,
    host:port), absolute URI (http or https, no userinfo, Host agrees), origin-form
    (transparent path only, Host present); the first failure is the reason.
    """
    if not MIN_PORT <= default_port <= MAX_PORT:
        raise ValueError(f"default_port {default_port} out of range")
    host_header = _host_header(headers)
    text = target.decode("latin-1")  # lossless: every byte maps to one character
    if "#" in text:
        raise TargetError("fragment ('#') in request target")
    if method == b"CONNECT":
        return _authority_form(text, host_header, proxy=proxy)
    if text.startswith("/"):
        return _origin_form(text, host_header, default_port, proxy=proxy)
    match = _ABSOLUTE.match(text)
    if match:
        return _absolute_form(text, match, host_header)
    if text == "*":
        raise TargetError("asterisk-form (OPTIONS *) is not supported")
    if "/" not in text and ":" in text:
        raise TargetError("authority-form target is only valid with CONNECT")
    raise TargetError(f"request target {_show(text)} is not origin-, absolute- or authority-form")


def rewrite_origin_form(target: RequestTarget) -> bytes:
    """The origin-form request target to send upstream (path and query, as received)."""
    if target.form == FORM_AUTHORITY:
        raise ValueError("a CONNECT request has no origin-form target")
    return target.path.encode("latin-1")


def _authority_form(text: str, host_header: str | None, *, proxy: bool) -> RequestTarget:
    if not proxy:
        raise TargetError("CONNECT is only accepted on the proxy port")
    if "/" in text:
        raise TargetError("CONNECT target must be host:port")
    host, port = _parse_authority(text, "CONNECT target")
    if port is None:
        raise TargetError("CONNECT target must be host:port")
    if host_header is not None:
        # RFC 9110 §9.3.6 has the client send Host = the target; a different one is a lie.
        h_host, h_port = _parse_authority(host_header, "Host header")
        if not _same_host(host, h_host) or (h_port is not None and h_port != port):
            raise TargetError(
                f"Host header {_show(host_header)} does not match request target {_show(text)}"
            )
    return RequestTarget(host, port, FORM_AUTHORITY, None, "")


def _absolute_form(text: str, match: re.Match[str], host_header: str | None) -> RequestTarget:
    scheme = match.group(1).lower()
    if scheme not in SCHEME_PORTS:
        raise TargetError(f"scheme {_show(scheme)} is not http or https")
    rest = text[match.end() :]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    host, port = _parse_authority(authority, "request target")
    port = SCHEME_PORTS[scheme] if port is None else port
    if host_header is not None:
        h_host, h_port = _parse_authority(host_header, "Host header")
        if not _same_host(host, h_host) or (h_port or SCHEME_PORTS[scheme]) != port:
            raise TargetError(
                f"Host header {_show(host_header)} does not match request target {_show(authority)}"
            )
    if not path.startswith("/"):
        path = "/" + path  # "http://h" and "http://h?q" mean "/" and "/?q" (RFC 9112 §3.2.1)
    return RequestTarget(host, port, FORM_ABSOLUTE, scheme, path)


def _origin_form(
    text: str, host_header: str | None, default_port: int, *, proxy: bool
) -> RequestTarget:
    if proxy:
        raise TargetError("origin-form request on the proxy port (expected CONNECT or a URI)")
    if host_header is None:
        raise TargetError("missing Host header")
    host, port = _parse_authority(host_header, "Host header")
    return RequestTarget(host, default_port if port is None else port, FORM_ORIGIN, None, text)


def _host_header(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    values = [value for name, value in headers if name.lower() == b"host"]
    if len(values) > 1:
        raise TargetError("more than one Host header")  # RFC 9112 §3.2: MUST get a 400
    return values[0].decode("latin-1") if values else None


@functools.lru_cache(maxsize=_AUTHORITY_CACHE)
def _parse_authority(text: str, where: str) -> tuple[str, int | None]:
    # host[:port] or [v6]:port, as in a CONNECT target, URI authority or Host header.
    if not text:
        raise TargetError(f"empty host in {where}")
    if "\x00" in text:
        raise TargetError(f"NUL byte in host in {where}")
    if "\r" in text or "\n" in text:
        raise TargetError(f"CR or LF in host in {where}")
    if any(c.isspace() for c in text):
        raise TargetError(f"whitespace in host in {where}")
    if "@" in text:
        raise TargetError(f"userinfo ('@') in host in {where}")
    if text.startswith("["):
        return _parse_bracketed(text, where)
    if text.count(":") > 1:
        raise TargetError(f"IPv6 address without brackets in {where}")
    host, colon, port_text = text.partition(":")
    problem = hostname_problem(host)
    if problem is not None:
        raise TargetError(f"invalid host in {where}: {problem}")
    return host, _parse_port(port_text, where) if colon else None


def _parse_bracketed(text: str, where: str) -> tuple[str, int | None]:
    end = text.find("]")
    if end < 0:
        raise TargetError(f"unclosed '[' in {where}")
    literal, after = text[1:end], text[end + 1 :]
    if "%" in literal:
        raise TargetError(f"IPv6 zone identifier in {where}")  # link-local scope: not a host
    try:
        IPv6Address(literal)
    except ValueError:
        raise TargetError(f"invalid IPv6 address {_show(literal)} in {where}") from None
    if not after:
        return literal, None
    if not after.startswith(":"):
        raise TargetError(f"unexpected {_show(after)} after IPv6 address in {where}")
    return literal, _parse_port(after[1:], where)


def _parse_port(text: str, where: str) -> int:
    if not text:
        raise TargetError(f"empty port in {where}")
    if not (text.isascii() and text.isdigit()):
        raise TargetError(f"non-numeric port {_show(text)} in {where}")
    port = int(text) if len(text) <= _MAX_PORT_DIGITS else MAX_PORT + 1
    if not MIN_PORT <= port <= MAX_PORT:
        raise TargetError(f"port {_show(text)} out of range ({MIN_PORT}-{MAX_PORT}) in {where}")
    return port


def _same_host(a: str, b: str) -> bool:
    # Case and one trailing dot do not matter; addresses compare as addresses ("::1" = "0::1").
    a, b = a.lower().removesuffix("."), b.lower().removesuffix(".")
    if a == b:
        return True
    try:
        return ip_address(a) == ip_address(b)
    except ValueError:
        return False


def _show(text: str) -> str:
    # Quoted with escapes (no control characters reach the log), and cut to a sane length.
    return repr(text[:_SHOW] + ("..." if len(text) > _SHOW else ""))
