"""Listening sockets on loopback in place of the ones a sandbox hands the gateway."""

from __future__ import annotations

import socket

LOOP = "127.0.0.1"


def loopback_listeners() -> dict[str, socket.socket]:
    """The gateway's four listeners (transparent, proxy, DNS over UDP and TCP), bound to
    free loopback ports and non-blocking, as `Gateway.start` takes them."""
    socks = {
        "transparent": socket.create_server((LOOP, 0)),
        "proxy": socket.create_server((LOOP, 0)),
        "dns_udp": socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        "dns_tcp": socket.create_server((LOOP, 0)),
    }
    socks["dns_udp"].bind((LOOP, 0))
    for s in socks.values():
        s.setblocking(False)
    return socks
