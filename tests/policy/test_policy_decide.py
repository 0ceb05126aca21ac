"""decide() and decide_dns(): named cases asserting exact reasons and rules, then properties."""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corridor.policy import Decision, Policy, Rule, Target, decide, decide_dns, load_policy

POLICY = """\
version: 1
allow:
  - host: "**.example.test"
    ports: [443]
  - host: "*.cdn.test"
  - host: api.service.test
    methods: [GET, HEAD]
    paths: ["/v1/"]
  - cidr: 10.20.0.0/16
    ports: [5432]
  - cidr: "2001:db8::/32"
  - host: bücher.test
  - host: files.test
    ports: [443, 8443]
deny:
  - host: uploads.example.test
  - cidr: 169.254.0.0/16
  - host: files.test
    ports: [8443]
"""
STAR_EXAMPLE = "policy.yaml:3 allow[0]"
STAR_CDN = "policy.yaml:5 allow[1]"
API = "policy.yaml:6 allow[2]"
CIDR_10_20 = "policy.yaml:9 allow[3]"
CIDR_V6 = "policy.yaml:11 allow[4]"
BUECHER = "policy.yaml:12 allow[5]"
FILES = "policy.yaml:13 allow[6]"
DENY_UPLOADS = "policy.yaml:16 deny[0]"
DENY_LINK_LOCAL = "policy.yaml:17 deny[1]"
DENY_FILES_8443 = "policy.yaml:18 deny[2]"


def _load(tmp: Path, text: str) -> Policy:
    (tmp / "policy.yaml").write_text(text, encoding="utf-8")
    with contextlib.chdir(tmp):  # so origins read "policy.yaml:LINE ..."
        return load_policy(Path("policy.yaml"))


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    return _load(tmp_path_factory.mktemp("enforce"), POLICY)


@pytest.fixture(scope="module")
def audit_policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    return _load(tmp_path_factory.mktemp("audit"), POLICY + "mode: audit\n")


A = ipaddress.ip_address
ALLOW, DENY = True, False

