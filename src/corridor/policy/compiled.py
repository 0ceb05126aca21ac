"""The compiled policy: what the gateway and `decide` read, as plain frozen data.

The gateway runs in its own fresh interpreter, which must not load pydantic (the policy
model and its validators cost about 24 MB and 60 ms of imports). `corridor run` validates
the policy with the model (`corridor.policy.model`), compiles it here, and sends it to the
gateway as JSON (`to_wire`); the gateway reads it back (`from_wire`). The classes carry
the attribute names of the model (`host`, `cidr`, `ports`, ..., `pattern`,
`bound_to_credential`, `binds`), so `decide()` and the gateway work on either.

This module imports nothing that pulls in pydantic or cryptography; it must stay that way
(tests/gateway/test_gateway_imports.py checks it). The wire comes from corridor itself
over a private pipe: `from_wire` refuses a malformed document with a ValueError but does
not explain it to a user.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from corridor.policy.constants import MAX_PORT, MIN_PORT, VALUE_SLOT
from corridor.policy.hosts import HostPattern, parse_host_pattern

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SourceKind = Literal["env", "file", "command"]
InjectKind = Literal["bearer", "basic", "header"]

# The shape of the wire document; parent and gateway come from one installation, so a
# mismatch is a bug (or a stale child), refused rather than guessed at.
WIRE_VERSION = 1
MODES = ("enforce", "audit")
SOURCE_KINDS: tuple[SourceKind, ...] = ("env", "file", "command")
INJECT_KINDS: tuple[InjectKind, ...] = ("bearer", "basic", "header")

_T = TypeVar("_T")


# ---- the parsed parts of a credential (shared with corridor.policy.credentials) -----------


@dataclass(frozen=True, slots=True)
class Source:
    """Where a real value comes from. `ref`: the variable name, the path, or the command."""

    kind: SourceKind
    ref: str
    argv: tuple[str, ...] = ()

    def describe(self) -> str:
        """A safe description for events: never a command's arguments (they may hold keys)."""
        if self.kind == "command":
            return f"command:{self.argv[0]}"
        return f"{self.kind}:{self.ref}"


@dataclass(frozen=True, slots=True)
class Injection:
    """Where the real value goes: `header` is lower case; `template` holds `{value}` once."""

    kind: InjectKind
    header: str
    template: str = VALUE_SLOT

    def __str__(self) -> str:
        return self.kind if self.kind != "header" else f"header:{self.header}"


