"""Which upstream addresses the gateway may dial: pure classification, no I/O.

A name the policy allows can still resolve to somewhere the agent must never reach: the
host's loopback services, the cloud metadata endpoint, the office network, or this very
machine. So every address is classified before it is dialled, and anything that is not
a public unicast address is refused unless the user named its range:

- a `cidr` allow rule that holds the address, on the port, and lies inside the
  special-use block the address belongs to (so a broad `0.0.0.0/0` never opens loopback
  or metadata: only a rule that names `10.0.0.0/8`, `10.1.2.3/32`, ... opens a private
  address). Such a rule also lets the agent connect to the range by address;
- an *unsafe range* (`corridor run --unsafe-allow-private CIDR`), with the same "inside
  the block" condition, which only lets allowed *names* resolve into the range: the
  agent still cannot connect to those addresses by number. That is the exception for an
  internal service reached by name, without handing the agent the whole subnet.

Some classes no rule opens: the unspecified address (a connect to 0.0.0.0 or :: reaches
this host), multicast and broadcast (never a TCP peer).

IPv4 inside IPv6 (mapped ::ffff:0:0/96, NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo
2001::/32) is judged as the IPv4 address it carries: 64:ff9b::a9fe:a9fe is the metadata
address, however it is spelled.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import TYPE_CHECKING

from corridor.policy.constants import DEFAULT_ALLOW_PORTS
from corridor.policy.decide import Decision

if TYPE_CHECKING:
    from corridor.policy.compiled import CompiledPolicy
    from corridor.policy.model import Policy

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Reasons of the address check that are not about one address (those come from the class).
PUBLIC = "public address"
ALLOWED_INTERNAL = "internal address allowed by rule"
ALLOWED_UNSAFE = "internal address allowed by --unsafe-allow-private"
DENIED_BY_RULE = "denied by rule"


class AddressClass(enum.Enum):
    """What kind of address a destination is; the value is the stable slug for logs."""

    PUBLIC = "public"
    UNSPECIFIED = "unspecified"
    THIS_HOST = "this-host"
    LOOPBACK = "loopback"
    METADATA = "cloud-metadata"
    LINK_LOCAL = "link-local"
    PRIVATE = "private"
    CGNAT = "cgnat"
    UNIQUE_LOCAL = "unique-local"
    SITE_LOCAL = "site-local"
    MULTICAST = "multicast"
    BROADCAST = "broadcast"
    DOCUMENTATION = "documentation"
    BENCHMARK = "benchmark"
    RESERVED = "reserved"


@dataclass(frozen=True, slots=True)
class Block:
    """One special-use range: its class and the words a log reader sees."""

    network: IPNetwork
    cls: AddressClass
    label: str


def _b(net: str, cls: AddressClass, label: str) -> Block:
    return Block(ip_network(net), cls, label)


C = AddressClass
# No rule or unsafe range opens these: connecting to the unspecified address reaches this
# host's own services, and multicast or broadcast addresses are never a TCP peer.
NEVER_ALLOWED = frozenset({C.UNSPECIFIED, C.MULTICAST, C.BROADCAST})
# Ordered: the first block holding an address decides, so narrow entries (the metadata
# addresses) come before the ranges around them. Sources: the IANA IPv4 and IPv6
# Special-Purpose Address Registries (RFC 6890 and its updates) and cloud providers' docs.
# fmt: off
IPV4_BLOCKS: tuple[Block, ...] = (
    _b("0.0.0.0/32", C.UNSPECIFIED, "the unspecified address"),
    _b("0.0.0.0/8", C.RESERVED, "a 'this network' address (RFC 1122)"),
    _b("127.0.0.0/8", C.LOOPBACK, "a loopback address"),
    # AWS, GCP, Azure, Oracle, DigitalOcean instance metadata (and credentials).
    _b("169.254.169.254/32", C.METADATA, "the cloud metadata address"),
    _b("169.254.170.2/32", C.METADATA, "the AWS ECS task metadata address"),
    _b("169.254.0.0/16", C.LINK_LOCAL, "a link-local address"),
    _b("100.100.100.200/32", C.METADATA, "the Alibaba Cloud metadata address"),
    _b("100.64.0.0/10", C.CGNAT, "a shared (CGNAT) address (RFC 6598)"),
    _b("10.0.0.0/8", C.PRIVATE, "a private address (RFC 1918)"),
    _b("172.16.0.0/12", C.PRIVATE, "a private address (RFC 1918)"),
    _b("192.168.0.0/16", C.PRIVATE, "a private address (RFC 1918)"),
    _b("192.0.0.0/24", C.RESERVED, "an IETF protocol assignment (RFC 6890)"),
    _b("192.0.2.0/24", C.DOCUMENTATION, "a documentation address (RFC 5737)"),
    _b("198.51.100.0/24", C.DOCUMENTATION, "a documentation address (RFC 5737)"),
    _b("203.0.113.0/24", C.DOCUMENTATION, "a documentation address (RFC 5737)"),
    _b("192.88.99.0/24", C.RESERVED, "a retired 6to4 relay address (RFC 7526)"),
    _b("198.18.0.0/15", C.BENCHMARK, "a benchmarking address (RFC 2544)"),
    _b("224.0.0.0/4", C.MULTICAST, "a multicast address"),
    _b("255.255.255.255/32", C.BROADCAST, "the broadcast address"),
    _b("240.0.0.0/4", C.RESERVED, "a reserved address (RFC 1112)"),
)

IPV6_BLOCKS: tuple[Block, ...] = (
    _b("::/128", C.UNSPECIFIED, "the unspecified address"),
    _b("::1/128", C.LOOPBACK, "a loopback address"),
    _b("64:ff9b:1::/48", C.RESERVED, "a local-use NAT64 address (RFC 8215)"),
    _b("100::/64", C.RESERVED, "a discard-only address (RFC 6666)"),
    _b("2001:2::/48", C.BENCHMARK, "a benchmarking address (RFC 5180)"),
    _b("2001::/23", C.RESERVED, "an IETF protocol assignment (RFC 2928)"),
    _b("2001:db8::/32", C.DOCUMENTATION, "a documentation address (RFC 3849)"),
    _b("3fff::/20", C.DOCUMENTATION, "a documentation address (RFC 9637)"),
    # AWS instance metadata over IPv6 (Nitro instances).
    _b("fd00:ec2::254/128", C.METADATA, "the cloud metadata address"),
    _b("fc00::/7", C.UNIQUE_LOCAL, "a unique local address (RFC 4193)"),
    _b("fe80::/10", C.LINK_LOCAL, "a link-local address"),
    _b("fec0::/10", C.SITE_LOCAL, "a site-local address (deprecated, RFC 3879)"),
    _b("ff00::/8", C.MULTICAST, "a multicast address"),
)
# fmt: on
# Outside global unicast, IPv6 is unassigned (or one of the blocks above); such an
# address gets the /3 around it as its block, so only a rule naming that opens it.
GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")
UNASSIGNED_V6_PREFIX = 3

# IPv6 ranges that carry an IPv4 address, and how to take it out.
NAT64 = IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
SIX_TO_FOUR = IPv6Network("2002::/16")  # RFC 3056: bits 16-47
TEREDO = IPv6Network("2001::/32")  # RFC 4380: the client's address, inverted, last 32 bits


@dataclass(frozen=True, slots=True)
class AddressInfo:
    """The class of one address, and the block and words behind it.

    `carried` is the IPv4 address inside a NAT64, 6to4 or Teredo address (`via` names
    which); the class, block and any exception are then those of `carried`.
    """

    address: IPAddress
    cls: AddressClass
    block: IPNetwork | None  # None for a public address
    label: str
    carried: IPv4Address | None = None
    via: str | None = None

    @property
    def checked(self) -> IPAddress:
        """The address rules and unsafe ranges are matched against."""
        return self.carried if self.carried is not None else self.address

    @property
    def reason(self) -> str:
        """Why the address is refused, for the event log."""
        if self.carried is not None:
            return f"{self.address} carries {self.carried} ({self.via}), {self.label}"
        return f"{self.address} is {self.label}"


def unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 address: the kernel dials it."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def classify(address: IPAddress, *, own: bool = False) -> AddressInfo:
    """Classify `address`. `own`: the address belongs to this machine (the caller knows).

    In order: IPv4-mapped addresses become IPv4; an address of this machine is THIS_HOST
    (its block is the address alone); NAT64, 6to4 and Teredo addresses are classified by
    the IPv4 address they carry; then the first special-use block holding the address
    decides; anything else is PUBLIC.
    """
    address = unmapped(address)
    if own and not address.is_loopback and not address.is_unspecified:
        host = ip_network(address)
        return AddressInfo(address, C.THIS_HOST, host, "an address of this machine")
    if isinstance(address, IPv6Address):
        carried = _carried_ipv4(address)
        if carried is not None:
            inner = _classify_plain(carried[0])
            return AddressInfo(
                address, inner.cls, inner.block, inner.label, carried=carried[0], via=carried[1]
            )
    return _classify_plain(address)


def _classify_plain(address: IPAddress) -> AddressInfo:
    blocks = IPV4_BLOCKS if address.version == 4 else IPV6_BLOCKS
    for block in blocks:
        if address in block.network:
            return AddressInfo(address, block.cls, block.network, block.label)
    if address.version == 6 and address not in GLOBAL_UNICAST_V6:
        around = ip_network(f"{address}/{UNASSIGNED_V6_PREFIX}", strict=False)
        return AddressInfo(address, C.RESERVED, around, "outside IPv6 global unicast (2000::/3)")
    return AddressInfo(address, C.PUBLIC, None, "a public address")


def _carried_ipv4(address: IPv6Address) -> tuple[IPv4Address, str] | None:
    if address in NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    if address in SIX_TO_FOUR:
        return IPv4Address((int(address) >> 80) & 0xFFFFFFFF), "6to4"
    if address in TEREDO:
        return IPv4Address(~int(address) & 0xFFFFFFFF), "Teredo"
    return None


# ---- the exception: ranges the user named ---------------------------------------------


@dataclass(frozen=True, slots=True)
class UnsafeRange:
    """A range allowed names may resolve into (`--unsafe-allow-private`)."""

    network: IPNetwork
    origin: str


class UnsafeRangeError(ValueError):
    """An --unsafe-allow-private value that is not a usable range; `hint` says what is."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message = message
        self.hint = hint


