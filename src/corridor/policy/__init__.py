"""The policy: model, loading, host matching and the decision.

Imports nothing of corridor's but `corridor.errors`; the gateway asks `decide` and
`decide_dns`, the CLI asks `load_policy` and `policy_from_flags`.
"""

from corridor.policy.decide import Decision, Target, decide, decide_dns
from corridor.policy.hosts import (
    HostPattern,
    InvalidHost,
    normalize_host,
    parse_host_pattern,
    parse_ip_literal,
)
from corridor.policy.load import (
    PolicyError,
    load_policy,
    merge_policies,
    policy_from_flags,
    policy_hash,
    policy_to_dict,
    rule_from_allow_flag,
)
from corridor.policy.model import DEFAULT_ALLOW_PORTS, Limits, Policy, Rule

__all__ = [
    "DEFAULT_ALLOW_PORTS",
    "Decision",
    "HostPattern",
    "InvalidHost",
    "Limits",
    "Policy",
    "PolicyError",
    "Rule",
    "Target",
    "decide",
    "decide_dns",
    "load_policy",
    "merge_policies",
    "normalize_host",
    "parse_host_pattern",
    "parse_ip_literal",
    "policy_from_flags",
    "policy_hash",
    "policy_to_dict",
    "rule_from_allow_flag",
]
