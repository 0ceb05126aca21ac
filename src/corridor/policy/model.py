"""The policy model: what a policy file may say, validated strictly.

Every model forbids unknown keys and uses strict scalar types, so a typo or a quoted
number is an error, never a silently ignored setting. Validation errors are
`PydanticCustomError`s whose context may carry a `hint` (shown to the user) and a `loc`
(a location below the field that raised it); `corridor.policy.load` turns them into
messages that name file, line and column.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from corridor.policy.constants import BROAD_IPV4_PREFIX as BROAD_IPV4_PREFIX
from corridor.policy.constants import BROAD_IPV6_PREFIX as BROAD_IPV6_PREFIX

# The port constants live in a pydantic-free module (the gateway reads them); re-exported.
from corridor.policy.constants import DEFAULT_ALLOW_PORTS as DEFAULT_ALLOW_PORTS
from corridor.policy.constants import MAX_PORT as MAX_PORT
from corridor.policy.constants import MIN_PORT as MIN_PORT
from corridor.policy.constants import POLICY_VERSION as POLICY_VERSION
from corridor.policy.credentials import CredentialSpec
from corridor.policy.hosts import (
    HostPattern,
    InvalidHost,
    InvalidNetwork,
    parse_host_pattern,
    parse_ip_literal,
    parse_network,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Mode = Literal["enforce", "audit"]

# HTTP method tokens (RFC 9110 9.1) as they are written: upper case letters, maybe '-'/'_'.
_METHOD = re.compile(r"[A-Z]+(?:[-_][A-Z]+)*")
# A path prefix: starts with "/", no whitespace/controls, no query or fragment part.
_PATH_PREFIX = re.compile(r"/[!$&'()*+,\-./0-9:;=@A-Z_a-z~%]*")
# Sizes: a number and an optional unit, SI (powers of 1000) or IEC (powers of 1024).
_BYTE_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
BYTE_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}


def _error(kind: str, message: str, hint: str | None = None, **ctx: Any) -> PydanticCustomError:
    # `message` is final text: braces in user input must not be read as template fields.
    context: dict[str, Any] = {"text": message, **ctx}
    if hint:
        context["hint"] = hint
    return PydanticCustomError(kind, "{text}", context)


def _check_port(value: int) -> int:
    if not MIN_PORT <= value <= MAX_PORT:
        raise _error(
            "port",
            f"{value} is not a port ({MIN_PORT}-{MAX_PORT})",
            "a port is a whole number from 1 to 65535, e.g. 443",
        )
    return value


def _check_positive(value: int) -> int:
    if value <= 0:
        raise _error("positive", f"{value} is not a positive number", "use a whole number above 0")
    return value


def _check_nonempty(values: list[Any]) -> list[Any]:
    if not values:
        raise _error("empty_list", "an empty list matches nothing", "leave the key out instead")
    return values


def _check_method(value: str) -> str:
    if _METHOD.fullmatch(value):
        return value
    hint = "methods are HTTP method names in upper case, e.g. GET, POST"
    if _METHOD.fullmatch(value.upper()):
        hint = f"methods are upper case: {value.upper()!r}"
    raise _error("method", f"{value!r} is not an HTTP method", hint)


def _check_path(value: str) -> str:
    if _PATH_PREFIX.fullmatch(value):
        return value
    if not value.startswith("/"):
        message = f"{value!r} does not start with '/'"
    else:
        message = f"{value!r} is not a URL path prefix"
    raise _error("path", message, "paths are prefixes of the URL path without query, e.g. '/v1/'")


def parse_byte_count(value: object) -> int:
    """Read a byte count: a whole number, or text such as "50MB", "1.5GiB", "10kB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = Decimal(value), ""
    elif isinstance(value, str) and (m := _BYTE_SIZE.fullmatch(value)):
        number, unit = Decimal(m.group(1)), m.group(2)
    else:
        raise _error(
            "byte_count",
            f"{value!r} is not a size",
            "write a number of bytes or a size such as 50MB, 1.5GiB, 10kB",
        )
    if unit not in BYTE_UNITS:
        raise _error(
            "byte_count",
            f"unknown unit {unit!r} in {value!r}",
            "units: B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)",
        )
    total = number * BYTE_UNITS[unit]
    if total < 0:
        raise _error("byte_count", f"{value!r} is negative", "a size is 0 or more bytes")
    if total != total.to_integral_value():
        raise _error("byte_count", f"{value!r} is not a whole number of bytes", None)
    return int(total)


Port = Annotated[StrictInt, AfterValidator(_check_port)]
Method = Annotated[StrictStr, AfterValidator(_check_method)]
PathPrefix = Annotated[StrictStr, AfterValidator(_check_path)]
ByteCount = Annotated[int, BeforeValidator(parse_byte_count)]


@functools.lru_cache(maxsize=4096)
def host_pattern(text: str) -> HostPattern:
    """The parsed form of a (validated) rule host; cached because decide() asks per rule."""
    return parse_host_pattern(text)


def _host_hint(text: str) -> str:
    if "://" in text or "/" in text:
        return "write the host name only, without scheme or path, e.g. api.example.com"
    if parse_ip_literal(text) is not None or parse_ip_literal(text.rstrip(".")) is not None:
        return f"addresses go in 'cidr:', e.g. cidr: {text.strip('[]')}"
    if ":" in text:
        return "put the port in 'ports:', not in the host"
    return "a host is a DNS name, '*.example.com' (subdomains) or '**.example.com' (both)"


