"""The compiled policy: the model compiled, sent as JSON and read back, decides the same.

Each built-in template and a policy with every field set are compiled and round-tripped
through JSON; `decide()` and `decide_dns()` must give identical decisions (inspect
included) on a table of targets for the pydantic Policy, the compiled one and the one read
back from the wire. Malformed wire documents are refused with a ValueError naming the part.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corridor.policy import TEMPLATES, Policy, Target, decide, decide_dns, resolve_template
from corridor.policy.compiled import (
    CompiledCredential,
    CompiledPolicy,
    CompiledRule,
    compile_policy,
    from_wire,
    to_wire,
)
from corridor.policy.decide import Decision

FULL: dict[str, Any] = {
    "version": 1,
    "mode": "enforce",
    "allow": [
        {
            "host": "api.example.test",
            "ports": [443, 8443],
            "methods": ["GET", "POST"],
            "paths": ["/v1/", "/v2/items"],
            "inspect": True,
            "comment": "the API",
            "origin": "policy.yaml:3 allow[0]",
        },
        {"host": "**.docs.test", "origin": "policy.yaml:9 allow[1]"},
        {"host": "*.cdn.test", "ports": [443]},
        {"host": "*.co.uk", "broad": True, "ports": [8080], "origin": "policy.yaml:12 allow[3]"},
        {"host": "idx.test", "inspect": True, "ports": [443, 80, 3128]},
        {"cidr": "10.20.0.0/16", "ports": [5432], "origin": "policy.yaml:14 allow[5]"},
        {"cidr": "2001:db8::/48"},
        {"host": "mirror.test", "inspect": True},
        {"cidr": "0.0.0.0/0", "broad": True, "ports": [7], "methods": ["GET"]},
    ],
    "deny": [
        {"host": "evil.docs.test", "origin": "policy.yaml:20 deny[0]"},
        {"cidr": "10.20.9.0/24", "ports": [5432]},
        {"host": "*.cdn.test", "ports": [80]},
        {"cidr": "::ffff:0:0/96"},
        {"host": "*", "ports": [23]},
    ],
    "limits": {"max_connections": 50, "max_bytes_out": "10MB"},
    "credentials": [
        {
            "name": "GITHUB_TOKEN",
            "from": "env:GH",
            "hosts": ["api.example.test"],
            "inject": ["bearer", "basic"],
            "ttl": "30m",
        },
        {
            "name": "DOCS_KEY",
            "from": "command:sh -c 'echo x'",
            "hosts": ["**.docs.test", "other.test"],
            "inject": "header:X-Api-Key",
            "template": "token {value}",
            "comment": "k",
        },
        {
            "name": "INDEX_PASSWORD",
            "from": "file:~/pw",
            "hosts": ["idx.test"],
            "inject": "basic",
            "username": "ci-bot",
        },
    ],
}

EXTRA_HOSTS = (
    "other.test",
    "x.co.uk",
    "denied.test",
    "x.y.z.test",
    "API.Example.Test.",
    "bad..name",
)
LITERALS = ("10.20.1.2", "10.20.9.9", "[2001:db8::5]", "1.2.3.4", "::ffff:10.20.9.1", "[::1]")
PORTS = (443, 80, 7, 22, 5432, 8080, 8443, 0, 70000)
REQUESTS = ((None, None), ("GET", "/v1/x"), ("POST", "/admin"), ("GET", "/v1/../admin"))


def full_policy(mode: str = "enforce") -> Policy:
    return Policy.model_validate({**FULL, "mode": mode})


def names_of(policy: Policy) -> list[str]:
    """Names that exercise every host rule: its domain, one and two labels below it."""
    names = list(EXTRA_HOSTS)
    for rule in [*policy.allow, *policy.deny]:
        if rule.pattern is not None and rule.pattern.domain:
            names += [rule.pattern.domain, "a." + rule.pattern.domain, "a.b." + rule.pattern.domain]
    return names


def targets_of(policy: Policy) -> Iterator[Target]:
    """Names, literals and bare addresses on every port, with and without a request."""
    addresses = [ipaddress.ip_address("2001:db9::1"), ipaddress.ip_address("192.0.2.1")]
    for rule in [*policy.allow, *policy.deny]:
        if rule.cidr is not None:
            addresses += [rule.cidr.network_address, rule.cidr.network_address + 1]
    for port in PORTS:
        for method, path in REQUESTS:
            for host in [*names_of(policy), *LITERALS]:
                yield Target(host, port, method=method, path=path)
            for address in addresses:
                yield Target(None, port, address, method, path)
            # A literal that differs from the connection's address is malformed.
            yield Target("10.20.1.2", port, ipaddress.ip_address("10.20.1.3"))


def answer(d: Decision) -> tuple[bool, str, str | None, bool, bool]:
    # Decision equality leaves out `inspect`: compare it too.
    return (d.allowed, d.reason, d.rule, d.would_deny, d.inspect)


def round_trip(compiled: CompiledPolicy) -> CompiledPolicy:
    return from_wire(json.loads(json.dumps(to_wire(compiled))))


def assert_same_decisions(policy: Policy) -> int:
    compiled = compile_policy(policy)
    wired = round_trip(compiled)
    assert wired == compiled
    count = 0
    for target in targets_of(policy):
        expected = answer(decide(policy, target))
        assert answer(decide(compiled, target)) == expected, target
        assert answer(decide(wired, target)) == expected, target
        count += 1
    for name in names_of(policy):
        expected = answer(decide_dns(policy, name))
        assert answer(decide_dns(compiled, name)) == expected, name
        assert answer(decide_dns(wired, name)) == expected, name
    return count


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_each_template_compiles_and_decides_the_same(name: str, quiet_machine: Path) -> None:
    assert assert_same_decisions(resolve_template(name).policy) > 0


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_a_policy_with_every_field_decides_the_same(mode: str) -> None:
    policy = full_policy(mode)
    assert assert_same_decisions(policy) > 1000
    # The table reaches every kind of answer, so the comparison above means something.
    reasons = {decide(policy, t).reason for t in targets_of(policy)}
    assert reasons >= {
        "allowed by rule",
        "denied by rule",
        "no rule allows this host",
        "no rule allows this address",
        "no rule allows this port",
        "no rule allows this method",
        "no rule allows this path",
        "ip literal not allowed",
        "invalid host name",
        "invalid port",
        "ip literal differs from address",
    }
    assert any(decide(policy, t).inspect for t in targets_of(policy))


def test_every_field_survives_the_round_trip() -> None:
    compiled = compile_policy(full_policy("audit"))
    wired = round_trip(compiled)
    assert wired == compiled
    assert wired.mode == "audit"
    assert wired.limits.max_connections == 50 and wired.limits.max_bytes_out == 10_000_000
    api = wired.allow[0]
    assert (api.host, api.ports, api.methods, api.paths, api.inspect, api.origin) == (
        "api.example.test",
        (443, 8443),
        ("GET", "POST"),
        ("/v1/", "/v2/items"),
        True,
        "policy.yaml:3 allow[0]",
    )
    assert wired.allow[3].broad and str(wired.allow[3].pattern) == "*.co.uk"
    assert str(wired.deny[-1].pattern) == "*" and wired.deny[-1].ports == (23,)
    assert wired.allow[6].cidr == ipaddress.ip_network("2001:db8::/48")
    github, docs, index = wired.credentials
    assert github.ttl == 1800 and [str(i) for i in github.injections] == ["bearer", "basic"]
    assert docs.source_parsed.argv == ("sh", "-c", "echo x")
    assert docs.injections[0].template == "token {value}"
    assert docs.binds("a.docs.test") and docs.binds("other.test") and not docs.binds("x.test")
    assert index.username == "ci-bot" and index.source_parsed.describe() == "file:~/pw"
    assert wired.bound_to_credential("idx.test") and not wired.bound_to_credential("x.test")


def test_the_compiled_credential_carries_what_the_broker_reads() -> None:
    policy = full_policy()
    for spec, compiled in zip(
        policy.credentials or (), compile_policy(policy).credentials, strict=True
    ):
        assert compiled.name == spec.name
        assert compiled.source_parsed == spec.source_parsed
        assert compiled.hosts == tuple(spec.hosts)
        assert compiled.patterns == spec.patterns
        assert compiled.injections == spec.injections
        assert (compiled.username, compiled.ttl) == (spec.username, spec.ttl)


def test_the_wire_is_plain_json_data() -> None:
    def walk(value: object) -> None:
        assert type(value) in (str, int, bool, list, dict, type(None)), value
        if isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            assert all(type(key) is str for key in value)
            for item in value.values():
                walk(item)

    walk(to_wire(compile_policy(full_policy())))


def test_compiling_a_compiled_policy_returns_it() -> None:
    compiled = compile_policy(full_policy())
    assert compile_policy(compiled) is compiled


def test_an_empty_policy() -> None:
    compiled = compile_policy(Policy())
    assert compiled == CompiledPolicy() and round_trip(compiled) == compiled
    assert decide(compiled, Target("a.test", 443)) == Decision(
        False, "no rule allows this host", None
    )


def test_rules_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="exactly one of host and cidr"):
        CompiledRule(host=None, cidr=None)
    with pytest.raises(ValueError, match="exactly one of host and cidr"):
        CompiledRule(host="a.test", cidr=ipaddress.ip_network("10.0.0.0/8"))
    with pytest.raises(ValueError, match="not in canonical form"):
        CompiledRule(host="A.Test", cidr=None)


def good() -> dict[str, Any]:
    return to_wire(compile_policy(full_policy()))


def broken(change: Any) -> dict[str, Any]:
    data = good()
    change(data)
    return data


def set_in(path: tuple[Any, ...], value: Any) -> Any:
    def change(data: Any) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value

    return change


BAD_WIRE: dict[str, tuple[Any, str]] = {
    "not a dict": ([1, 2], "policy: expected keys"),
    "unknown key": (broken(set_in(("extra",), 1)), "policy: expected keys"),
    "missing key": (broken(lambda d: d.pop("deny")), "policy: expected keys"),
    "other wire version": (broken(set_in(("wire",), 2)), "wire version 2"),
    "bool as version": (broken(set_in(("wire",), True)), "wire version True"),
    "unknown mode": (broken(set_in(("mode",), "learn")), "mode 'learn'"),
    "rules not a list": (broken(set_in(("allow",), {})), "allow: expected a list"),
    "port out of range": (broken(set_in(("allow", 0, "ports", 0), 0)), r"allow\[0\].ports\[0\]"),
    "bool as port": (broken(set_in(("allow", 0, "ports", 1), True)), r"allow\[0\].ports\[1\]"),
    "method not text": (broken(set_in(("allow", 0, "methods", 0), 7)), r"methods\[0\]"),
    "inspect not bool": (broken(set_in(("allow", 0, "inspect"), 1)), r"allow\[0\].inspect"),
    "invalid host": (broken(set_in(("allow", 1, "host"), "a..b")), r"allow\[1\]: empty label"),
    "host and cidr": (
        broken(set_in(("deny", 0, "cidr"), "10.0.0.0/8")),
        r"deny\[0\]: a rule needs exactly one",
    ),
    "cidr with host bits": (
        broken(set_in(("allow", 5, "cidr"), "10.20.0.1/16")),
        r"allow\[5\]: 10.20.0.1/16 has host bits set",
    ),
    "limit negative": (
        broken(set_in(("limits", "max_bytes_out"), -1)),
        "limits.max_bytes_out",
    ),
    "limit zero connections": (
        broken(set_in(("limits", "max_connections"), 0)),
        "limits.max_connections",
    ),
    "unknown source kind": (
        broken(set_in(("credentials", 0, "source", "kind"), "vault")),
        r"credentials\[0\].source.kind 'vault'",
    ),
    "command without argv": (
        broken(set_in(("credentials", 1, "source", "argv"), [])),
        r"credentials\[1\].source.argv does not fit",
    ),
    "unknown injection": (
        broken(set_in(("credentials", 0, "injections", 0, "kind"), "cookie")),
        r"injections\[0\].kind 'cookie'",
    ),
    "template without slot": (
        broken(set_in(("credentials", 1, "injections", 0, "template"), "token")),
        r"injections\[0\].template",
    ),
    "ttl zero": (broken(set_in(("credentials", 0, "ttl"), 0)), r"credentials\[0\].ttl"),
    "no hosts": (broken(set_in(("credentials", 0, "hosts"), [])), r"credentials\[0\]: .*needs"),
    "credential host invalid": (
        broken(set_in(("credentials", 2, "hosts", 0), "a b.test")),
        r"credentials\[2\]: ' ' is not allowed",
    ),
}


@pytest.mark.parametrize(("data", "message"), BAD_WIRE.values(), ids=BAD_WIRE.keys())
def test_a_malformed_wire_is_refused(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_wire(data)


def test_the_good_wire_reads() -> None:
    # The table above breaks this document one part at a time: whole, it reads.
    assert isinstance(from_wire(good()), CompiledPolicy)
    assert isinstance(from_wire(good()).credentials[0], CompiledCredential)
