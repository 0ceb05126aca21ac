"""`--allow` values, and the policy record, without the policy model.

`corridor run --allow api.example.com -- CMD` needs no policy file: its policy is a list
of allow rules read from the flags. Building it straight into the compiled form
(`corridor.policy.compiled`) keeps pydantic and the model's validators (about 60 ms of
imports) off the start of such runs. The file loader (`corridor.policy.load`) reads
`--allow` values with the same `parse_allow_flag`, so both paths accept and refuse the
same values with the same messages.

The record is the policy as the session's start event shows it (what `policy_to_dict`
makes of the model), and `record_hash` the hash over its meaning: the same for a policy
however it was built (tests compare both paths).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import shlex
from collections.abc import Iterable, Sequence
from typing import Any

from corridor.errors import UserError
from corridor.policy.compiled import CompiledPolicy, CompiledRule
from corridor.policy.constants import (
    BROAD_IPV4_PREFIX,
    BROAD_IPV6_PREFIX,
    MAX_PORT,
    MIN_PORT,
    POLICY_VERSION,
)
from corridor.policy.hosts import (
    InvalidHost,
    InvalidNetwork,
    IPNetwork,
    parse_host_pattern,
    parse_ip_literal,
    parse_network,
)

FLAG_HINT = (
    "use HOST, HOST:PORT, *.DOMAIN, **.DOMAIN, ADDRESS, [IPv6]:PORT, "
    "ADDRESS/LEN or ADDRESS/LEN:PORT"
)
PORT_HINT = "a port is a whole number from 1 to 65535, e.g. api.example.com:443"
# The rule lists of a policy, and what the hash leaves out of each rule: where a rule was
# written and what its comment says do not change what it allows.
RULE_LISTS = ("allow", "deny")
_NOT_MEANING = ("origin", "comment")


class PolicyError(UserError):
    """A policy file or `--allow` value that cannot be used.

    `problems` lists every problem found (the message shows the first one), each as a
    full line "FILE:LINE:COL: FIELD: WHAT".
    """

    def __init__(self, message: str, hint: str | None = None, problems: Sequence[str] = ()):
        super().__init__(message, hint)
        self.problems: tuple[str, ...] = tuple(problems) or (message,)


class _FlagProblem(Exception):
    def __init__(self, reason: str, hint: str = FLAG_HINT):
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


# ---- one --allow value -------------------------------------------------------------------


def parse_allow_flag(value: str) -> CompiledRule:
    """Turn one `--allow` value into an allow rule whose origin is "--allow VALUE".

    Accepted: "api.example.com", "*.example.com", "api.example.com:8443",
    "10.0.0.1", "[2001:db8::1]:443", "10.0.0.0/8", "10.0.0.0/8:5432".
    Without a port the rule allows the default ports (443, 80). Broad values (a wildcard
    on a public suffix, a very wide range) are refused: a file can say `broad: true`.
    """
    try:
        rule = _flag_rule(value)
    except _FlagProblem as e:
        raise PolicyError(f"--allow {_quote(value)}: {e.reason}", e.hint) from None
    reason = broad_reason(rule)
    if reason is not None:
        raise PolicyError(
            f"--allow {_quote(value)}: {reason}, which is broad",
            "narrow it; a broad rule can only be written in a policy file, with 'broad: true'",
        )
    return rule


def broad_reason(rule: CompiledRule) -> str | None:
    """Why `rule` reaches many unrelated hosts or networks, or None."""
    if rule.pattern is not None:
        return rule.pattern.broad_reason()
    assert rule.cidr is not None  # a rule has one of them (CompiledRule checks)
    limit = BROAD_IPV4_PREFIX if rule.cidr.version == 4 else BROAD_IPV6_PREFIX
    if rule.cidr.prefixlen < limit:
        return f"{rule.cidr} is wider than a /{limit}"
    return None


def _quote(value: str) -> str:
    """The value as the user would type it, always in quotes so its edges show."""
    return f"'{value}'" if "'" not in value else shlex.quote(value)


def _flag_rule(value: str) -> CompiledRule:
    if value == "":
        raise _FlagProblem("empty value")
    if "://" in value:
        raise _FlagProblem("a URL is not a host", "give the host name only, e.g. api.example.com")
    origin = f"--allow {value}"
    target, port_text = _split_port(value)
    ports = None if port_text is None else (_flag_port(port_text),)
    address = parse_ip_literal(target)
    if "/" in target or address is not None:
        return CompiledRule(None, _flag_cidr(target, address), ports=ports, origin=origin)
    try:
        pattern = parse_host_pattern(target)
    except InvalidHost as e:
        raise _FlagProblem(e.reason) from None
    return CompiledRule(str(pattern), None, ports=ports, origin=origin)


def _split_port(value: str) -> tuple[str, str | None]:
    """Split "TARGET[:PORT]"; an IPv6 address needs brackets to carry a port."""
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise _FlagProblem("'[' without ']'")
        inner, rest = value[1:close], value[close + 1 :]
        prefix, sep, port = rest.partition(":")
        if prefix and not prefix.startswith("/"):
            raise _FlagProblem(f"unexpected {rest!r} after ']'")
        if parse_ip_literal(f"[{inner}]") is None:
            raise _FlagProblem(f"{inner!r} is not an IPv6 address", "brackets hold IPv6 addresses")
        return inner + prefix, port if sep else None
    if "/" in value:
        address, _, rest = value.partition("/")
        length, sep, port = rest.partition(":")
        return f"{address}/{length}", port if sep else None
    if value.count(":") > 1:
        return value, None  # a bare IPv6 address: no port without brackets
    target, sep, port = value.partition(":")
    return target, port if sep else None


def _flag_port(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise _FlagProblem(f"{text!r} is not a port", PORT_HINT)
    port = int(text)
    if not MIN_PORT <= port <= MAX_PORT:
        raise _FlagProblem(f"{port} is not a port ({MIN_PORT}-{MAX_PORT})", PORT_HINT)
    return port


def _flag_cidr(target: str, address: object) -> IPNetwork:
    if address is not None:
        return ipaddress.ip_network(address)  # type: ignore[arg-type]
    try:
        return parse_network(target)
    except InvalidNetwork as e:
        if e.fixed is None:
            raise _FlagProblem(f"{target!r} is not an address range") from None
        raise _FlagProblem(
            f"{target!r} has bits set after the prefix", f"did you mean {e.fixed}?"
        ) from None


def policy_from_allow_flags(values: Iterable[str], mode: str | None = None) -> CompiledPolicy:
    """The policy of a run with `--allow` values and no policy file: those allow rules,
    enforced unless `mode` says otherwise. No values: nothing is allowed."""
    rules = tuple(parse_allow_flag(value) for value in values)
    return CompiledPolicy(mode="audit" if mode == "audit" else "enforce", allow=rules)


# ---- the record and its hash ---------------------------------------------------------------


def record_of(policy: CompiledPolicy) -> dict[str, Any]:
    """The record (`policy_to_dict`'s form) of a policy built from flags.

    Only what flags can build is here: a compiled policy with credentials (from a file)
    has its record from the model, which still knows how each was written.
    """
    if policy.credentials:
        raise ValueError("a policy with credentials has its record from the model")
    limits = {
        name: value
        for name in ("max_connections", "max_bytes_out")
        if (value := getattr(policy.limits, name)) is not None
    }
    return {
        "version": POLICY_VERSION,
        "extends": [],
        "mode": policy.mode,
        "allow": [_rule_record(rule) for rule in policy.allow],
        "deny": [_rule_record(rule) for rule in policy.deny],
        "limits": limits,
    }


def _rule_record(rule: CompiledRule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rule.host is not None:
        out["host"] = rule.host
    if rule.cidr is not None:
        out["cidr"] = str(rule.cidr)
    for name in ("ports", "methods", "paths"):
        value = getattr(rule, name)
        if value is not None:
            out[name] = list(value)
    out["inspect"] = rule.inspect
    out["broad"] = rule.broad
    out["origin"] = rule.origin
    return out


def describe(policy: Any) -> tuple[dict[str, Any], str]:
    """The record and hash of a policy: the model's (`policy_to_dict`) for a model, built
    here for a compiled policy from flags (no model loaded)."""
    if isinstance(policy, CompiledPolicy):
        record = record_of(policy)
    else:
        from corridor.policy.load import policy_to_dict

        record = policy_to_dict(policy)
    return record, record_hash(record)


def canonical_record(record: dict[str, Any]) -> dict[str, Any]:
    """What `record_hash` covers: the rules' meaning, not where they were written.

    Origins, comments and the `extends` list are left out, so moving a rule to another
    line or file, or rewording a comment, keeps the hash.
    """
    data = dict(record)
    data.pop("extends", None)
    for name in RULE_LISTS:
        data[name] = [
            {k: v for k, v in rule.items() if k not in _NOT_MEANING} for rule in data[name]
        ]
    return data


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON form of a policy record."""
    text = json.dumps(canonical_record(record), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()