CASES: dict[str, tuple[Target, bool, str, str | None]] = {
    # host patterns
    "apex by **": (Target("example.test", 443), ALLOW, "allowed by rule", STAR_EXAMPLE),
    "deep subdomain by **": (
        Target("a.b.example.test", 443),
        ALLOW,
        "allowed by rule",
        STAR_EXAMPLE,
    ),
    "case and trailing dot": (
        Target("A.Example.TEST.", 443),
        ALLOW,
        "allowed by rule",
        STAR_EXAMPLE,
    ),
    "ideographic dot": (Target("a.example\u3002test", 443), ALLOW, "allowed by rule", STAR_EXAMPLE),
    "* is not the apex": (Target("cdn.test", 443), DENY, "no rule allows this host", None),
    "* takes a subdomain": (Target("img.cdn.test", 443), ALLOW, "allowed by rule", STAR_CDN),
    "suffix glued on": (Target("evilexample.test", 443), DENY, "no rule allows this host", None),
    "suffix appended": (
        Target("example.test.evil.test", 443),
        DENY,
        "no rule allows this host",
        None,
    ),
    "unknown host": (Target("other.test", 443), DENY, "no rule allows this host", None),
    # ports
    "port not listed": (Target("example.test", 80), DENY, "no rule allows this port", None),
    "default port 80": (Target("img.cdn.test", 80), ALLOW, "allowed by rule", STAR_CDN),
    "not a default port": (Target("img.cdn.test", 8080), DENY, "no rule allows this port", None),
    "port 0": (Target("example.test", 0), DENY, "invalid port", None),
    "port 65536": (Target("example.test", 65536), DENY, "invalid port", None),
    "port 65535 is valid": (Target("example.test", 65535), DENY, "no rule allows this port", None),
    # deny wins
    "deny wins over **": (
        Target("uploads.example.test", 443),
        DENY,
        "denied by rule",
        DENY_UPLOADS,
    ),
    "exact deny spares subdomains": (
        Target("x.uploads.example.test", 443),
        ALLOW,
        "allowed by rule",
        STAR_EXAMPLE,
    ),
    "deny on its port": (Target("files.test", 8443), DENY, "denied by rule", DENY_FILES_8443),
    "deny not on other ports": (Target("files.test", 443), ALLOW, "allowed by rule", FILES),
    "deny cidr on a named target": (
        Target("a.example.test", 443, address=A("169.254.169.254")),
        DENY,
        "denied by rule",
        DENY_LINK_LOCAL,
    ),
    "deny cidr by address": (
        Target(None, 80, address=A("169.254.169.254")),
        DENY,
        "denied by rule",
        DENY_LINK_LOCAL,
    ),
    "deny cidr by ipv4-mapped address": (
        Target(None, 80, address=A("::ffff:169.254.169.254")),
        DENY,
        "denied by rule",
        DENY_LINK_LOCAL,
    ),
    "deny cidr by ip literal": (
        Target("169.254.169.254", 80),
        DENY,
        "denied by rule",
        DENY_LINK_LOCAL,
    ),
    # methods and paths
    "method and path ok": (
        Target("api.service.test", 443, method="GET", path="/v1/items"),
        ALLOW,
        "allowed by rule",
        API,
    ),
    "query is not the path": (
        Target("api.service.test", 443, method="HEAD", path="/v1/?next=/admin"),
        ALLOW,
        "allowed by rule",
        API,
    ),
    "method not listed": (
        Target("api.service.test", 443, method="POST", path="/v1/items"),
        DENY,
        "no rule allows this method",
        None,
    ),
    "method is case sensitive": (
        Target("api.service.test", 443, method="get", path="/v1/items"),
        DENY,
        "no rule allows this method",
        None,
    ),
    "path not listed": (
        Target("api.service.test", 443, method="GET", path="/v2/items"),
        DENY,
        "no rule allows this path",
        None,
    ),
    "dot-dot segment": (
        Target("api.service.test", 443, method="GET", path="/v1/../admin"),
        DENY,
        "no rule allows this path",
        None,
    ),
    "encoded dot-dot": (
        Target("api.service.test", 443, method="GET", path="/v1/%2e%2E/admin"),
        DENY,
        "no rule allows this path",
        None,
    ),
    "encoded slash": (
        Target("api.service.test", 443, method="GET", path="/v1%2fx"),
        DENY,
        "no rule allows this path",
        None,
    ),
    "backslash": (
        Target("api.service.test", 443, method="GET", path="/v1/..\\admin"),
        DENY,
        "no rule allows this path",
        None,
    ),
    "absolute form is not a path": (
        Target("api.service.test", 443, method="GET", path="http://api.service.test/v1/"),
        DENY,
        "no rule allows this path",
        None,
    ),
    "no request seen yet": (Target("api.service.test", 443), ALLOW, "allowed by rule", API),
    "path known, method not": (
        Target("api.service.test", 443, path="/v1/x"),
        ALLOW,
        "allowed by rule",
        API,
    ),
    "method known, path not": (
        Target("api.service.test", 443, method="DELETE"),
        DENY,
        "no rule allows this method",
        None,
    ),
    # international names
    "idn unicode": (Target("BÜCHER.test", 443), ALLOW, "allowed by rule", BUECHER),
    "idn punycode": (Target("xn--bcher-kva.test", 443), ALLOW, "allowed by rule", BUECHER),
    "cyrillic look-alike": (Target("ехample.test", 443), DENY, "no rule allows this host", None),
    # addresses
    "cidr by address": (
        Target(None, 5432, address=A("10.20.1.2")),
        ALLOW,
        "allowed by rule",
        CIDR_10_20,
    ),
    "cidr wrong port": (
        Target(None, 443, address=A("10.20.1.2")),
        DENY,
        "no rule allows this port",
        None,
    ),
    "cidr just outside": (
        Target(None, 5432, address=A("10.21.0.0")),
        DENY,
        "no rule allows this address",
        None,
    ),
    "cidr last address": (
        Target(None, 5432, address=A("10.20.255.255")),
        ALLOW,
        "allowed by rule",
        CIDR_10_20,
    ),
    "ip literal in a cidr": (Target("10.20.1.2", 5432), ALLOW, "allowed by rule", CIDR_10_20),
    "ipv6 literal bracketed": (Target("[2001:db8::5]", 443), ALLOW, "allowed by rule", CIDR_V6),
    "ipv6 literal bare": (Target("2001:db8::5", 80), ALLOW, "allowed by rule", CIDR_V6),
    "ip literal not allowed": (Target("192.0.2.1", 443), DENY, "ip literal not allowed", None),
    "mapped address is not the v4 allow": (
        Target(None, 5432, address=A("::ffff:10.20.1.2")),
        DENY,
        "no rule allows this address",
        None,
    ),
    "literal differs from address": (
        Target("10.20.1.2", 5432, address=A("10.20.1.3")),
        DENY,
        "ip literal differs from address",
        None,
    ),
    "a name is not allowed by a cidr": (
        Target("db.test", 5432, address=A("10.20.1.2")),
        DENY,
        "no rule allows this host",
        None,
    ),
    # malformed
    "invalid host": (Target("exa mple.test", 443), DENY, "invalid host name", None),
    "empty host": (Target("", 443), DENY, "invalid host name", None),
    "NUL in host": (Target("example.test\x00.evil", 443), DENY, "invalid host name", None),
    "short ipv4 form": (Target("127.1", 443), DENY, "invalid host name", None),
    "zone id": (Target("fe80::1%eth0", 443), DENY, "invalid host name", None),
    "nothing known": (Target(None, 443), DENY, "no host or address", None),
}


