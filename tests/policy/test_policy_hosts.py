"""Host names, IP literals and host patterns: tables of named cases, then properties."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from corridor.policy.hosts import (
    MAX_LABEL_LENGTH,
    MAX_NAME_LENGTH,
    InvalidHost,
    PatternKind,
    normalize_host,
    parse_host_pattern,
    parse_ip_literal,
)

# ----------------------------------------------------------------- normalize_host

NORMALIZE_OK = {
    "plain": ("example.test", "example.test"),
    "upper case": ("API.Example.TEST", "api.example.test"),
    "one trailing dot": ("example.test.", "example.test"),
    "underscore label": ("_dmarc.example.test", "_dmarc.example.test"),
    "underscore inside": ("my_host.example.test", "my_host.example.test"),
    "single label": ("localhost", "localhost"),
    "digits inside": ("a1.b2.test", "a1.b2.test"),
    "hyphen inside": ("a-b.test", "a-b.test"),
    "idn to punycode": ("bücher.test", "xn--bcher-kva.test"),
    "idn upper case folds": ("BÜCHER.test", "xn--bcher-kva.test"),
    "punycode kept": ("xn--bcher-kva.test", "xn--bcher-kva.test"),
    "cyrillic look-alike": ("ехample.test", "xn--ample-ywe6i.test"),
    "ideographic full stop": ("example\u3002test", "example.test"),
    "fullwidth letters fold": ("ｅｘａｍｐｌｅ.test", "example.test"),
    "63-char label": ("a" * 63 + ".test", "a" * 63 + ".test"),
    "253 chars": (("a" * 49 + ".") * 5 + "tes", ("a" * 49 + ".") * 5 + "tes"),
    "numeric label not last": ("123.example.test", "123.example.test"),
}


@pytest.mark.parametrize(("raw", "expected"), NORMALIZE_OK.values(), ids=NORMALIZE_OK.keys())
def test_normalize_host_ok(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


NORMALIZE_BAD = {
    "empty": ("", "empty host name"),
    "only a dot": (".", "empty label (two dots in a row, or a leading dot)"),
    "two trailing dots": ("example.test..", "empty label (two dots in a row, or a leading dot)"),
    "leading dot": (".example.test", "empty label (two dots in a row, or a leading dot)"),
    "double dot": ("a..test", "empty label (two dots in a row, or a leading dot)"),
    "space": ("exa mple.test", "' ' is not allowed in a host name"),
    "NUL": ("example.test\x00.evil.test", "'\\x00' is not allowed in a host name"),
    "CR LF": ("example.test\r\nX: y", "'\\r' is not allowed in a host name"),
    "slash": ("example.test/path", "'/' is not allowed in a host name"),
    "at sign": ("user@example.test", "'@' is not allowed in a host name"),
    "colon": ("example.test:443", "':' is not allowed in a host name"),
    "asterisk": ("*.example.test", "'*' is not allowed in a host name"),
    "leading hyphen": ("-a.test", "label '-a' starts or ends with a hyphen"),
    "trailing hyphen": ("a-.test", "label 'a-' starts or ends with a hyphen"),
    "64-char label": ("a" * 64 + ".test", "label longer than 63 characters"),
    "254 chars": (("a" * 49 + ".") * 5 + "test", "host name longer than 253 characters"),
    "huge input": ("a" * 5000, "host name longer than 253 characters"),
    "ipv4 literal": ("10.0.0.1", "ends in a number, so it reads as an IP address, not a host name"),
    "short ipv4": ("127.1", "ends in a number, so it reads as an IP address, not a host name"),
    "decimal ipv4": (
        "2130706433",
        "ends in a number, so it reads as an IP address, not a host name",
    ),
    "hex ipv4": ("0x7f.1", "ends in a number, so it reads as an IP address, not a host name"),
    "hex last label": ("a.0x7f", "ends in a number, so it reads as an IP address, not a host name"),
    "unicode space": (
        "exa\u3000mple.test",
        "label 'exa\\u3000mple' has characters not allowed in a host name",
    ),
    "ACE prefix on unicode": ("xn--bücher.test", "'xn--bücher' is not a valid international label"),
}


@pytest.mark.parametrize(("raw", "reason"), NORMALIZE_BAD.values(), ids=NORMALIZE_BAD.keys())
def test_normalize_host_bad(raw: str, reason: str) -> None:
    with pytest.raises(InvalidHost) as e:
        normalize_host(raw)
    assert e.value.reason.startswith(reason)
    assert isinstance(e.value, ValueError)


def test_limits_are_the_dns_ones() -> None:
    assert (MAX_NAME_LENGTH, MAX_LABEL_LENGTH) == (253, 63)


# ---------------------------------------------------------------- parse_ip_literal

IP_LITERALS = {
    "ipv4": ("10.0.0.1", ipaddress.ip_address("10.0.0.1")),
    "ipv6": ("2001:db8::1", ipaddress.ip_address("2001:db8::1")),
    "bracketed ipv6": ("[::1]", ipaddress.ip_address("::1")),
    "mapped ipv6": ("::ffff:10.0.0.1", ipaddress.ip_address("::ffff:10.0.0.1")),
    "bracketed ipv4 refused": ("[10.0.0.1]", None),
    "zone id refused": ("fe80::1%eth0", None),
    "bracketed zone id refused": ("[fe80::1%25eth0]", None),
    "short ipv4 is not canonical": ("127.1", None),
    "leading zeros refused": ("010.0.0.1", None),
    "host name": ("example.test", None),
    "empty": ("", None),
    "unclosed bracket": ("[::1", None),
    "port attached": ("10.0.0.1:80", None),
}


@pytest.mark.parametrize(("text", "expected"), IP_LITERALS.values(), ids=IP_LITERALS.keys())
def test_parse_ip_literal(text: str, expected: object) -> None:
    assert parse_ip_literal(text) == expected


# ------------------------------------------------------------------ host patterns

PATTERNS = {
    "exact": ("Example.TEST.", PatternKind.EXACT, "example.test"),
    "subdomains": ("*.example.test", PatternKind.SUBDOMAINS, "example.test"),
    "apex and subdomains": ("**.example.test", PatternKind.APEX_AND_SUBDOMAINS, "example.test"),
    "any": ("*", PatternKind.ANY, ""),
    "idn domain": ("*.bücher.test", PatternKind.SUBDOMAINS, "xn--bcher-kva.test"),
}


@pytest.mark.parametrize(("text", "kind", "domain"), PATTERNS.values(), ids=PATTERNS.keys())
def test_parse_host_pattern(text: str, kind: PatternKind, domain: str) -> None:
    pattern = parse_host_pattern(text)
    assert (pattern.kind, pattern.domain) == (kind, domain)
    assert parse_host_pattern(str(pattern)) == pattern


ONLY_FIRST_LABEL = "a wildcard may only be the whole first label ('*.' or '**.')"
BAD_PATTERNS = {
    "wildcard in the middle": ("a.*.example.test", ONLY_FIRST_LABEL),
    "two wildcard labels": ("*.*.example.test", ONLY_FIRST_LABEL),
    "partial wildcard": ("a*.example.test", ONLY_FIRST_LABEL),
    "suffix wildcard": ("example.*", ONLY_FIRST_LABEL),
    "star glued to dot-star": ("***.example.test", ONLY_FIRST_LABEL),
    "double star alone": ("**", "'**' needs a domain after it"),
    "wildcard and nothing": ("*.", "empty host name"),
    "bad domain": ("*.exa mple.test", "' ' is not allowed in a host name"),
}


@pytest.mark.parametrize(("text", "reason"), BAD_PATTERNS.values(), ids=BAD_PATTERNS.keys())
def test_bad_host_pattern(text: str, reason: str) -> None:
    with pytest.raises(InvalidHost) as e:
        parse_host_pattern(text)
    assert e.value.reason.startswith(reason)


MATCHES = {
    "exact matches itself": ("example.test", "example.test", True),
    "exact not a subdomain": ("example.test", "a.example.test", False),
    "star not the apex": ("*.example.test", "example.test", False),
    "star one level": ("*.example.test", "a.example.test", True),
    "star any depth": ("*.example.test", "a.b.c.example.test", True),
    "star not a suffix lookalike": ("*.example.test", "badexample.test", False),
    "star not a longer tld": ("*.example.test", "a.example.testing", False),
    "double star apex": ("**.example.test", "example.test", True),
    "double star deep": ("**.example.test", "x.y.example.test", True),
    "double star not a sibling": ("**.example.test", "example2.test", False),
    "double star not appended": ("**.example.test", "example.test.evil.test", False),
    "any matches all": ("*", "whatever.test", True),
}


@pytest.mark.parametrize(("pattern", "host", "expected"), MATCHES.values(), ids=MATCHES.keys())
def test_pattern_matches(pattern: str, host: str, expected: bool) -> None:
    assert parse_host_pattern(pattern).matches(host) is expected


BROAD = {
    "any host": ("*", "'*' matches every host"),
    "star on a tld": ("*.com", "*.com matches every name under the top-level domain 'com'"),
    "double star on a tld": ("**.io", "**.io matches every name under the top-level domain 'io'"),
    "star on .test": ("*.test", "*.test matches every name under the top-level domain 'test'"),
    "two-label public suffix": (
        "*.co.uk",
        "*.co.uk matches every name under the public suffix 'co.uk'",
    ),
    "hosting suffix": (
        "**.github.io",
        "**.github.io matches every name under the public suffix 'github.io'",
    ),
    "exact tld is narrow": ("com", None),
    "exact public suffix is narrow": ("github.io", None),
    "wildcard on a registrable domain": ("*.example.com", None),
    "wildcard below a public suffix": ("**.example.co.uk", None),
    "wildcard on a user content domain": ("*.githubusercontent.com", None),
}


@pytest.mark.parametrize(("pattern", "reason"), BROAD.values(), ids=BROAD.keys())
def test_broad_reason(pattern: str, reason: str | None) -> None:
    assert parse_host_pattern(pattern).broad_reason() == reason


# -------------------------------------------------------------------- properties

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
ascii_names = (
    st.lists(label, min_size=1, max_size=5)
    .map(".".join)
    # a numeric last label reads as an IPv4 address ("127.1", "0x7f"): not a name
    .filter(lambda n: not re.fullmatch(r"[0-9]+|0x[0-9a-f]*", n.rsplit(".", 1)[-1]))
)
# Letters that look like Latin ones but are not (Cyrillic and Greek).
LOOKALIKES = {"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "i": "і"}


def _random_case(name: str, flips: list[bool]) -> str:
    """Upper-case the characters whose flip is set (flips may be shorter than name)."""
    return "".join(c.upper() if i < len(flips) and flips[i] else c for i, c in enumerate(name))


@given(ascii_names, st.lists(st.booleans(), max_size=60), st.booleans())
def test_case_and_trailing_dot_do_not_matter(name: str, flips: list[bool], dot: bool) -> None:
    variant = _random_case(name, flips) + ("." if dot else "")
    assert normalize_host(variant) == normalize_host(name) == name
    for prefix in ("", "*.", "**."):
        pattern = parse_host_pattern(prefix + name)
        for host in ("x." + name, name):
            assert pattern.matches(normalize_host(host)) == pattern.matches(
                normalize_host(_random_case(host, flips) + ("." if dot else ""))
            )


@given(ascii_names.filter(lambda n: any(c in LOOKALIKES for c in n)), st.data())
def test_lookalikes_never_match_the_ascii_name(name: str, data: st.DataObject) -> None:
    spots = [i for i, c in enumerate(name) if c in LOOKALIKES]
    spot = data.draw(st.sampled_from(spots))
    spoof = name[:spot] + LOOKALIKES[name[spot]] + name[spot + 1 :]
    normal = normalize_host(spoof)
    assert normal != name
    assert normal.isascii()
    assert "xn--" in normal
    for prefix in ("", "*.", "**."):
        assert not parse_host_pattern(prefix + name).matches(normal)
        assert not parse_host_pattern(prefix + normal).matches(name)


@given(st.text(max_size=80))
def test_normalize_is_total_idempotent_and_ascii(text: str) -> None:
    try:
        normal = normalize_host(text)
    except InvalidHost:
        return
    assert re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", normal)
    assert len(normal) <= MAX_NAME_LENGTH
    assert normalize_host(normal) == normal


@given(ascii_names, st.lists(label, max_size=4))
def test_wildcard_depth(domain: str, below: list[str]) -> None:
    host = ".".join([*below, domain])
    assert parse_host_pattern(domain).matches(host) == (not below)
    assert parse_host_pattern("*." + domain).matches(host) == bool(below)
    assert parse_host_pattern("**." + domain).matches(host)


@given(ascii_names, label)
def test_wildcards_need_a_label_boundary(domain: str, glued: str) -> None:
    host = glued + domain  # e.g. "evil" + "example.test" = "evilexample.test"
    assume(host != domain)
    for prefix in ("*.", "**."):
        assert not parse_host_pattern(prefix + domain).matches(host)
