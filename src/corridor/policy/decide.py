"""The policy decision: may the sandbox reach this destination? Pure, no I/O.

`decide` is the one function a reviewer needs to read: every exit sets the result, a
machine-stable reason and the rule that decided, together.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from corridor.policy.constants import DEFAULT_ALLOW_PORTS, MAX_PORT, MIN_PORT
from corridor.policy.hosts import InvalidHost, IPAddress, normalize_host, parse_ip_literal

if TYPE_CHECKING:
    # Only for hints: the gateway decides on the compiled policy and never loads pydantic.
    from corridor.policy.compiled import CompiledPolicy, CompiledRule
    from corridor.policy.model import Policy, Rule

    # `decide` reads the same attributes of either form (corridor.policy.compiled).
    AnyPolicy: TypeAlias = Policy | CompiledPolicy
    AnyRule: TypeAlias = Rule | CompiledRule

# Reasons: stable strings, matched by tests, logs and reports.
ALLOWED_BY_RULE = "allowed by rule"
DENIED_BY_RULE = "denied by rule"
NO_RULE_FOR_HOST = "no rule allows this host"
NO_RULE_FOR_ADDRESS = "no rule allows this address"
NO_RULE_FOR_PORT = "no rule allows this port"
NO_RULE_FOR_METHOD = "no rule allows this method"
NO_RULE_FOR_PATH = "no rule allows this path"
IP_LITERAL_NOT_ALLOWED = "ip literal not allowed"
INVALID_HOST = "invalid host name"
INVALID_PORT = "invalid port"
NO_DESTINATION = "no host or address"
LITERAL_MISMATCH = "ip literal differs from address"

# When no allow rule admits a target, the reason names how far the closest rule got.
_PROGRESS = (NO_RULE_FOR_PORT, NO_RULE_FOR_METHOD, NO_RULE_FOR_PATH)
# A path that a server may resolve to somewhere else than its text says ("/v1/../admin",
# encoded dots or slashes, backslashes) never matches a path prefix: fail closed.
_AMBIGUOUS_PATH = re.compile(r"(?:^|/)\.\.?(?:/|$)|%2[eEfF]|%5[cC]|\\")


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one destination.

    `allowed` is whether traffic may pass (True in audit mode even for a would-deny);
    `reason` is one of the reason constants above; `rule` is the origin of the rule that
    decided, None when nothing matched (default deny); `would_deny` marks an audit-mode
    pass that enforce mode would have denied.
    """

    allowed: bool
    reason: str
    rule: str | None
    would_deny: bool = False
    # The allowing rule asks to see the requests (`inspect: true`, `methods` or `paths`):
    # the gateway terminates TLS for this host and checks each request. Not part of
    # equality: two decisions are the same answer (result, reason, rule) either way.
    inspect: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Target:
    """A destination as the gateway sees it.

    `host` is the name the client gave (raw; `decide` normalises it) or None when only
    the address is known; `address` is the address the connection is for, when known;
    `method` and `path` are known only for plain or inspected HTTP.
    """

    host: str | None
    port: int
    address: IPAddress | None = None
    method: str | None = None
    path: str | None = None


def decide(policy: AnyPolicy, target: Target) -> Decision:
    """Decide whether the sandbox may reach `target`. The first check that applies decides:

    1. Malformed input: a port outside 1-65535, a host that is not a valid name, no host
       and no address, or an IP-literal host that differs from the known address -> deny,
       in audit mode too (nothing malformed is waved through).
    2. Deny rules, in order: a host pattern matching the name, or a cidr holding the
       address, on one of the rule's ports (every port if it lists none) -> deny.
    3. A name: the first allow host rule that matches name and port, and method and path
       when both the rule and the target carry them -> allow.
    4. No name (an IP literal or an address only): the first allow cidr rule holding the
       address, on one of its ports (and method/path as above) -> allow.
    5. Otherwise deny, saying how far the closest rule got (host/address, port, method, path).
    In audit mode the denies of steps 2 and 5 come back allowed, with would_deny set.
    """
    if not MIN_PORT <= target.port <= MAX_PORT:
        return Decision(False, INVALID_PORT, None)
    name: str | None = None
    address = target.address
    if target.host is not None:
        literal = parse_ip_literal(target.host)
        if literal is None:
            try:
                name = normalize_host(target.host)
            except InvalidHost:
                return Decision(False, INVALID_HOST, None)
        elif address is not None and address != literal:
            return Decision(False, LITERAL_MISMATCH, None)
        else:
            address = literal
    if name is None and address is None:
        return Decision(False, NO_DESTINATION, None)

    for rule in policy.deny:
        if _port_listed(rule.ports, target.port) and _reaches(rule, name, address):
            return _deny(policy, DENIED_BY_RULE, _rule_id(rule))

    if name is not None:
        candidates = [r for r in policy.allow if r.pattern is not None and r.pattern.matches(name)]
        closest = NO_RULE_FOR_HOST
    else:
        assert address is not None  # checked above: a name or an address
        candidates = [r for r in policy.allow if r.cidr is not None and address in r.cidr]
        closest = IP_LITERAL_NOT_ALLOWED if target.host is not None else NO_RULE_FOR_ADDRESS
    for rule in candidates:
        miss = _allow_miss(rule, target)
        if miss is None:
            inspect = wants_inspection(rule) or (
                name is not None and policy.bound_to_credential(name)
            )
            return Decision(True, ALLOWED_BY_RULE, _rule_id(rule), inspect=inspect)
        if closest not in _PROGRESS or _PROGRESS.index(miss) > _PROGRESS.index(closest):
            closest = miss
    return _deny(policy, closest, None)