@pytest.mark.parametrize(("target", "allowed", "reason", "rule"), CASES.values(), ids=CASES.keys())
def test_decide(
    policy: Policy, target: Target, allowed: bool, reason: str, rule: str | None
) -> None:
    assert decide(policy, target) == Decision(allowed, reason, rule)


# Malformed input is refused in audit mode too; every policy denial is let through, marked.
ALWAYS_DENIED = {
    "invalid port",
    "invalid host name",
    "no host or address",
    "ip literal differs from address",
}


@pytest.mark.parametrize(("target", "allowed", "reason", "rule"), CASES.values(), ids=CASES.keys())
def test_decide_audit(
    audit_policy: Policy, target: Target, allowed: bool, reason: str, rule: str | None
) -> None:
    if allowed:
        expected = Decision(True, reason, rule)
    elif reason in ALWAYS_DENIED:
        expected = Decision(False, reason, rule)
    else:
        expected = Decision(True, reason, rule, would_deny=True)
    assert decide(audit_policy, target) == expected


DNS_CASES: dict[str, tuple[str, bool, str, str | None]] = {
    "allowed apex": ("example.test", ALLOW, "allowed by rule", STAR_EXAMPLE),
    "allowed any port": ("img.cdn.test", ALLOW, "allowed by rule", STAR_CDN),
    "case and dot": ("IMG.CDN.TEST.", ALLOW, "allowed by rule", STAR_CDN),
    "denied on every port": ("uploads.example.test", DENY, "denied by rule", DENY_UPLOADS),
    "denied on some ports only": ("files.test", ALLOW, "allowed by rule", FILES),
    "not allowed": ("cdn.test", DENY, "no rule allows this host", None),
    "look-alike": ("ехample.test", DENY, "no rule allows this host", None),
    "idn": ("bücher.test", ALLOW, "allowed by rule", BUECHER),
    "invalid": ("bad name.test", DENY, "invalid host name", None),
    "address text": ("10.20.1.2", DENY, "invalid host name", None),
}


@pytest.mark.parametrize(
    ("name", "allowed", "reason", "rule"), DNS_CASES.values(), ids=DNS_CASES.keys()
)
def test_decide_dns(
    policy: Policy, name: str, allowed: bool, reason: str, rule: str | None
) -> None:
    assert decide_dns(policy, name) == Decision(allowed, reason, rule)


def test_decide_dns_audit(audit_policy: Policy) -> None:
    assert decide_dns(audit_policy, "cdn.test") == Decision(
        True, "no rule allows this host", None, would_deny=True
    )
    assert decide_dns(audit_policy, "uploads.example.test") == Decision(
        True, "denied by rule", DENY_UPLOADS, would_deny=True
    )
    assert decide_dns(audit_policy, "bad name") == Decision(False, "invalid host name", None)


def test_empty_policy_denies_everything() -> None:
    empty = Policy()
    assert decide(empty, Target("example.test", 443)) == Decision(
        False, "no rule allows this host", None
    )
    assert decide(empty, Target(None, 443, address=A("10.0.0.1"))) == Decision(
        False, "no rule allows this address", None
    )
    assert decide_dns(empty, "example.test") == Decision(False, "no rule allows this host", None)


