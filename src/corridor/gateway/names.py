"""Host names: the one grammar every parser checks, and the session's synthetic address map.

The sandbox learns addresses only from the gateway's DNS. Each allowed name is answered with
an address from a reserved range that is handed out once per name, so when a connection
later arrives for that address the gateway knows exactly which name it was for, even for
protocols that never say (plain TCP, SSH, database wire protocols). The gateway itself dials
the real addresses it resolved; the synthetic ones never leave this process.
"""

from __future__ import annotations

import socket
import string
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

IPAddress = IPv4Address | IPv6Address

MAX_NAME_LENGTH = 253  # RFC 1035 §2.3.4: 255 octets on the wire = 253 characters of text
MAX_LABEL_LENGTH = 63  # RFC 1035 §2.3.4
# LDH (RFC 1123 §2.1) plus '_', which real names carry (_dmarc, some CDN and S3 hosts).
_LABEL_CHARS = frozenset(string.ascii_letters + string.digits + "-_")
_HEX_DIGITS = frozenset(string.hexdigits)

# RFC 2544 benchmarking range: never routed on the internet, so a synthetic address cannot
# collide with a real destination the sandbox might be told about.
DEFAULT_V4_NET = IPv4Network("198.18.0.0/15")
# A ULA /64 whose interface-id half spells 'cor' 'rido' in hex (fd63:6f72:7269:646f::/64).
DEFAULT_V6_NET = IPv6Network("fd63:6f72:7269:646f::/64")
# Per family. An entry costs a few hundred bytes in two dicts; this bounds memory when a
# wildcard rule lets the agent mint endless allowed names (a.x.test, b.x.test, ...).
MAX_NAMES = 65_536


def hostname_problem(name: str) -> str | None:
    """Why `name` is not an acceptable host name, or None when it is.

    Accepted: labels of letters, digits, '-' and '_', 1-63 characters each, at most 253
    characters without the one optional trailing dot; and dotted-quad IPv4 literals. Refused:
    control characters and whitespace, non-ASCII (an IDN must arrive as punycode), and numeric
    forms the C resolver would read as an address ('127.1', '0x7f000001', '2130706433'), so a
    name can never smuggle an address past a name rule. The checks run in this order and the
    first failure is the reason.
    """
    if not name:
        return "empty host name"
    if "\x00" in name:
        return "NUL byte in host name"
    if "\r" in name or "\n" in name:
        return "CR or LF in host name"
    if any(c.isspace() for c in name):
        return "whitespace in host name"
    if not name.isascii():
        return "non-ASCII host name (IDN must be sent as punycode)"
    bare = name[:-1] if name.endswith(".") else name
    if not bare:
        return "empty host name"
    if len(bare) > MAX_NAME_LENGTH:
        return f"host name longer than {MAX_NAME_LENGTH} characters"
    labels = bare.split(".")
    for label in labels:
        if not label:
            return "empty label in host name"
        if len(label) > MAX_LABEL_LENGTH:
            return f"label longer than {MAX_LABEL_LENGTH} characters in host name"
        bad = next((c for c in label if c not in _LABEL_CHARS), None)
        if bad is not None:
            return f"invalid character {bad!r} in host name"
    if _looks_numeric(labels[-1]) and not _is_dotted_quad(name):
        return "numeric host name that is not a dotted-quad IPv4 address"
    return None


def _looks_numeric(label: str) -> bool:
    # WHATWG URL "ends in a number": such a host is an address to every resolver, never a name.
    if label.isdigit():
        return True
    return label[:2].lower() == "0x" and all(c in _HEX_DIGITS for c in label[2:])


def _is_dotted_quad(name: str) -> bool:
    # ipaddress is strict (no octal leading zeros, exactly four parts, no trailing dot).
    try:
        IPv4Address(name)
    except ValueError:
        return False
    return True


def normalise_name(name: str) -> str:
    """The form names are compared and stored in: lowercase, without the trailing dot."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


class NameMapFull(Exception):
    """No synthetic address is left for a new name; the DNS query should fail (SERVFAIL)."""


@dataclass(slots=True)
class _Pool:
    net: IPv4Network | IPv6Network
    first: int  # offsets into net that may be handed out, inclusive
    last: int
    next: int
    by_name: dict[str, IPAddress] = field(default_factory=dict)
    by_address: dict[IPAddress, str] = field(default_factory=dict)


class NameMap:
    """Name <-> synthetic address, one per name and family, stable for the session."""

    def __init__(
        self,
        v4_net: IPv4Network = DEFAULT_V4_NET,
        v6_net: IPv6Network = DEFAULT_V6_NET,
        *,
        max_names: int = MAX_NAMES,
    ) -> None:
        if not isinstance(v4_net, IPv4Network) or not isinstance(v6_net, IPv6Network):
            raise TypeError("v4_net must be an IPv4Network and v6_net an IPv6Network")
        self._max_names = max_names
        size4, size6 = v4_net.num_addresses, v6_net.num_addresses
        self._pools = {
            # Skip the network and broadcast addresses: some stacks refuse to connect to them.
            socket.AF_INET: _Pool(v4_net, first=1, last=size4 - 2, next=1),
            # Skip offset 0, the subnet-router anycast address (RFC 4291 §2.6.1).
            socket.AF_INET6: _Pool(v6_net, first=1, last=size6 - 1, next=1),
        }

    def address_for(self, name: str, family: int) -> IPAddress:
        """The synthetic address of `name` for `family` (AF_INET or AF_INET6).

        The same name (compared case-insensitively, trailing dot ignored) always gets the
        same address; new names get the next free one. Raises ValueError for a name that is
        not a host name or an unknown family, and NameMapFull when no address is left.
        """
        pool = self._pool(family)
        problem = hostname_problem(name)
        if problem is not None:
            raise ValueError(problem)
        key = normalise_name(name)
        known = pool.by_name.get(key)
        if known is not None:
            return known
        if pool.next > pool.last:
            raise NameMapFull(f"no synthetic address left in {pool.net}")
        if len(pool.by_name) >= self._max_names:
            raise NameMapFull(f"more than {self._max_names} names in this session")
        address = pool.net.network_address + pool.next
        pool.next += 1
        pool.by_name[key] = address
        pool.by_address[address] = key
        return address

    def name_for(self, address: IPAddress | str) -> str | None:
        """The (normalised) name a synthetic address was handed out for, or None."""
        addr = _unmapped(address)
        pool = self._pools[socket.AF_INET if addr.version == 4 else socket.AF_INET6]
        return pool.by_address.get(addr)

    def is_synthetic(self, address: IPAddress | str) -> bool:
        """Whether `address` lies in a synthetic range (handed out or not)."""
        addr = _unmapped(address)
        return any(
            addr in pool.net for pool in self._pools.values() if pool.net.version == addr.version
        )

    def _pool(self, family: int) -> _Pool:
        pool = self._pools.get(family)
        if pool is None:
            raise ValueError(f"unknown address family {family}")
        return pool


def _unmapped(address: IPAddress | str) -> IPAddress:
    # A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; they are still IPv4.
    addr = ip_address(address) if isinstance(address, str) else address
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr
