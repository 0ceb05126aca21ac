"""The policy: model, loading, host matching and the decision.

Imports nothing of corridor's but `corridor.errors`; the gateway asks `decide` and
`decide_dns`, the CLI asks `resolve_policy` (templates and files) and `policy_from_flags`.
"""

from corridor.policy.decide import Decision, Target, decide, decide_dns

# `discover` (the function) is not re-exported: it would hide the module of that name.
from corridor.policy.discover import Discovery, HostContext, Source, discover_many
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
    resolve_policy,
    rule_from_allow_flag,
)
from corridor.policy.model import DEFAULT_ALLOW_PORTS, Limits, Policy, Rule
from corridor.policy.schema import policy_json_schema
from corridor.policy.templates import (
    TEMPLATES,
    Resolved,
    Template,
    is_template,
    resolve_template,
    template_names,
)

__all__ = [
    "DEFAULT_ALLOW_PORTS",
    "TEMPLATES",
    "Decision",
    "Discovery",
    "HostContext",
    "HostPattern",
    "InvalidHost",
    "Limits",
    "Policy",
    "PolicyError",
    "Resolved",
    "Rule",
    "Source",
    "Target",
    "Template",
    "decide",
    "decide_dns",
    "discover_many",
    "is_template",
    "load_policy",
    "merge_policies",
    "normalize_host",
    "parse_host_pattern",
    "parse_ip_literal",
    "policy_from_flags",
    "policy_hash",
    "policy_json_schema",
    "policy_to_dict",
    "resolve_policy",
    "resolve_template",
    "rule_from_allow_flag",
    "template_names",
]