def parse_unsafe_range(text: str) -> UnsafeRange:
    """Read one --unsafe-allow-private value: a range inside one special-use block.

    A range that is not inside a block ("0.0.0.0/0", a public range) would open nothing
    and most likely means a mistake, so it is an error rather than a silent no-op.
    """
    origin = f"--unsafe-allow-private {text}"
    try:
        network = ip_network(text, strict=True)
    except ValueError:
        try:
            fixed = ip_network(text, strict=False)
        except ValueError:
            raise UnsafeRangeError(
                f"{origin}: not an address range", "give a range such as 10.20.0.0/16"
            ) from None
        raise UnsafeRangeError(
            f"{origin}: has bits set after the prefix", f"did you mean {fixed}?"
        ) from None
    info = classify(network.network_address)
    if info.block is None or not _inside(network, info.block) or info.carried is not None:
        raise UnsafeRangeError(
            f"{origin}: {network} is not inside one special-use range",
            "name the internal range itself, e.g. 10.0.0.0/8, 172.16.0.0/12, fd00::/8",
        )
    if info.cls in NEVER_ALLOWED:
        raise UnsafeRangeError(
            f"{origin}: {info.label} can never be allowed",
            "corridor never dials unspecified, multicast or broadcast addresses",
        )
    return UnsafeRange(network, origin)


