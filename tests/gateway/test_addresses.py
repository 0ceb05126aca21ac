"""Address classification and the dial check: tables of named cases, exact reasons."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corridor.gateway.addresses import (
    ALLOWED_INTERNAL,
    ALLOWED_UNSAFE,
    DENIED_BY_RULE,
    IPV4_BLOCKS,
    IPV6_BLOCKS,
    PUBLIC,
    AddressClass,
    UnsafeRangeError,
    check_dial,
    classify,
    parse_unsafe_range,
)
from corridor.policy import Decision, Policy, Rule

C = AddressClass

# name: (address, class, reason)
# fmt: off
CLASSES = {
    "public v4": ("93.184.216.34", C.PUBLIC, "93.184.216.34 is a public address"),
    "public v6": ("2606:4700::1111", C.PUBLIC, "2606:4700::1111 is a public address"),
    "unspecified v4": ("0.0.0.0", C.UNSPECIFIED, "0.0.0.0 is the unspecified address"),
    "this network": ("0.1.2.3", C.RESERVED, "0.1.2.3 is a 'this network' address (RFC 1122)"),
    "loopback": ("127.0.0.1", C.LOOPBACK, "127.0.0.1 is a loopback address"),
    "loopback, far end": ("127.255.255.254", C.LOOPBACK,
                          "127.255.255.254 is a loopback address"),
    "metadata": ("169.254.169.254", C.METADATA,
                 "169.254.169.254 is the cloud metadata address"),
    "ECS task metadata": ("169.254.170.2", C.METADATA,
                          "169.254.170.2 is the AWS ECS task metadata address"),
    "link-local beside metadata": ("169.254.169.253", C.LINK_LOCAL,
                                   "169.254.169.253 is a link-local address"),
    "Alibaba metadata": ("100.100.100.200", C.METADATA,
                         "100.100.100.200 is the Alibaba Cloud metadata address"),
    "CGNAT first": ("100.64.0.0", C.CGNAT, "100.64.0.0 is a shared (CGNAT) address (RFC 6598)"),
    "CGNAT last": ("100.127.255.255", C.CGNAT,
                   "100.127.255.255 is a shared (CGNAT) address (RFC 6598)"),
    "just below CGNAT": ("100.63.255.255", C.PUBLIC, "100.63.255.255 is a public address"),
    "just above CGNAT": ("100.128.0.0", C.PUBLIC, "100.128.0.0 is a public address"),
    "10/8": ("10.0.0.5", C.PRIVATE, "10.0.0.5 is a private address (RFC 1918)"),
    "172.16/12 first": ("172.16.0.0", C.PRIVATE, "172.16.0.0 is a private address (RFC 1918)"),
    "172.16/12 last": ("172.31.255.255", C.PRIVATE,
                       "172.31.255.255 is a private address (RFC 1918)"),
    "just below 172.16/12": ("172.15.255.255", C.PUBLIC, "172.15.255.255 is a public address"),
    "just above 172.16/12": ("172.32.0.0", C.PUBLIC, "172.32.0.0 is a public address"),
    "192.168/16": ("192.168.1.1", C.PRIVATE, "192.168.1.1 is a private address (RFC 1918)"),
    "IETF protocol": ("192.0.0.8", C.RESERVED,
                      "192.0.0.8 is an IETF protocol assignment (RFC 6890)"),
    "TEST-NET-1": ("192.0.2.1", C.DOCUMENTATION, "192.0.2.1 is a documentation address (RFC 5737)"),
    "TEST-NET-3": ("203.0.113.10", C.DOCUMENTATION,
                   "203.0.113.10 is a documentation address (RFC 5737)"),
    "benchmark (synthetic range)": ("198.18.0.1", C.BENCHMARK,
                                    "198.18.0.1 is a benchmarking address (RFC 2544)"),
    "just above benchmark": ("198.20.0.0", C.PUBLIC, "198.20.0.0 is a public address"),
    "6to4 relay": ("192.88.99.1", C.RESERVED,
                   "192.88.99.1 is a retired 6to4 relay address (RFC 7526)"),
    "multicast": ("224.0.0.251", C.MULTICAST, "224.0.0.251 is a multicast address"),
    "class E": ("240.0.0.1", C.RESERVED, "240.0.0.1 is a reserved address (RFC 1112)"),
    "broadcast": ("255.255.255.255", C.BROADCAST, "255.255.255.255 is the broadcast address"),
    "v6 unspecified": ("::", C.UNSPECIFIED, ":: is the unspecified address"),
    "v6 loopback": ("::1", C.LOOPBACK, "::1 is a loopback address"),
    "v6 metadata": ("fd00:ec2::254", C.METADATA, "fd00:ec2::254 is the cloud metadata address"),
    "ULA": ("fd12:3456::1", C.UNIQUE_LOCAL, "fd12:3456::1 is a unique local address (RFC 4193)"),
    "ULA fc half": ("fc00::1", C.UNIQUE_LOCAL, "fc00::1 is a unique local address (RFC 4193)"),
    "corridor's synthetic v6": ("fd63:6f72:7269:646f::1", C.UNIQUE_LOCAL,
                                "fd63:6f72:7269:646f::1 is a unique local address (RFC 4193)"),
    "v6 link-local": ("fe80::1", C.LINK_LOCAL, "fe80::1 is a link-local address"),
    "site-local": ("fec0::1", C.SITE_LOCAL,
                   "fec0::1 is a site-local address (deprecated, RFC 3879)"),
    "v6 multicast": ("ff02::1", C.MULTICAST, "ff02::1 is a multicast address"),
    "v6 documentation": ("2001:db8::1", C.DOCUMENTATION,
                         "2001:db8::1 is a documentation address (RFC 3849)"),
    "v6 documentation (2024)": ("3fff::1", C.DOCUMENTATION,
                                "3fff::1 is a documentation address (RFC 9637)"),
    "v6 benchmark": ("2001:2::1", C.BENCHMARK, "2001:2::1 is a benchmarking address (RFC 5180)"),
    "ORCHIDv2": ("2001:20::1", C.RESERVED, "2001:20::1 is an IETF protocol assignment (RFC 2928)"),
    "discard-only": ("100::1", C.RESERVED, "100::1 is a discard-only address (RFC 6666)"),
    "local-use NAT64": ("64:ff9b:1::a00:5", C.RESERVED,
                        "64:ff9b:1::a00:5 is a local-use NAT64 address (RFC 8215)"),
    "outside 2000::/3": ("4000::1", C.RESERVED,
                         "4000::1 is outside IPv6 global unicast (2000::/3)"),
    "IPv4-compatible (deprecated)": ("::a00:5", C.RESERVED,
                                     "::a00:5 is outside IPv6 global unicast (2000::/3)"),
    # IPv4 inside IPv6: judged as the IPv4 address carried.
    "mapped metadata": ("::ffff:169.254.169.254", C.METADATA,
                        "169.254.169.254 is the cloud metadata address"),
    "mapped public": ("::ffff:93.184.216.34", C.PUBLIC, "93.184.216.34 is a public address"),
    "NAT64 metadata": ("64:ff9b::a9fe:a9fe", C.METADATA,
                       "64:ff9b::a9fe:a9fe carries 169.254.169.254 (NAT64), "
                       "the cloud metadata address"),
    "NAT64 loopback": ("64:ff9b::7f00:1", C.LOOPBACK,
                       "64:ff9b::7f00:1 carries 127.0.0.1 (NAT64), a loopback address"),
    "NAT64 public": ("64:ff9b::5db8:d822", C.PUBLIC,
                     "64:ff9b::5db8:d822 carries 93.184.216.34 (NAT64), a public address"),
    "6to4 private": ("2002:a00:5::1", C.PRIVATE,
                     "2002:a00:5::1 carries 10.0.0.5 (6to4), a private address (RFC 1918)"),
    "6to4 loopback": ("2002:7f00:1::", C.LOOPBACK,
                      "2002:7f00:1:: carries 127.0.0.1 (6to4), a loopback address"),
    # RFC 4380 example layout: the client's IPv4 address, every bit inverted, at the end.
    "Teredo private client": ("2001:0:4136:e378:8000:63bf:f5ff:fffa", C.PRIVATE,
                              "2001:0:4136:e378:8000:63bf:f5ff:fffa carries 10.0.0.5 (Teredo), "
                              "a private address (RFC 1918)"),
}
# fmt: on


@pytest.mark.parametrize(("text", "cls", "reason"), CLASSES.values(), ids=CLASSES.keys())
def test_classify(text: str, cls: AddressClass, reason: str) -> None:
    info = classify(ip_address(text))
    assert (info.cls, info.reason) == (cls, reason)


def test_own_address_is_this_host_whatever_its_range() -> None:
    info = classify(ip_address("93.184.216.34"), own=True)
    assert info.cls is C.THIS_HOST
    assert info.block == ip_network("93.184.216.34/32")
    assert info.reason == "93.184.216.34 is an address of this machine"
    # Loopback stays loopback (its block is the whole 127/8).
    assert classify(ip_address("127.0.0.1"), own=True).cls is C.LOOPBACK


def test_block_tables_hold_no_unreachable_entry() -> None:
    # A block that an earlier, wider block already covers could never decide: a mistake.
    for table in (IPV4_BLOCKS, IPV6_BLOCKS):
        for i, block in enumerate(table):
            for earlier in table[:i]:
                assert not block.network.subnet_of(earlier.network), (block, earlier)  # type: ignore[arg-type]


@given(st.ip_addresses())
def test_every_address_gets_a_class_and_a_reason(address) -> None:
    info = classify(address)
    assert info.reason.startswith(str(info.address))
    assert (info.cls is C.PUBLIC) == (info.block is None)


# ---- check_dial ----------------------------------------------------------------------

NO_RULES = Policy()


def cidr(net: str, ports: list[int] | None = None, origin: str = "") -> Rule:
    return Rule(cidr=ip_network(net), ports=ports, origin=origin or f"cidr {net}", broad=True)


def policy(*allow: Rule, deny: tuple[Rule, ...] = (), mode: str = "enforce") -> Policy:
    return Policy(allow=list(allow), deny=list(deny), mode=mode)


UNSAFE_10 = (parse_unsafe_range("10.0.0.0/8"),)

# name: (address, port, policy, unsafe ranges, expected decision)
# fmt: off
DIALS = {
    "public, no rules": ("93.184.216.34", 443, NO_RULES, (), Decision(True, PUBLIC, None)),
    "private, no rules": ("10.0.0.5", 443, NO_RULES, (),
                          Decision(False, "10.0.0.5 is a private address (RFC 1918)", None)),
    "private, cidr rule naming 10/8": (
        "10.0.0.5", 443, policy(cidr("10.0.0.0/8")), (),
        Decision(True, ALLOWED_INTERNAL, "cidr 10.0.0.0/8")),
    "private, cidr rule for the one address": (
        "10.0.0.5", 80, policy(cidr("10.0.0.5/32")), (),
        Decision(True, ALLOWED_INTERNAL, "cidr 10.0.0.5/32")),
    "private, cidr rule on another port": (
        "10.0.0.5", 5432, policy(cidr("10.0.0.0/8")), (),
        Decision(False, "10.0.0.5 is a private address (RFC 1918)", None)),
    "private, cidr rule listing the port": (
        "10.0.0.5", 5432, policy(cidr("10.0.0.0/8", [5432])), (),
        Decision(True, ALLOWED_INTERNAL, "cidr 10.0.0.0/8")),
    "broad 0.0.0.0/0 does not open private": (
        "10.0.0.5", 443, policy(cidr("0.0.0.0/0")), (),
        Decision(False, "10.0.0.5 is a private address (RFC 1918)", None)),
    "broad 0.0.0.0/0 does not open loopback": (
        "127.0.0.1", 443, policy(cidr("0.0.0.0/0")), (),
        Decision(False, "127.0.0.1 is a loopback address", None)),
    "link-local /16 does not open metadata": (
        "169.254.169.254", 80, policy(cidr("169.254.0.0/16")), (),
        Decision(False, "169.254.169.254 is the cloud metadata address", None)),
    "metadata named exactly": (
        "169.254.169.254", 80, policy(cidr("169.254.169.254/32")), (),
        Decision(True, ALLOWED_INTERNAL, "cidr 169.254.169.254/32")),
    "::/0 does not open ULA": (
        "fd12::1", 443, policy(cidr("::/0")), (),
        Decision(False, "fd12::1 is a unique local address (RFC 4193)", None)),
    "::/0 does not open unassigned v6": (
        "4000::1", 443, policy(cidr("::/0")), (),
        Decision(False, "4000::1 is outside IPv6 global unicast (2000::/3)", None)),
    "unsafe range, any port": ("10.0.0.5", 5432, NO_RULES, UNSAFE_10,
                               Decision(True, ALLOWED_UNSAFE, "--unsafe-allow-private 10.0.0.0/8")),
    "unsafe range does not open loopback": (
        "127.0.0.1", 80, NO_RULES, UNSAFE_10,
        Decision(False, "127.0.0.1 is a loopback address", None)),
    "NAT64 of private, opened by the IPv4 rule": (
        "64:ff9b::a00:5", 443, policy(cidr("10.0.0.0/8")), (),
        Decision(True, ALLOWED_INTERNAL, "cidr 10.0.0.0/8")),
    "NAT64 of metadata, not opened by a NAT64 rule": (
        "64:ff9b::a9fe:a9fe", 80, policy(cidr("64:ff9b::/96")), (),
        Decision(False, "64:ff9b::a9fe:a9fe carries 169.254.169.254 (NAT64), "
                        "the cloud metadata address", None)),
    "mapped loopback": ("::ffff:127.0.0.1", 80, NO_RULES, (),
                        Decision(False, "127.0.0.1 is a loopback address", None)),
    "unspecified, never": ("0.0.0.0", 80, policy(cidr("0.0.0.0/32")), (),
                           Decision(False, "0.0.0.0 is the unspecified address", None)),
    "multicast, never": ("224.0.0.1", 80, policy(cidr("224.0.0.0/4")), (),
                         Decision(False, "224.0.0.1 is a multicast address", None)),
    "deny rule on a public address": (
        "93.184.216.34", 443, policy(deny=(cidr("93.184.216.0/24", origin="deny 93"),)), (),
        Decision(False, DENIED_BY_RULE, "deny 93")),
    "deny rule on the address a NAT64 address carries": (
        "64:ff9b::5db8:d822", 443, policy(deny=(cidr("93.184.216.0/24", origin="deny 93"),)),
        (), Decision(False, DENIED_BY_RULE, "deny 93")),
    "deny rule on another port": (
        "93.184.216.34", 443, policy(deny=(cidr("93.184.216.0/24", [22], "deny 93"),)), (),
        Decision(True, PUBLIC, None)),
    "deny rule in audit mode": (
        "93.184.216.34", 443,
        policy(deny=(cidr("93.184.216.0/24", origin="deny 93"),), mode="audit"), (),
        Decision(True, DENIED_BY_RULE, "deny 93", would_deny=True)),
    "private in audit mode stays refused": (
        "10.0.0.5", 443, policy(mode="audit"), (),
        Decision(False, "10.0.0.5 is a private address (RFC 1918)", None)),
}
# fmt: on


@pytest.mark.parametrize(
    ("addr", "port", "pol", "unsafe", "want"), DIALS.values(), ids=DIALS.keys()
)
def test_check_dial(addr: str, port: int, pol: Policy, unsafe: tuple, want: Decision) -> None:
    assert check_dial(ip_address(addr), port, pol, unsafe) == want


def test_this_machine_is_opened_only_by_its_own_address() -> None:
    addr = ip_address("192.0.2.2")
    wide = policy(cidr("192.0.2.0/24"))
    assert check_dial(addr, 443, wide, own=True) == Decision(
        False, "192.0.2.2 is an address of this machine", None
    )
    exact = policy(cidr("192.0.2.2/32"))
    assert check_dial(addr, 443, exact, own=True).allowed


# ---- --unsafe-allow-private values ---------------------------------------------------

# fmt: off
BAD_RANGES = {
    "not a range": ("nonsense", "--unsafe-allow-private nonsense: not an address range"),
    "host bits": ("10.0.0.1/8", "--unsafe-allow-private 10.0.0.1/8: has bits set after the prefix"),
    "everything": ("0.0.0.0/0", "--unsafe-allow-private 0.0.0.0/0: 0.0.0.0/0 is not inside one "
                                "special-use range"),
    "public": ("93.184.216.0/24", "--unsafe-allow-private 93.184.216.0/24: 93.184.216.0/24 is "
                                  "not inside one special-use range"),
    "spans two blocks": ("172.0.0.0/8", "--unsafe-allow-private 172.0.0.0/8: 172.0.0.0/8 is not "
                                        "inside one special-use range"),
    "multicast": ("224.0.0.0/4", "--unsafe-allow-private 224.0.0.0/4: a multicast address can "
                                 "never be allowed"),
}
# fmt: on


@pytest.mark.parametrize(("text", "message"), BAD_RANGES.values(), ids=BAD_RANGES.keys())
def test_unsafe_range_refuses(text: str, message: str) -> None:
    with pytest.raises(UnsafeRangeError) as e:
        parse_unsafe_range(text)
    assert e.value.message == message


@pytest.mark.parametrize(
    "text", ["10.0.0.0/8", "10.1.2.3/32", "203.0.113.0/24", "2001:db8:10::/48", "fd00::/8"]
)
def test_unsafe_range_accepts(text: str) -> None:
    r = parse_unsafe_range(text)
    assert (str(r.network), r.origin) == (text, f"--unsafe-allow-private {text}")