def test_rules_without_origin_are_named_by_pattern() -> None:
    policy = Policy(allow=[Rule(host="a.test")], deny=[Rule(cidr="10.0.0.0/8")])
    assert decide(policy, Target("a.test", 443)).rule == "a.test"
    assert decide(policy, Target(None, 443, address=A("10.1.2.3"))).rule == "10.0.0.0/8"


def test_first_matching_allow_rule_decides() -> None:
    policy = Policy(
        allow=[
            Rule(host="**.a.test", ports=[8080], origin="first"),
            Rule(host="x.a.test", origin="second"),
            Rule(host="x.a.test", origin="third"),
        ]
    )
    assert decide(policy, Target("x.a.test", 443)).rule == "second"
    assert decide(policy, Target("x.a.test", 8080)).rule == "first"


def test_closest_rule_names_the_reason() -> None:
    policy = Policy(
        allow=[
            Rule(host="a.test", ports=[22]),
            Rule(host="a.test", ports=[443], methods=["GET"], paths=["/x/"]),
        ]
    )
    # The second rule got further (port matched, then the path failed).
    target = Target("a.test", 443, method="GET", path="/y")
    assert decide(policy, target).reason == "no rule allows this path"


# -------------------------------------------------------------------- properties

names = st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,3}\.test", fullmatch=True)
ports = st.integers(min_value=1, max_value=65535)
port_lists = st.lists(ports, min_size=1, max_size=4, unique=True)


@given(names, port_lists, ports)
def test_allow_exactly_on_listed_ports(name: str, listed: list[int], port: int) -> None:
    policy = Policy(allow=[Rule(host=name, ports=listed, origin="r")])
    decision = decide(policy, Target(name, port))
    if port in listed:
        assert decision == Decision(True, "allowed by rule", "r")
    else:
        assert decision == Decision(False, "no rule allows this port", None)


@given(names, ports)
def test_default_ports_are_443_and_80(name: str, port: int) -> None:
    policy = Policy(allow=[Rule(host=name)])
    assert decide(policy, Target(name, port)).allowed == (port in (443, 80))


@given(
    names,
    st.lists(st.sampled_from(["", "*.", "**."]), min_size=1, max_size=3),
    st.lists(st.sampled_from(["", "*.", "**."]), min_size=1, max_size=3),
    st.booleans(),
    ports,
)
def test_deny_always_wins(
    name: str, allow_kinds: list[str], deny_kinds: list[str], sub: bool, port: int
) -> None:
    host = ("x." if sub else "") + name
    allow = [
        Rule(host=k + name, ports=[port], origin=f"allow{i}") for i, k in enumerate(allow_kinds)
    ]
    deny = [Rule(host=k + name, origin=f"deny{i}") for i, k in enumerate(deny_kinds)]
    decision = decide(Policy(allow=allow, deny=deny), Target(host, port))
    first_deny = next((r for r in deny if r.pattern is not None and r.pattern.matches(host)), None)
    if first_deny is not None:
        assert decision == Decision(False, "denied by rule", first_deny.origin)
    else:
        assert decision.reason != "denied by rule"


def _random_case(name: str, flips: list[bool]) -> str:
    return "".join(c.upper() if i < len(flips) and flips[i] else c for i, c in enumerate(name))


@given(names, st.lists(st.booleans(), max_size=40), st.booleans(), ports)
def test_decision_ignores_case_and_trailing_dot(
    name: str, flips: list[bool], dot: bool, port: int
) -> None:
    policy = Policy(
        allow=[Rule(host="**." + name, ports=[443, 8443])], deny=[Rule(host="x." + name)]
    )
    for host in (name, "x." + name, "y." + name):
        variant = _random_case(host, flips) + ("." if dot else "")
        assert decide(policy, Target(variant, port)) == decide(policy, Target(host, port))
        assert decide_dns(policy, variant) == decide_dns(policy, host)


@given(st.text(max_size=60), st.integers(min_value=-5, max_value=70000), st.booleans())
def test_decide_never_raises(host: str, port: int, audit: bool) -> None:
    policy = Policy(
        mode="audit" if audit else "enforce",
        allow=[Rule(host="**.example.test"), Rule(cidr="10.0.0.0/8")],
        deny=[Rule(host="bad.example.test")],
    )
    decision = decide(policy, Target(host, port))
    assert decision.reason
    assert decision.allowed == (decision.reason == "allowed by rule" or decision.would_deny)
    assert isinstance(decide_dns(policy, host), Decision)
