"""`corridor policy`: list templates, show a resolved policy, check a file, test a target,
print the JSON Schema. Nothing here runs a sandbox or opens a connection.

The renderers and the target parser are plain functions (text in, text out) so tests can
call them without a subprocess; the click commands only wire them to the terminal.
"""

from __future__ import annotations

import json
import sys
import textwrap
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from corridor.errors import EXIT_USAGE, UserError

if TYPE_CHECKING:  # imported lazily at run time: `corridor --help` stays fast
    from corridor.policy import Decision, Policy, Rule, Target

EXIT_DENIED = 1  # `policy test`: the target would be refused (0: it would pass)
DEFAULT_TEST_PORT = 443  # a bare HOST is tested as HTTPS, the common case
_URL_PORTS = {"https": 443, "http": 80}
_WRAP = 88  # comment text width in `policy show`, inside a 100-column line


@click.group("policy", context_settings={"help_option_names": ["-h", "--help"]})
def policy() -> None:
    """Templates and policy files: list, show, check, test, schema."""


@policy.command("list")
def list_templates() -> None:
    """The built-in templates, one line each."""
    from corridor.policy import TEMPLATES

    width = max(len(name) for name in TEMPLATES)
    for name, template in TEMPLATES.items():
        click.echo(f"{name:<{width}}  {template.summary}")


@policy.command("show", short_help="The resolved policy as YAML, with rule origins.")
@click.argument("source", metavar="NAME|FILE")
def show(source: str) -> None:
    """The fully resolved policy (templates merged, registries discovered) as YAML.

    Each rule is preceded by a comment saying where it came from; what discovery found
    missing (a tool not installed, a default it cannot report) is listed at the top.
    """
    from corridor.policy import resolve_policy

    notes: list[str] = []
    resolved = resolve_policy(source, notes)
    click.echo(render_policy(resolved, source, notes), nl=False)


