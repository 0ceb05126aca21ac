"""What protocol a sandbox connection speaks, from its first bytes.

The gateway peeks at what the client sends first (clients of TLS and HTTP/1 always speak
first) and picks the parser that can name the destination: TLS -> SNI, HTTP -> Host or
the request target. Everything else is opaque TCP, named by the synthetic address it was
dialled at.
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    NEED_MORE = "need_more"  # the bytes so far could still become TLS or HTTP
    TLS = "tls"
    HTTP = "http"
    OTHER = "other"


# TLS record header: content type handshake (22), then the record-layer version: 0x0300
# (SSL 3.0) up to 0x0304. Clients put 0x0301 there; the range is what any stack may send.
TLS_HANDSHAKE = 0x16
TLS_MAJOR = 0x03
TLS_MAX_MINOR = 0x04

# Methods are case-sensitive tokens (RFC 9110 §9.1). Beyond RFC 9110 and PATCH (RFC 5789):
# WebDAV (RFC 4918), which git's dumb-HTTP push speaks, and the DeltaV subset
# (RFC 3253) that Subversion over HTTP sends, plus SEARCH (RFC 5323).
HTTP_METHODS = frozenset(
    {
        b"GET",
        b"HEAD",
        b"POST",
        b"PUT",
        b"DELETE",
        b"OPTIONS",
        b"PATCH",
        b"TRACE",
        b"CONNECT",
        b"PROPFIND",
        b"PROPPATCH",
        b"MKCOL",
        b"COPY",
        b"MOVE",
        b"LOCK",
        b"UNLOCK",
        b"REPORT",
        b"MKACTIVITY",
        b"CHECKOUT",
        b"MERGE",
        b"SEARCH",
    }
)
_HTTP_PREFIXES = tuple(sorted(method + b" " for method in HTTP_METHODS))
_TLS_PREFIX = bytes([TLS_HANDSHAKE, TLS_MAJOR])

# Once this many bytes have arrived, classify() never answers NEED_MORE: the longest
# method plus its space (and more than a TLS record header's first three bytes).
SNIFF_BYTES = max(len(prefix) for prefix in _HTTP_PREFIXES)


def classify(first: bytes) -> Kind:
    """Classify a connection by the bytes it has sent so far.

    TLS: a handshake record header (0x16 0x03 0x00-0x04). HTTP: a known method followed by
    a space. NEED_MORE while the bytes are still a prefix of either; OTHER otherwise. At
    most SNIFF_BYTES are looked at.
    """
    if len(first) >= 3:
        if first[:2] == _TLS_PREFIX and first[2] <= TLS_MAX_MINOR:
            return Kind.TLS
    elif _TLS_PREFIX.startswith(first):
        return Kind.NEED_MORE
    head = first[:SNIFF_BYTES]
    for prefix in _HTTP_PREFIXES:
        if head.startswith(prefix):
            return Kind.HTTP
    if any(prefix.startswith(head) for prefix in _HTTP_PREFIXES):
        return Kind.NEED_MORE
    return Kind.OTHER
