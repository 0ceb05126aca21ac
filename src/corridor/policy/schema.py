"""The JSON Schema of a policy file, for editors (`corridor policy schema`).

Written out rather than generated: pydantic's own schema would show `origin` (set by the
loader, refused in files) and could not say what the validators check (port range,
method and path shapes, sizes). tests/policy/test_policy_cli.py keeps the two in step:
every field the model reads is here and nothing else.

The schema catches what an editor can show while typing; `corridor policy check` is
the authority (it also checks host names, broad patterns and address ranges).
"""

from __future__ import annotations

from typing import Any

from corridor.policy.model import BYTE_UNITS, MAX_PORT, MIN_PORT, POLICY_VERSION
from corridor.policy.templates import TEMPLATES

SCHEMA_ID = "https://corridor.invalid/schema/policy-v1.json"  # names it; nothing is fetched
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_UNITS = "|".join(sorted((u for u in BYTE_UNITS if u), key=len, reverse=True))


def _list_of(item: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "array", "items": item, "minItems": 1, "description": description}


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) a policy file must satisfy."""
    rule = {
        "type": "object",
        "additionalProperties": False,
        "description": "One rule: exactly one of 'host' or 'cidr'.",
        "properties": {
            "host": {
                "type": "string",
                "minLength": 1,
                "description": "example.com (exact), *.example.com (subdomains only), "
                "**.example.com (apex and subdomains); case, a trailing dot and Unicode "
                "spelling are normalised.",
            },
            "cidr": {
                "type": "string",
                "pattern": r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$",
                "description": "An address or address range, e.g. 10.20.0.0/16.",
            },
            "ports": _list_of(
                {"type": "integer", "minimum": MIN_PORT, "maximum": MAX_PORT},
                "Ports; left out: 443 and 80 on an allow rule, every port on a deny rule.",
            ),
            "methods": _list_of(
                {"type": "string", "pattern": r"^[A-Z]+([-_][A-Z]+)*$"},
                "HTTP methods (enforced where requests are inspected).",
            ),
            "paths": _list_of(
                {"type": "string", "pattern": r"^/[!$&'()*+,\-./0-9:;=@A-Z_a-z~%]*$"},
                "URL path prefixes (enforced where requests are inspected).",
            ),
            "inspect": {"type": "boolean", "description": "Inspect TLS for this rule."},
            "broad": {
                "type": "boolean",
                "description": "Accept a pattern that reaches many owners ('*', '**.com').",
            },
            "comment": {"type": "string", "description": "Why the rule is there."},
        },
        "oneOf": [{"required": ["host"]}, {"required": ["cidr"]}],
    }
    credential = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "from", "hosts", "inject"],
        "properties": {
            "name": {"type": "string", "description": "The variable the sandbox sees."},
            "from": {
                "type": "string",
                "pattern": "^(env|file|command):",
                "description": "env:NAME, file:PATH or command:ARGV (read at session start).",
            },
            "hosts": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "description": "Hosts the real value may go to (these are inspected).",
            },
            "inject": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ],
                "description": "bearer, basic or header:NAME.",
            },
            "username": {"type": "string", "description": "The user name for basic."},
            "template": {"type": "string", "description": "Header value with {value}."},
            "ttl": {
                "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string"}],
                "description": "How long the placeholder works, e.g. 30m, 1h, 90s.",
            },
            "comment": {"type": "string"},
        },
    }
    size = {
        "oneOf": [
            {"type": "integer", "minimum": 0},
            {"type": "string", "pattern": rf"^\s*[0-9]+(\.[0-9]+)?\s*({_UNITS})?\s*$"},
        ],
        "description": "Bytes, or a size such as 50MB, 1.5GiB, 10kB.",
    }
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": "corridor policy",
        "description": "What a sandboxed command may reach. See docs/policy.md.",
        "type": "object",
        "additionalProperties": False,
        "required": ["version"],
        "properties": {
            "version": {"const": POLICY_VERSION},
            "extends": {
                "type": "array",
                "items": {
                    "type": "string",
                    "minLength": 1,
                    "examples": list(TEMPLATES),
                },
                "description": "Built-in templates or policy files (relative to this "
                "one), merged in order before this file.",
            },
            "mode": {
                "enum": ["enforce", "audit"],
                "description": "audit: let through what enforce would deny, recorded as "
                "would-deny.",
            },
            "allow": {"type": "array", "items": {"$ref": "#/$defs/rule"}},
            "deny": {
                "type": "array",
                "items": {"$ref": "#/$defs/rule"},
                "description": "Deny always wins over allow.",
            },
            "limits": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "max_connections": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Concurrent connections.",
                    },
                    "max_bytes_out": {**size, "description": "Bytes sent upstream per session."},
                },
            },
            "credentials": {
                "type": "array",
                "items": {"$ref": "#/$defs/credential"},
                "description": "Secrets the gateway injects for bound hosts; the sandbox "
                "sees placeholders. See docs/credentials.md.",
            },
        },
        "$defs": {"rule": rule, "credential": credential},
    }
