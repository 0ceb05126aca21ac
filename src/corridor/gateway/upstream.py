"""Resolving and dialing upstream: resolve once, dial exactly what was resolved."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

RESOLVE_TIMEOUT_S = 5.0  # a resolver slower than this is treated as failing
CONNECT_TIMEOUT_S = 10.0  # per address; a dead upstream must not hold a client forever
CACHE_TTL_S = 30.0  # short: long enough for a burst of connects, short enough to follow changes


class UpstreamError(Exception):
    """The destination was allowed but could not be reached; `reason` goes in the event."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Resolved:
    host: str
    addresses: tuple[IPAddress, ...]


class Resolver:
    """The host's resolver (getaddrinfo), with a small per-session cache."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, Resolved]] = {}

    async def resolve(self, host: str) -> Resolved:
        literal = _ip_literal(host)
        if literal is not None:
            return Resolved(host, (literal,))
        now = time.monotonic()
        hit = self._cache.get(host)
        if hit and hit[0] > now:
            return hit[1]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
            )
        except (socket.gaierror, TimeoutError, UnicodeError) as e:
            raise UpstreamError(
                f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}"
            ) from None
        addrs: list[IPAddress] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            addr = ipaddress.ip_address(sockaddr[0])
            if addr not in addrs:
                addrs.append(addr)
        resolved = Resolved(host, tuple(addrs))
        self._cache[host] = (now + CACHE_TTL_S, resolved)
        return resolved


async def dial(
    addresses: tuple[IPAddress, ...], port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, IPAddress]:
    """Connect to the first address that answers; never looks the name up again."""
    last = "no address"
    for addr in addresses:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(str(addr), port, limit=RELAY_LIMIT), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else "timed out"
            last = f"{addr}:{port}: {why}"
            continue
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer, addr
    raise UpstreamError(f"cannot connect: {last}")


RELAY_LIMIT = 256 * 1024  # stream buffer: large reads keep bulk transfers cheap


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
