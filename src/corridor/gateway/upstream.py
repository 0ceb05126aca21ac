"""Resolving and dialing upstream: resolve once, dial exactly what was resolved.

The gateway resolves a name once (cached briefly), checks every address it got
(gateway/addresses.py) and dials only the addresses that passed, by number: there is no
second lookup between the check and the connect that DNS rebinding could slip into.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from corridor.gateway.limits import READ_LIMIT
from corridor.gateway.upstream_tls import tls_failure_reason

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

RESOLVE_TIMEOUT_S = 5.0  # a resolver slower than this is treated as failing
CONNECT_TIMEOUT_S = 10.0  # per address; a dead upstream must not hold a client forever
CACHE_TTL_S = 30.0  # short: long enough for a burst of connects, short enough to follow changes
# Names kept in the cache; a wildcard rule lets the agent mint endless names, so the
# cache forgets the oldest beyond this (the same bound as the synthetic address map).
MAX_CACHE_NAMES = 65_536
# Any port does for the route lookup in is_own_address: a UDP connect sends nothing.
_PROBE_PORT = 9

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class UpstreamError(Exception):
    """The destination was allowed but could not be reached; `reason` goes in the event."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UpstreamTLSError(UpstreamError):
    """The upstream's TLS handshake failed (e.g. its certificate was rejected): a denial."""


@dataclass(frozen=True, slots=True)
class Resolved:
    host: str
    addresses: tuple[IPAddress, ...]


class TtlCache(Generic[K, V]):
    """A dict whose entries expire after `ttl` seconds and which holds at most `size`.

    Beyond `size`, expired entries go first, then the oldest (insertion order is age
    order: a stored key is re-inserted last). Used for answers that may change but not
    within seconds: names, the machine's own addresses, address checks.
    """

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K, now: float) -> V | None:
        """The value stored for `key`, or None when there is none or it expired."""
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        return None

    def put(self, key: K, value: V, now: float) -> None:
        entries = self._entries
        entries.pop(key, None)
        if len(entries) >= self.size:
            for old in [k for k, (expiry, _) in entries.items() if expiry <= now]:
                del entries[old]
            while len(entries) >= self.size:
                del entries[next(iter(entries))]
        entries[key] = (now + self.ttl, value)

    def __len__(self) -> int:
        return len(self._entries)


class Resolver:
    """The host's resolver (getaddrinfo), with a small per-session cache."""

    def __init__(self) -> None:
        self._cache: TtlCache[str, Resolved] = TtlCache(CACHE_TTL_S, MAX_CACHE_NAMES)

    async def resolve(self, host: str) -> Resolved:
        now = time.monotonic()
        hit = self._cache.get(host, now)  # names only: a literal is never stored
        if hit is not None:
            return hit
        literal = _ip_literal(host)
        if literal is not None:
            return Resolved(host, (literal,))
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
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
        self._cache.put(host, resolved, now)
        return resolved


def is_own_address(address: IPAddress) -> bool:
    """Whether `address` belongs to this machine (any interface), without sending a packet.

    A UDP connect only looks the route up; for a local address the kernel picks the
    address itself as the source (RFC 6724 rule 1 for IPv6).
    """
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((str(address), _PROBE_PORT))
            source = probe.getsockname()[0]
        except OSError:
            return False  # no route at all: not ours, and not reachable either
    return ipaddress.ip_address(source.split("%", 1)[0]) == address


async def dial(
    addresses: tuple[IPAddress, ...],
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, IPAddress]:
    """Connect to the first address that answers; never looks the name up again.

    With `tls`, the connection is TLS to `server_hostname`, verified by that context; a
    failed handshake raises UpstreamTLSError at once (another address of the same name is
    not tried: a certificate problem is the name's, not one address's).
    """
    last = "no address"
    for addr in addresses:
        try:
            # asyncio.timeout, not wait_for: no task per dial (Python 3.11).
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(
                    str(addr),
                    port,
                    limit=READ_LIMIT,
                    ssl=tls,
                    server_hostname=server_hostname if tls is not None else None,
                )
        except ssl.SSLError as e:
            raise UpstreamTLSError(tls_failure_reason(e, server_hostname or str(addr))) from None
        except (OSError, TimeoutError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else "timed out"
            last = f"{addr}:{port}: {why}"
            continue
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer, addr
    raise UpstreamError(f"cannot connect: {last}")


async def dial_protocol(
    addresses: tuple[IPAddress, ...], port: int, protocol: asyncio.Protocol
) -> tuple[asyncio.Transport, IPAddress]:
    """`dial` for a caller that handles the bytes itself: plain TCP to the first address
    that answers, with `protocol` as the connection's protocol (relay.Tunnel's)."""
    loop = asyncio.get_running_loop()
    last = "no address"
    for addr in addresses:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                transport, _ = await loop.create_connection(lambda: protocol, str(addr), port)
        except (OSError, TimeoutError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else "timed out"
            last = f"{addr}:{port}: {why}"
            continue
        return transport, addr  # asyncio's TCP transports set TCP_NODELAY themselves
    raise UpstreamError(f"cannot connect: {last}")


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