class Rule(BaseModel):
    """One allow or deny rule: exactly one of `host` (a pattern) or `cidr` (an address range).

    `origin` is not read from the file: the loader sets it to say where the rule came
    from ("policy.yaml:7 allow[2]", "--allow api.example.com") so a decision can name it.
    `ports` left out means [443, 80] on an allow rule and every port on a deny rule.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: StrictStr | None = None
    cidr: IPNetwork | None = None
    ports: Annotated[list[Port], AfterValidator(_check_nonempty)] | None = None
    methods: Annotated[list[Method], AfterValidator(_check_nonempty)] | None = None
    paths: Annotated[list[PathPrefix], AfterValidator(_check_nonempty)] | None = None
    inspect: StrictBool = False
    broad: StrictBool = False
    comment: StrictStr | None = None
    origin: StrictStr = ""

    @field_validator("host")
    @classmethod
    def _normalize_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(parse_host_pattern(value))
        except InvalidHost as e:
            raise _error(
                "host", f"{value!r} is not a valid host: {e.reason}", _host_hint(value)
            ) from None

    @field_validator("cidr", mode="before")
    @classmethod
    def _parse_cidr(cls, value: object) -> object:
        if value is None or isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
            return value
        hint = "an address range is an address and a prefix length, e.g. 10.20.0.0/16"
        if not isinstance(value, str):
            raise _error("cidr", f"{value!r} is not an address range", hint)
        try:
            return parse_network(value)
        except InvalidNetwork as e:
            if e.fixed is None:
                raise _error("cidr", f"{value!r} is not an address range", hint) from None
            raise _error(
                "cidr",
                f"{value!r} has bits set after the prefix",
                f"did you mean {str(e.fixed)!r}?",
            ) from None

    @model_validator(mode="after")
    def _one_target(self) -> Rule:
        if (self.host is None) == (self.cidr is None):
            both = self.host is not None
            raise _error(
                "rule_target",
                "a rule has both 'host' and 'cidr'" if both else "a rule needs 'host' or 'cidr'",
                "give each rule exactly one of 'host: NAME' or 'cidr: RANGE'",
            )
        return self

    @property
    def pattern(self) -> HostPattern | None:
        """The parsed host pattern, or None for an address-range rule."""
        return None if self.host is None else host_pattern(self.host)

    def broad_reason(self) -> str | None:
        """Why this rule reaches many unrelated hosts or networks, or None."""
        if self.host is not None:
            return host_pattern(self.host).broad_reason()
        assert self.cidr is not None  # guaranteed by _one_target
        limit = BROAD_IPV4_PREFIX if self.cidr.version == 4 else BROAD_IPV6_PREFIX
        if self.cidr.prefixlen < limit:
            return f"{self.cidr} is wider than a /{limit}"
        return None


class Limits(BaseModel):
    """Per-session limits; a limit left out is not set here (the gateway's own apply)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_connections: Annotated[StrictInt, AfterValidator(_check_positive)] | None = None
    max_bytes_out: ByteCount | None = None


class Policy(BaseModel):
    """A whole policy: allow and deny rules, mode and limits.

    `mode` and `limits` keep track of whether they were set (`model_fields_set`), so
    that a file extending another only overrides what it actually says.
    Deny rules may be broad: denying widely never opens anything.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: StrictInt = POLICY_VERSION
    extends: list[StrictStr] = Field(default_factory=list)
    mode: Mode = "enforce"
    allow: list[Rule] = Field(default_factory=list)
    deny: list[Rule] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    # Secrets the gateway holds for the sandbox (policy/credentials.py); None: none. Left
    # out rather than empty so that a policy without credentials keeps its hash.
    credentials: list[CredentialSpec] | None = None

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: int) -> int:
        if value != POLICY_VERSION:
            raise _error(
                "version",
                f"unsupported policy version {value}",
                f"this corridor reads 'version: {POLICY_VERSION}'",
            )
        return value

    @field_validator("credentials")
    @classmethod
    def _unique_credentials(cls, specs: list[CredentialSpec] | None) -> list[CredentialSpec] | None:
        seen: set[str] = set()
        for index, spec in enumerate(specs or ()):
            if spec.name in seen:
                raise _error(
                    "credential_name",
                    f"{spec.name} is defined twice",
                    "give each credential its own name",
                    loc=(index, "name"),
                )
            seen.add(spec.name)
        return specs

    def bound_to_credential(self, host: str) -> bool:
        """Whether some credential may go to `host` (a normalised name): it is inspected."""
        return any(spec.binds(host) for spec in self.credentials or ())

    @field_validator("allow")
    @classmethod
    def _check_broad(cls, rules: list[Rule]) -> list[Rule]:
        for index, rule in enumerate(rules):
            reason = rule.broad_reason()
            if reason is not None and not rule.broad:
                raise _error(
                    "broad",
                    f"{reason}, which is broad",
                    "narrow it, or add 'broad: true' to the rule if that is really meant",
                    loc=(index, "host" if rule.host is not None else "cidr"),
                )
        return rules