def decide_dns(policy: AnyPolicy, name: str) -> Decision:
    """May `name` be resolved for the sandbox?

    Yes when some allow host rule matches it (on any port) and no deny host rule that
    covers every port (lists no ports) matches it. An invalid name is always refused.
    """
    try:
        host = normalize_host(name)
    except InvalidHost:
        return Decision(False, INVALID_HOST, None)
    for rule in policy.deny:
        if rule.ports is None and rule.pattern is not None and rule.pattern.matches(host):
            return _deny(policy, DENIED_BY_RULE, _rule_id(rule))
    for rule in policy.allow:
        if rule.pattern is not None and rule.pattern.matches(host):
            return Decision(True, ALLOWED_BY_RULE, _rule_id(rule))
    return _deny(policy, NO_RULE_FOR_HOST, None)


def wants_inspection(rule: AnyRule) -> bool:
    """Whether an allow rule needs the requests seen: `inspect`, `methods` or `paths` set."""
    return rule.inspect or rule.methods is not None or rule.paths is not None


def _deny(policy: AnyPolicy, reason: str, rule: str | None) -> Decision:
    """A policy denial: enforced, or in audit mode let through and marked would_deny."""
    if policy.mode == "audit":
        return Decision(True, reason, rule, would_deny=True)
    return Decision(False, reason, rule)


def _rule_id(rule: AnyRule) -> str:
    # Rules built in code may have no origin; the pattern still tells a reader which one.
    return rule.origin or str(rule.host if rule.host is not None else rule.cidr)


def _port_listed(
    ports: Sequence[int] | None, port: int, default: tuple[int, ...] | None = None
) -> bool:
    """Whether `port` is in `ports`; a rule without ports uses `default` (None = every port)."""
    if ports is not None:
        return port in ports
    return default is None or port in default


def _reaches(rule: AnyRule, name: str | None, address: IPAddress | None) -> bool:
    """Whether a deny rule covers the name or the address of the target."""
    if rule.pattern is not None:
        return name is not None and rule.pattern.matches(name)
    assert rule.cidr is not None  # a rule has a host or a cidr
    if address is None:
        return False
    # Deny generously: an IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 address.
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return address in rule.cidr or (mapped is not None and mapped in rule.cidr)


def _allow_miss(rule: AnyRule, target: Target) -> str | None:
    """None if an allow rule (already matching host or address) admits the target, else why not.

    Method and path are checked only when both the rule and the target carry them: a
    connection whose requests are not seen yet is allowed here and the requests are
    checked later, under TLS inspection.
    """
    if not _port_listed(rule.ports, target.port, DEFAULT_ALLOW_PORTS):
        return NO_RULE_FOR_PORT
    if rule.methods is not None and target.method is not None and target.method not in rule.methods:
        return NO_RULE_FOR_METHOD
    if rule.paths is not None and target.path is not None and not _path_in(rule.paths, target.path):
        return NO_RULE_FOR_PATH
    return None


def _path_in(prefixes: Sequence[str], path: str) -> bool:
    path = path.split("?", 1)[0].split("#", 1)[0]  # prefixes cover the path, not the query
    if _AMBIGUOUS_PATH.search(path):
        return False
    return any(path.startswith(prefix) for prefix in prefixes)
