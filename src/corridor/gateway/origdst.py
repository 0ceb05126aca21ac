"""Reading where a redirected connection was going (the I/O edge of the transparent path)."""

from __future__ import annotations

import ipaddress
import socket
import struct

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value


def original_destination(
    sock: socket.socket,
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """(address, port) the client connected to before nft redirected it, or None when
    the connection was not redirected.

    The listener is dual-stack, so IPv4 clients appear as v4-mapped peers; their NAT
    record is IPv4 and must be asked for with SOL_IP.
    """
    peer = sock.getpeername()
    mapped = peer[0].startswith("::ffff:") if sock.family == socket.AF_INET6 else True
    try:
        if mapped:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, addr = struct.unpack("!2xH4s8x", raw)
            found: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] = (
                ipaddress.IPv4Address(addr),
                port,
            )
        else:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port = struct.unpack("!H", raw[2:4])[0]
            found = (ipaddress.IPv6Address(raw[8:24]), port)
    except OSError:
        return None  # no connection tracking entry: not redirected
    # Conntrack knows every connection; one that was not redirected "originally" went to
    # the listener itself (the agent connected to it directly): nothing to forward to.
    local = sock.getsockname()
    here = ipaddress.ip_address(local[0].split("%", 1)[0])
    if isinstance(here, ipaddress.IPv6Address) and here.ipv4_mapped is not None:
        here = here.ipv4_mapped
    if found == (here, local[1]):
        return None
    return found
