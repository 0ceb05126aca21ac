"""The pydantic model on its own: values it accepts, errors it raises, what it remembers."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from pydantic import ValidationError

from corridor.policy.model import Limits, Policy, Rule, parse_byte_count

BYTE_COUNTS = {
    "plain int": (1234, 1234),
    "zero": (0, 0),
    "digits as text": ("1000", 1000),
    "bytes": ("10B", 10),
    "SI kilo": ("10kB", 10_000),
    "SI kilo, capital K": ("10KB", 10_000),
    "SI mega": ("50MB", 50_000_000),
    "SI giga": ("2GB", 2_000_000_000),
    "SI tera": ("1TB", 10**12),
    "IEC kibi": ("1KiB", 1024),
    "IEC mebi": ("3MiB", 3 * 1024**2),
    "IEC gibi fraction": ("1.5GiB", 1_610_612_736),
    "IEC tebi": ("1TiB", 1024**4),
    "SI fraction": ("1.1kB", 1100),
    "space before the unit": ("5 MB", 5_000_000),
}


@pytest.mark.parametrize(("value", "expected"), BYTE_COUNTS.values(), ids=BYTE_COUNTS.keys())
def test_byte_counts(value: object, expected: int) -> None:
    assert parse_byte_count(value) == expected


BAD_BYTE_COUNTS = {
    "unknown unit": ("5XB", "unknown unit 'XB' in '5XB'"),
    "lower case mega": ("5mb", "unknown unit 'mb' in '5mb'"),
    "fraction of a byte": ("1.5B", "'1.5B' is not a whole number of bytes"),
    "negative int": (-1, "-1 is negative"),
    "negative text": ("-5MB", "'-5MB' is not a size"),
    "float": (1.5, "1.5 is not a size"),
    "bool": (True, "True is not a size"),
    "empty": ("", "'' is not a size"),
    "unit only": ("MB", "'MB' is not a size"),
}


@pytest.mark.parametrize(("value", "message"), BAD_BYTE_COUNTS.values(), ids=BAD_BYTE_COUNTS.keys())
def test_bad_byte_counts(value: object, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_byte_count(value)
    assert str(e.value) == message


def _error(model: type, **data: Any) -> tuple[tuple[Any, ...], str]:
    with pytest.raises(ValidationError) as e:
        model(**data)
    first = e.value.errors()[0]
    return (*first["loc"], *(first.get("ctx") or {}).get("loc", ())), first["msg"]


RULE_ERRORS = {
    "both host and cidr": (
        {"host": "a.test", "cidr": "10.0.0.0/8"},
        ((), "a rule has both 'host' and 'cidr'"),
    ),
    "neither host nor cidr": ({"ports": [443]}, ((), "a rule needs 'host' or 'cidr'")),
    "port too big": (
        {"host": "a.test", "ports": [443, 65536]},
        (("ports", 1), "65536 is not a port (1-65535)"),
    ),
    "port zero": ({"host": "a.test", "ports": [0]}, (("ports", 0), "0 is not a port (1-65535)")),
    "port as text": (
        {"host": "a.test", "ports": ["443"]},
        (("ports", 0), "Input should be a valid integer"),
    ),
    "no ports": ({"host": "a.test", "ports": []}, (("ports",), "an empty list matches nothing")),
    "lower case method": (
        {"host": "a.test", "methods": ["get"]},
        (("methods", 0), "'get' is not an HTTP method"),
    ),
    "path without slash": (
        {"host": "a.test", "paths": ["v1/"]},
        (("paths", 0), "'v1/' does not start with '/'"),
    ),
    "path with a query": (
        {"host": "a.test", "paths": ["/v1?x=1"]},
        (("paths", 0), "'/v1?x=1' is not a URL path prefix"),
    ),
    "host with a port": (
        {"host": "a.test:443"},
        (("host",), "'a.test:443' is not a valid host: ':' is not allowed in a host name"),
    ),
    "cidr with host bits": (
        {"cidr": "10.0.0.1/8"},
        (("cidr",), "'10.0.0.1/8' has bits set after the prefix"),
    ),
    "cidr garbage": ({"cidr": "10.0.0/33"}, (("cidr",), "'10.0.0/33' is not an address range")),
    "cidr number": ({"cidr": 10}, (("cidr",), "10 is not an address range")),
    "inspect as text": (
        {"host": "a.test", "inspect": "yes"},
        (("inspect",), "Input should be a valid boolean"),
    ),
    "unknown key": ({"host": "a.test", "hots": "b"}, (("hots",), "Extra inputs are not permitted")),
}


@pytest.mark.parametrize(("data", "expected"), RULE_ERRORS.values(), ids=RULE_ERRORS.keys())
def test_rule_errors(data: dict[str, Any], expected: tuple[tuple[Any, ...], str]) -> None:
    assert _error(Rule, **data) == expected


def test_rule_normalises_host_and_cidr() -> None:
    rule = Rule(host="**.Bücher.TEST.", ports=[443])
    assert rule.host == "**.xn--bcher-kva.test"
    assert Rule(cidr="2001:db8::/32").cidr == ipaddress.ip_network("2001:db8::/32")
    assert Rule(cidr="10.0.0.1").cidr == ipaddress.ip_network("10.0.0.1/32")


def test_rules_and_policies_are_frozen() -> None:
    rule = Rule(host="a.test")
    with pytest.raises(ValidationError):
        rule.host = "b.test"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Policy().mode = "audit"  # type: ignore[misc]


BROAD_ALLOW = {
    "star": ("*", (("allow", 0, "host"), "'*' matches every host, which is broad")),
    "tld": (
        "**.dev",
        (
            ("allow", 0, "host"),
            "**.dev matches every name under the top-level domain 'dev', which is broad",
        ),
    ),
}


@pytest.mark.parametrize(("host", "expected"), BROAD_ALLOW.values(), ids=BROAD_ALLOW.keys())
def test_broad_allow_needs_broad_true(host: str, expected: tuple[tuple[Any, ...], str]) -> None:
    assert _error(Policy, allow=[{"host": host}]) == expected
    assert Policy(allow=[{"host": host, "broad": True}]).allow[0].broad


def test_broad_cidr_needs_broad_true() -> None:
    assert _error(Policy, allow=[{"cidr": "0.0.0.0/0"}]) == (
        ("allow", 0, "cidr"),
        "0.0.0.0/0 is wider than a /8, which is broad",
    )
    assert _error(Policy, allow=[{"cidr": "2000::/3"}]) == (
        ("allow", 0, "cidr"),
        "2000::/3 is wider than a /32, which is broad",
    )
    Policy(allow=[{"cidr": "10.0.0.0/8"}, {"cidr": "2001:db8::/32"}])  # at the boundary: fine


def test_broad_deny_is_fine() -> None:
    policy = Policy(deny=[{"host": "**.com"}, {"cidr": "0.0.0.0/0"}])
    assert len(policy.deny) == 2


def test_unset_differs_from_default() -> None:
    assert Policy().model_fields_set == set()
    assert Policy(mode="enforce").model_fields_set == {"mode"}
    assert Limits(max_bytes_out="1kB").model_fields_set == {"max_bytes_out"}


def test_limits() -> None:
    assert Limits(max_connections=200, max_bytes_out="50MB") == Limits(
        max_connections=200, max_bytes_out=50_000_000
    )
    assert _error(Limits, max_connections=0) == (("max_connections",), "0 is not a positive number")
    assert _error(Policy, version=2) == (("version",), "unsupported policy version 2")