def format_ttl(seconds: int) -> str:
    """30m, 1h30m, 45s: the inverse of `corridor.policy.credentials.parse_ttl`, for messages."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


# ---- the compiled forms -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """An allow or deny rule (`corridor.policy.model.Rule` without its comment).

    Exactly one of `host` (a pattern in canonical form) or `cidr`; `ports`, `methods`,
    `paths` None mean "not restricted" exactly as in the model.
    """

    host: str | None
    cidr: IPNetwork | None
    ports: tuple[int, ...] | None = None
    methods: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    inspect: bool = False
    broad: bool = False
    origin: str = ""
    # Parsed once here: decide() asks every rule for its pattern on every decision.
    _pattern: HostPattern | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.host is None) == (self.cidr is None):
            raise ValueError("a rule needs exactly one of host and cidr")
        pattern = None if self.host is None else parse_host_pattern(self.host)
        if pattern is not None and str(pattern) != self.host:
            raise ValueError(f"rule host {self.host!r} is not in canonical form")
        object.__setattr__(self, "_pattern", pattern)

    @property
    def pattern(self) -> HostPattern | None:
        """The parsed host pattern, or None for an address-range rule."""
        return self._pattern


@dataclass(frozen=True, slots=True)
class CompiledLimits:
    """Per-session limits from the policy; None: not set (the gateway's defaults apply)."""

    max_connections: int | None = None
    max_bytes_out: int | None = None


@dataclass(frozen=True, slots=True)
class CompiledCredential:
    """One `credentials:` entry as the broker reads it (`CredentialSpec`'s parsed forms).

    `hosts` keep the policy's text (events show it); `patterns` are parsed from them.
    A header injection's template is already folded into its `Injection`.
    """

    name: str
    source_parsed: Source
    hosts: tuple[str, ...]
    injections: tuple[Injection, ...]
    username: str | None = None
    ttl: int | None = None  # seconds; None: no expiry
    patterns: tuple[HostPattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.hosts or not self.injections:
            raise ValueError(f"credential {self.name}: needs hosts and injections")
        object.__setattr__(self, "patterns", tuple(parse_host_pattern(h) for h in self.hosts))

    def binds(self, host: str) -> bool:
        """Whether this credential may go to `host` (a normalised name)."""
        return any(p.matches(host) for p in self.patterns)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A whole policy as the gateway reads it: mode, rules, limits, credentials."""

    mode: Literal["enforce", "audit"] = "enforce"
    allow: tuple[CompiledRule, ...] = ()
    deny: tuple[CompiledRule, ...] = ()
    limits: CompiledLimits = CompiledLimits()
    credentials: tuple[CompiledCredential, ...] = ()

    def bound_to_credential(self, host: str) -> bool:
        """Whether some credential may go to `host` (a normalised name): it is inspected."""
        return any(spec.binds(host) for spec in self.credentials)


# ---- compiling the model (duck-typed: this module never imports pydantic) -----------------


def compile_policy(policy: Any) -> CompiledPolicy:
    """The compiled form of a `corridor.policy.model.Policy` (a CompiledPolicy: itself)."""
    if isinstance(policy, CompiledPolicy):
        return policy
    limits = policy.limits
    return CompiledPolicy(
        mode=policy.mode,
        allow=tuple(compile_rule(r) for r in policy.allow),
        deny=tuple(compile_rule(r) for r in policy.deny),
        limits=CompiledLimits(limits.max_connections, limits.max_bytes_out),
        credentials=tuple(compile_credential(s) for s in policy.credentials or ()),
    )


def compile_rule(rule: Any) -> CompiledRule:
    """The compiled form of a `corridor.policy.model.Rule`."""
    if isinstance(rule, CompiledRule):
        return rule
    return CompiledRule(
        host=rule.host,
        cidr=rule.cidr,
        ports=_tuple_or_none(rule.ports),
        methods=_tuple_or_none(rule.methods),
        paths=_tuple_or_none(rule.paths),
        inspect=rule.inspect,
        broad=rule.broad,
        origin=rule.origin,
    )


def compile_credential(spec: Any) -> CompiledCredential:
    """The compiled form of a `corridor.policy.credentials.CredentialSpec`."""
    if isinstance(spec, CompiledCredential):
        return spec
    return CompiledCredential(
        name=spec.name,
        source_parsed=spec.source_parsed,
        hosts=tuple(spec.hosts),
        injections=tuple(spec.injections),
        username=spec.username,
        ttl=spec.ttl,
    )


def _tuple_or_none(values: Iterable[_T] | None) -> tuple[_T, ...] | None:
    return None if values is None else tuple(values)


# ---- the wire: JSON-able data (str, int, bool, list, dict, None) ---------------------------


def to_wire(compiled: CompiledPolicy) -> dict[str, Any]:
    """`compiled` as JSON-able data; `from_wire` reads it back exactly."""
    return {
        "wire": WIRE_VERSION,
        "mode": compiled.mode,
        "allow": [_rule_to_wire(r) for r in compiled.allow],
        "deny": [_rule_to_wire(r) for r in compiled.deny],
        "limits": {
            "max_connections": compiled.limits.max_connections,
            "max_bytes_out": compiled.limits.max_bytes_out,
        },
        "credentials": [credential_to_wire(c) for c in compiled.credentials],
    }


def from_wire(data: object) -> CompiledPolicy:
    """The policy `to_wire` wrote. Raises ValueError for anything else."""
    d = _obj(data, "policy", ("wire", "mode", "allow", "deny", "limits", "credentials"))
    if d["wire"] != WIRE_VERSION or isinstance(d["wire"], bool):
        raise ValueError(f"compiled policy: wire version {d['wire']!r}, expected {WIRE_VERSION}")
    if d["mode"] not in MODES:
        raise ValueError(f"compiled policy: mode {d['mode']!r} is not one of {MODES}")
    limits = _obj(d["limits"], "limits", ("max_connections", "max_bytes_out"))
    return CompiledPolicy(
        mode=d["mode"],
        allow=_items(d["allow"], "allow", _rule_from_wire),
        deny=_items(d["deny"], "deny", _rule_from_wire),
        limits=CompiledLimits(
            max_connections=_int(
                limits["max_connections"], "limits.max_connections", 1, optional=True
            ),
            max_bytes_out=_int(limits["max_bytes_out"], "limits.max_bytes_out", 0, optional=True),
        ),
        credentials=_items(d["credentials"], "credentials", credential_from_wire),
    )


def credential_to_wire(spec: CompiledCredential) -> dict[str, Any]:
    """One compiled credential as JSON-able data (names and places: never a value)."""
    source = spec.source_parsed
    return {
        "name": spec.name,
        "source": {"kind": source.kind, "ref": source.ref, "argv": list(source.argv)},
        "hosts": list(spec.hosts),
        "injections": [
            {"kind": i.kind, "header": i.header, "template": i.template} for i in spec.injections
        ],
        "username": spec.username,
        "ttl": spec.ttl,
    }


def credential_from_wire(data: object, where: str = "credential") -> CompiledCredential:
    """The credential `credential_to_wire` wrote. Raises ValueError for anything else."""
    d = _obj(data, where, ("name", "source", "hosts", "injections", "username", "ttl"))
    src = _obj(d["source"], f"{where}.source", ("kind", "ref", "argv"))
    if src["kind"] not in SOURCE_KINDS:
        raise ValueError(f"compiled policy: {where}.source.kind {src['kind']!r} is unknown")
    argv = _strings(src["argv"], f"{where}.source.argv")
    if (src["kind"] == "command") != bool(argv):
        raise ValueError(f"compiled policy: {where}.source.argv does not fit its kind")
    name = _str(d["name"], f"{where}.name")
    source = Source(src["kind"], _str(src["ref"], f"{where}.source.ref"), argv)
    hosts = _strings(d["hosts"], f"{where}.hosts")
    injections = _items(d["injections"], f"{where}.injections", _injection_from_wire)
    username = _str(d["username"], f"{where}.username", optional=True)
    ttl = _int(d["ttl"], f"{where}.ttl", 1, optional=True)
    try:
        return CompiledCredential(name, source, hosts, injections, username, ttl)
    except ValueError as e:  # no hosts or injections, or a host that is not a pattern
        raise ValueError(f"compiled policy: {where}: {e}") from None


def _rule_to_wire(rule: CompiledRule) -> dict[str, Any]:
    return {
        "host": rule.host,
        "cidr": None if rule.cidr is None else str(rule.cidr),
        "ports": None if rule.ports is None else list(rule.ports),
        "methods": None if rule.methods is None else list(rule.methods),
        "paths": None if rule.paths is None else list(rule.paths),
        "inspect": rule.inspect,
        "broad": rule.broad,
        "origin": rule.origin,
    }


_RULE_KEYS = ("host", "cidr", "ports", "methods", "paths", "inspect", "broad", "origin")


def _rule_from_wire(data: object, where: str) -> CompiledRule:
    d = _obj(data, where, _RULE_KEYS)
    cidr = _str(d["cidr"], f"{where}.cidr", optional=True)
    ports = None
    if d["ports"] is not None:
        ports = _items(d["ports"], f"{where}.ports", lambda v, w: _int(v, w, MIN_PORT, MAX_PORT))
    try:
        return CompiledRule(
            host=_str(d["host"], f"{where}.host", optional=True),
            cidr=None if cidr is None else ipaddress.ip_network(cidr, strict=True),
            ports=ports,
            methods=None if d["methods"] is None else _strings(d["methods"], f"{where}.methods"),
            paths=None if d["paths"] is None else _strings(d["paths"], f"{where}.paths"),
            inspect=_bool(d["inspect"], f"{where}.inspect"),
            broad=_bool(d["broad"], f"{where}.broad"),
            origin=_str(d["origin"], f"{where}.origin"),
        )
    except ValueError as e:  # InvalidHost and ipaddress errors are ValueErrors too
        raise ValueError(f"compiled policy: {where}: {e}") from None


def _injection_from_wire(data: object, where: str) -> Injection:
    d = _obj(data, where, ("kind", "header", "template"))
    if d["kind"] not in INJECT_KINDS:
        raise ValueError(f"compiled policy: {where}.kind {d['kind']!r} is unknown")
    template = _str(d["template"], f"{where}.template")
    if template.count(VALUE_SLOT) != 1:
        raise ValueError(f"compiled policy: {where}.template must hold {VALUE_SLOT} once")
    return Injection(d["kind"], _str(d["header"], f"{where}.header"), template)


# ---- shape checks -------------------------------------------------------------------------


def _obj(value: object, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != set(keys):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ValueError(f"compiled policy: {where}: expected keys {sorted(keys)}, got {got}")
    return value


def _items(value: object, where: str, read: Callable[[object, str], _T]) -> tuple[_T, ...]:
    if not isinstance(value, list):
        raise ValueError(f"compiled policy: {where}: expected a list")
    return tuple(read(item, f"{where}[{i}]") for i, item in enumerate(value))


def _strings(value: object, where: str) -> tuple[str, ...]:
    return _items(value, where, _str)


def _str(value: object, where: str, optional: bool = False) -> Any:
    if isinstance(value, str) or (optional and value is None):
        return value
    raise ValueError(f"compiled policy: {where}: expected text, got {type(value).__name__}")


def _bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"compiled policy: {where}: expected true or false")


def _int(
    value: object, where: str, low: int, high: int | None = None, optional: bool = False
) -> Any:
    """A whole number in [low, high] (no upper bound when `high` is None)."""
    if optional and value is None:
        return None
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and value >= low and (high is None or value <= high):  # type: ignore[operator]
        return value
    raise ValueError(f"compiled policy: {where}: {value!r} is not a whole number in range")