@policy.command("check", short_help="Validate a policy file.")
@click.argument("file", metavar="FILE")
def check(file: str) -> None:
    """Validate a policy file (and what it extends); exit 0, or print every error and exit 2."""
    from corridor.policy import PolicyError, resolve_policy

    try:
        resolved = resolve_policy(file)
    except PolicyError as e:
        for line in e.problems:
            click.echo(f"corridor: error: {line}", err=True)
        if e.hint:
            click.echo(f"  hint: {e.hint}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(f"{file}: ok ({_counts(resolved)})")


@policy.command("test", short_help="The decision for a URL or host, nothing run.")
@click.argument("source", metavar="FILE|NAME")
@click.argument("target", metavar="URL|HOST[:PORT]")
@click.option("--method", "method", default=None, metavar="M", help="HTTP method, e.g. POST.")
def test(source: str, target: str, method: str | None) -> None:
    """The decision for TARGET under a policy, and the rule that made it; nothing is run.

    Exits 0 when the traffic would pass (allowed, or would-deny in audit mode), 1 when
    it would be refused.
    """
    from corridor.policy import decide, resolve_policy

    parsed = parse_test_target(target, method)  # before discovery: a typo fails fast
    resolved = resolve_policy(source)
    decision = decide(resolved, parsed)
    click.echo(render_decision(parsed, decision), nl=False)
    sys.exit(0 if decision.allowed else EXIT_DENIED)


@policy.command("schema")
def schema() -> None:
    """The JSON Schema of policy files, for editors."""
    from corridor.policy import policy_json_schema

    click.echo(json.dumps(policy_json_schema(), indent=2))


# ------------------------------------------------------------------- pure helpers


def parse_test_target(text: str, method: str | None = None) -> Target:
    """A `policy test` target: an http(s) URL, or HOST, HOST:PORT, [IPv6]:PORT, address.

    A URL gives its path; a bare host is tested on port 443. Raises UserError.
    """
    from corridor.policy import Target

    if method is not None and not (method.isascii() and method.isalpha()):
        raise UserError(f"--method {method!r}: not an HTTP method", hint="e.g. --method POST")
    method = method.upper() if method else None
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in _URL_PORTS:
            raise UserError(f"{text}: only http:// and https:// URLs can be tested")
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            raise UserError(f"{text}: the port is not a number from 1 to 65535") from None
        if not host:
            raise UserError(f"{text}: no host in the URL")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Target(host=host, port=port or _URL_PORTS[scheme], method=method, path=path)
    host, port = _split_host_port(text)
    return Target(host=host, port=port, method=method)


def _split_host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        inner, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise UserError(f"{text}: unexpected {rest!r} after ']'")
        return inner, _port(text, rest[1:]) if rest else DEFAULT_TEST_PORT
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(text, port)
    return text, DEFAULT_TEST_PORT  # a name, or a bare IPv6 address


def _port(text: str, port: str) -> int:
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise UserError(f"{text}: {port!r} is not a port (1-65535)")
    return int(port)


def render_decision(target: Target, decision: Decision) -> str:
    """What `policy test` prints: decision, reason, rule and the target as understood."""
    word = "would-deny" if decision.would_deny else "allow" if decision.allowed else "deny"
    shown = f"{target.host} port {target.port}"
    if target.method or target.path:
        shown += " " + " ".join(p for p in (target.method, target.path) if p)
    lines = [
        f"decision: {word}",
        f"reason:   {decision.reason}",
        f"rule:     {decision.rule or '(none: nothing allows it)'}",
        f"target:   {shown}",
    ]
    return "\n".join(lines) + "\n"


def render_policy(resolved: Policy, source: str, notes: list[str]) -> str:
    """A resolved policy as YAML a user can read and `corridor policy check` accepts.

    Where each rule came from is a comment above it; the discovery notes and, for a
    template, what it is for, are comments at the top. `extends` is left out: its rules
    are already merged in.
    """
    from corridor.policy import TEMPLATES

    head = [f"corridor policy show {source}"]
    template = TEMPLATES.get(source)
    if template is not None:
        head += [f"{template.name}: {template.summary}"]
        head += textwrap.wrap(template.purpose, _WRAP)
    elif resolved.extends:
        head.append(f"extends (merged below): {', '.join(resolved.extends)}")
    if notes:
        head += ["", "discovery:"]
        for note in notes:
            head += textwrap.wrap(note, _WRAP, initial_indent="  ", subsequent_indent="    ")
    out = [_comment(line, "") for line in head]
    out += [f"version: {resolved.version}", f"mode: {resolved.mode}"]
    for name in ("allow", "deny"):
        rules = getattr(resolved, name)
        out.append(f"{name}:" if rules else f"{name}: []")
        for rule in rules:
            if rule.origin:
                out.append(_comment(rule.origin, "  "))
            first = "- "
            for key, value in _rule_data(rule).items():
                out.append(f"  {first}{key}: {_flow(value)}")
                first = "  "
    limits = resolved.limits.model_dump(exclude_none=True)
    if limits:
        out.append("limits:")
        out += [f"  {key}: {value}" for key, value in limits.items()]
    return "\n".join(out) + "\n"


def _rule_data(rule: Rule) -> dict[str, Any]:
    data = rule.model_dump(mode="json", exclude_none=True, exclude={"origin"})
    for flag in ("inspect", "broad"):
        if not data.get(flag):
            data.pop(flag, None)
    return data


def _flow(value: object) -> str:
    """A value in YAML flow style on one line, quoted only where YAML needs it."""
    import yaml  # here: every corridor command imports this module, few print YAML

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    return text.removesuffix("\n...\n").strip()


def _comment(text: str, indent: str) -> str:
    # Paths may hold any character: a newline must not end the comment early.
    safe = text.replace("\r", "\\r").replace("\n", "\\n")
    return f"{indent}# {safe}".rstrip()


def _counts(resolved: Policy) -> str:
    allow, deny = len(resolved.allow), len(resolved.deny)
    return (
        f"{allow} allow rule{'s' * (allow != 1)}, {deny} deny rule{'s' * (deny != 1)}, "
        f"mode {resolved.mode}"
    )
