"""Helpers for escape attempts, run INSIDE the sandbox (standard library only).

Every attempt prints one line per try: `BLOCKED <what>` when the way out was closed, or
`ESCAPED <what>` when something got through. The test outside asserts at least one
BLOCKED, no ESCAPED, and that the world saw nothing.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct

PROXY = ("127.0.0.1", 3128)
TIMEOUT = 4.0


def blocked(what: str) -> None:
    print(f"BLOCKED {what}", flush=True)


def escaped(what: str) -> None:
    print(f"ESCAPED {what}", flush=True)


def verdict(ok: bool, what: str) -> None:
    """`ok` True means the attempt got through."""
    (escaped if ok else blocked)(what)


def tcp_exchange(host: str, port: int, send: bytes = b"", family: int = 0) -> bytes | None:
    """Connect, send, read what comes back until close; None when the connect fails or
    the connection is reset before any answer."""
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except OSError:
        return None
    for fam, kind, proto, _canon, addr in infos:
        try:
            with socket.socket(fam, kind, proto) as s:
                s.settimeout(TIMEOUT)
                s.connect(addr)
                if send:
                    s.sendall(send)
                return _read_all(s)
        except OSError:
            continue
    return None


def _read_all(s: socket.socket) -> bytes | None:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    except OSError:
        return data or None
    return data


def http_get(host: str, port: int = 80, target: str = "/", host_header: str | None = None) -> bytes:
    """An origin-form GET straight to host:port (the transparent path)."""
    head = f"GET {target} HTTP/1.1\r\nHost: {host_header or host}\r\nConnection: close\r\n\r\n"
    return tcp_exchange(host, port, head.encode()) or b""


def via_proxy(raw: bytes) -> bytes:
    """Raw bytes to the explicit proxy; what it answers until it closes."""
    return tcp_exchange(*PROXY, raw) or b""


def status_of(response: bytes) -> int | None:
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def proxy_get(url: str, host_header: str | None = None) -> int | None:
    """GET an absolute URL through the proxy; the status code (None: no HTTP answer)."""
    authority = url.split("://", 1)[1].split("/", 1)[0]
    head = f"GET {url} HTTP/1.1\r\nHost: {host_header or authority}\r\nConnection: close\r\n\r\n"
    return status_of(via_proxy(head.encode()))


def proxy_connect(target: str) -> int | None:
    """CONNECT through the proxy; the status code."""
    raw = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    with socket.create_connection(PROXY, timeout=TIMEOUT) as s:
        s.sendall(raw)
        try:
            return status_of(s.recv(4096))
        except OSError:
            return None


def tls_handshake(
    host: str, port: int, server_name: str | None, family: int = 0, cafile: str = "lab-ca.pem"
) -> bool:
    """Whether a TLS handshake to host:port with this SNI completes (certificate checked)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = server_name is not None
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except OSError:
        return False
    fam, kind, proto, _canon, addr = infos[0]
    try:
        with socket.socket(fam, kind, proto) as raw:
            raw.settimeout(TIMEOUT)
            raw.connect(addr)
            with ctx.wrap_socket(raw, server_hostname=server_name):
                return True
    except (OSError, ssl.SSLError):
        return False


# ---- DNS by hand (no resolver library inside the sandbox) --------------------------

QTYPES = {"A": 1, "AAAA": 28, "TXT": 16, "ANY": 255}


def dns_query_wire(name: str, qtype: str = "A") -> bytes:
    header = struct.pack("!HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    labels = b"".join(
        bytes([len(part)]) + part.encode() for part in name.rstrip(".").split(".") if part
    )
    return header + labels + b"\0" + struct.pack("!HH", QTYPES[qtype], 1)


def dns_rcode(server: str, name: str, qtype: str = "A", tcp: bool = False, port: int = 53):
    """The response code of a query sent straight to `server` (None: no answer)."""
    wire = dns_query_wire(name, qtype)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    try:
        if tcp:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(TIMEOUT)
                s.connect((server, port))
                s.sendall(struct.pack("!H", len(wire)) + wire)
                reply = _read_all(s) or b""
                reply = reply[2:]
        else:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(2.0)
                s.sendto(wire, (server, port))
                reply = s.recv(65535)
    except OSError:
        return None
    return reply[3] & 0x0F if len(reply) >= 4 else None


NXDOMAIN = 3


def resolves(name: str) -> bool:
    try:
        socket.getaddrinfo(name, 80, 0, socket.SOCK_STREAM)
    except OSError:
        return False
    return True


def env_secret_names() -> list[str]:
    return [k for k in os.environ if "SECRET" in k or "TOKEN" in k or k.endswith("_KEY")]