def _inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]


def check_dial(
    address: IPAddress,
    port: int,
    policy: Policy | CompiledPolicy,
    unsafe: tuple[UnsafeRange, ...] = (),
    *,
    own: bool = False,
) -> Decision:
    """May the gateway dial `address`:`port` (an address a name resolved to, or a literal)?

    The checks, in order; the first that applies decides:
    1. a deny `cidr` rule holding the address (or the IPv4 address it carries) on the
       port -> deny (in audit mode: allowed, marked would-deny, like every policy deny);
    2. a public address -> allow;
    3. unspecified, multicast, broadcast -> refuse, always;
    4. an allow `cidr` rule holding the address on the port and lying inside the address's
       special-use block -> allow, naming the rule;
    5. an unsafe range holding the address and lying inside the block -> allow;
    6. otherwise refuse, saying what the address is. Address refusals hold in audit mode
       too: they protect the machine and its network, not a policy being learnt.
    """
    info = classify(address, own=own)
    candidates = {info.address, info.checked}
    for rule in policy.deny:
        if rule.cidr is None or (rule.ports is not None and port not in rule.ports):
            continue
        if any(a.version == rule.cidr.version and a in rule.cidr for a in candidates):
            rule_id = rule.origin or str(rule.cidr)
            if policy.mode == "audit":
                return Decision(True, DENIED_BY_RULE, rule_id, would_deny=True)
            return Decision(False, DENIED_BY_RULE, rule_id)
    if info.cls is C.PUBLIC:
        return Decision(True, PUBLIC, None)
    if info.cls in NEVER_ALLOWED or info.block is None:
        return Decision(False, info.reason, None)
    checked = info.checked
    for rule in policy.allow:
        if rule.cidr is None or not _inside(rule.cidr, info.block):
            continue
        ports = rule.ports if rule.ports is not None else DEFAULT_ALLOW_PORTS
        if port in ports and checked in rule.cidr:
            return Decision(True, ALLOWED_INTERNAL, rule.origin or str(rule.cidr))
    for r in unsafe:
        if _inside(r.network, info.block) and checked in r.network:
            return Decision(True, ALLOWED_UNSAFE, r.origin)
    return Decision(False, info.reason, None)
