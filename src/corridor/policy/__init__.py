"""The policy: model, loading, host matching and the decision.

Imports nothing of corridor's but `corridor.errors`; the gateway asks `decide` and
`decide_dns` (on the compiled policy, `corridor.policy.compiled`), the CLI asks
`resolve_policy` (templates and files) and `policy_from_flags`.

Names are imported from their modules on first use (PEP 562): the gateway process imports
`corridor.policy.decide` and `corridor.policy.compiled`, which must not load the model
(pydantic), the loader (YAML) or discovery along with this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corridor.lazy import lazy_getattr

# Eager, unlike the rest: `decide` is also the name of its module, and importing that
# module (as the gateway does) would bind the module here instead of the function. It is
# pydantic-free, and everything that decides needs it anyway.
from corridor.policy.decide import Decision, Target, decide, decide_dns

# name -> the module of corridor.policy that defines it. `discover` (the function) is not
# re-exported: it would hide the module of that name.
_WHERE = {
    "CompiledPolicy": "compiled",
    "compile_policy": "compiled",
    "DEFAULT_ALLOW_PORTS": "constants",
    "Discovery": "discover",
    "HostContext": "discover",
    "Source": "discover",
    "discover_many": "discover",
    "HostPattern": "hosts",
    "InvalidHost": "hosts",
    "normalize_host": "hosts",
    "parse_host_pattern": "hosts",
    "parse_ip_literal": "hosts",
    "PolicyError": "load",
    "load_policy": "load",
    "merge_policies": "load",
    "policy_from_flags": "load",
    "policy_hash": "load",
    "policy_to_dict": "load",
    "resolve_policy": "load",
    "rule_from_allow_flag": "load",
    "Limits": "model",
    "Policy": "model",
    "Rule": "model",
    "policy_json_schema": "schema",
    "TEMPLATES": "templates",
    "Resolved": "templates",
    "Template": "templates",
    "is_template": "templates",
    "resolve_template": "templates",
    "template_names": "templates",
}


__getattr__ = lazy_getattr(__name__, _WHERE)


if TYPE_CHECKING:  # for type checkers and editors: the same names, eagerly
    from corridor.policy.compiled import CompiledPolicy, compile_policy
    from corridor.policy.constants import DEFAULT_ALLOW_PORTS
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
    from corridor.policy.model import Limits, Policy, Rule
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
    "CompiledPolicy",
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
    "compile_policy",
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
