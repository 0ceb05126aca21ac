"""Host-name grammar and the synthetic name <-> address map."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from corridor.gateway.names import (
    DEFAULT_V4_NET,
    DEFAULT_V6_NET,
    NameMap,
    NameMapFull,
    hostname_problem,
    normalise_name,
)

LABEL_63 = "a" * 63
# Four 63-char labels joined by dots: 255 characters; trimmed to exact lengths below.
NAME_253 = ".".join(["b" * 63, "c" * 63, "d" * 63, "e" * 61])
NAME_254 = "f" + NAME_253

VALID = {
    "simple": "example.test",
    "single label": "localhost",
    "trailing dot": "example.test.",
    "uppercase": "WWW.Example.TEST",
    "underscore": "_dmarc.example.test",
    "hyphens": "r3---sn-abc.example.test",
    "63-char label": f"{LABEL_63}.test",
    "253 characters": NAME_253,
    "253 characters plus trailing dot": NAME_253 + ".",
    "dotted quad": "192.0.2.1",
    "digits inside": "1password.test",
    "hex-looking first label": "0xdead.example.test",
}

INVALID = {
    "empty": ("", "empty host name"),
    "only a dot": (".", "empty host name"),
    "NUL": ("a\x00.test", "NUL byte in host name"),
    "CR": ("a.test\r", "CR or LF in host name"),
    "LF": ("a\n.test", "CR or LF in host name"),
    "space": ("a b.test", "whitespace in host name"),
    "tab": ("a\tb.test", "whitespace in host name"),
    "non-ASCII": ("bücher.test", "non-ASCII host name (IDN must be sent as punycode)"),
    "254 characters": (NAME_254, "host name longer than 253 characters"),
    "64-char label": (f"{'a' * 64}.test", "label longer than 63 characters in host name"),
    "empty label": ("a..test", "empty label in host name"),
    "leading dot": (".a.test", "empty label in host name"),
    "two trailing dots": ("a.test..", "empty label in host name"),
    "slash": ("a/b.test", "invalid character '/' in host name"),
    "percent": ("a%2e.test", "invalid character '%' in host name"),
    "colon": ("a.test:80", "invalid character ':' in host name"),
    "at": ("u@a.test", "invalid character '@' in host name"),
    "star": ("*.a.test", "invalid character '*' in host name"),
    "short IPv4": ("127.1", "numeric host name that is not a dotted-quad IPv4 address"),
    "decimal IPv4": ("2130706433", "numeric host name that is not a dotted-quad IPv4 address"),
    "hex IPv4": ("0x7f000001", "numeric host name that is not a dotted-quad IPv4 address"),
    "octal IPv4": ("0177.0.0.1", "numeric host name that is not a dotted-quad IPv4 address"),
    "IPv4 with dot": ("192.0.2.1.", "numeric host name that is not a dotted-quad IPv4 address"),
    "numeric last label": ("a.123", "numeric host name that is not a dotted-quad IPv4 address"),
    "bare 0x": ("a.0x", "numeric host name that is not a dotted-quad IPv4 address"),
}


def test_boundary_names_have_the_intended_lengths() -> None:
    assert len(NAME_253) == 253
    assert len(NAME_254) == 254
    assert len(LABEL_63) == 63


@pytest.mark.parametrize("name", VALID.values(), ids=VALID.keys())
def test_valid_host_names(name: str) -> None:
    assert hostname_problem(name) is None


@pytest.mark.parametrize(("name", "reason"), INVALID.values(), ids=INVALID.keys())
def test_invalid_host_names(name: str, reason: str) -> None:
    assert hostname_problem(name) == reason


def test_normalise_name() -> None:
    assert normalise_name("WWW.Example.TEST.") == "www.example.test"
    assert normalise_name("a.test") == "a.test"


def test_default_ranges() -> None:
    assert IPv4Network("198.18.0.0/15") == DEFAULT_V4_NET
    assert IPv6Network("fd63:6f72:7269:646f::/64") == DEFAULT_V6_NET


def test_addresses_are_sequential_and_skip_the_network_address() -> None:
    names = NameMap()
    assert names.address_for("a.test", socket.AF_INET) == IPv4Address("198.18.0.1")
    assert names.address_for("b.test", socket.AF_INET) == IPv4Address("198.18.0.2")
    assert names.address_for("a.test", socket.AF_INET6) == IPv6Address("fd63:6f72:7269:646f::1")
    assert names.address_for("c.test", socket.AF_INET6) == IPv6Address("fd63:6f72:7269:646f::2")


def test_same_name_same_address_whatever_the_spelling() -> None:
    names = NameMap()
    first = names.address_for("Example.TEST.", socket.AF_INET)
    names.address_for("other.test", socket.AF_INET)
    assert names.address_for("example.test", socket.AF_INET) == first
    assert names.name_for(first) == "example.test"


def test_name_for_unknown_and_foreign_addresses() -> None:
    names = NameMap()
    names.address_for("a.test", socket.AF_INET)
    assert names.name_for(IPv4Address("198.18.0.2")) is None  # in range, not handed out
    assert names.name_for(IPv4Address("192.0.2.1")) is None
    assert names.name_for(IPv6Address("2001:db8::1")) is None


def test_v4_mapped_and_text_addresses_are_understood() -> None:
    names = NameMap()
    names.address_for("a.test", socket.AF_INET)
    assert names.name_for(IPv6Address("::ffff:198.18.0.1")) == "a.test"
    assert names.name_for("198.18.0.1") == "a.test"
    assert names.is_synthetic(IPv6Address("::ffff:198.19.255.255"))
    assert names.is_synthetic("fd63:6f72:7269:646f::ffff")


@pytest.mark.parametrize(
    ("address", "synthetic"),
    [
        ("198.18.0.0", True),
        ("198.19.255.255", True),
        ("198.17.255.255", False),  # just below the range
        ("198.20.0.0", False),  # just above
        ("fd63:6f72:7269:646f:ffff:ffff:ffff:ffff", True),
        ("fd63:6f72:7269:6470::", False),  # the next /64
        ("10.0.0.1", False),
    ],
)
def test_is_synthetic(address: str, synthetic: bool) -> None:
    assert NameMap().is_synthetic(address) is synthetic


def test_tiny_v4_net_never_hands_out_network_or_broadcast() -> None:
    names = NameMap(v4_net=IPv4Network("192.0.2.0/30"))
    assert names.address_for("a.test", socket.AF_INET) == IPv4Address("192.0.2.1")
    assert names.address_for("b.test", socket.AF_INET) == IPv4Address("192.0.2.2")
    with pytest.raises(NameMapFull, match=r"no synthetic address left in 192\.0\.2\.0/30"):
        names.address_for("c.test", socket.AF_INET)
    # A name that already has its address still gets it once the pool is full.
    assert names.address_for("a.test", socket.AF_INET) == IPv4Address("192.0.2.1")


def test_slash_31_has_no_usable_address() -> None:
    names = NameMap(v4_net=IPv4Network("192.0.2.0/31"))
    with pytest.raises(NameMapFull):
        names.address_for("a.test", socket.AF_INET)


def test_whole_default_v4_range_is_used_then_full() -> None:
    names = NameMap(max_names=200_000)
    last = None
    for i in range(131_070):  # 2**17 minus network and broadcast
        last = names.address_for(f"n{i}.test", socket.AF_INET)
    assert last == IPv4Address("198.19.255.254")
    with pytest.raises(NameMapFull):
        names.address_for("one-more.test", socket.AF_INET)


def test_max_names_cap() -> None:
    names = NameMap(max_names=2)
    names.address_for("a.test", socket.AF_INET)
    names.address_for("b.test", socket.AF_INET)
    with pytest.raises(NameMapFull, match="more than 2 names in this session"):
        names.address_for("c.test", socket.AF_INET)
    # The cap is per family.
    names.address_for("c.test", socket.AF_INET6)


def test_rejects_bad_names_and_families() -> None:
    names = NameMap()
    with pytest.raises(ValueError, match="invalid character '/' in host name"):
        names.address_for("a/b.test", socket.AF_INET)
    with pytest.raises(ValueError, match="unknown address family"):
        names.address_for("a.test", socket.AF_UNIX)


def test_rejects_wrong_network_types() -> None:
    with pytest.raises(TypeError):
        NameMap(v4_net=DEFAULT_V6_NET)  # type: ignore[arg-type]
