"""The `credentials:` section of a policy: what each entry may say, validated strictly.

Each entry names the variable the sandbox sees, where the real value comes from
(`env:NAME`, `file:PATH`, `command:ARGV`), the hosts that may receive it, how it is put
on a request (`bearer`, `basic`, `header:NAME` with a template) and for how long (`ttl`).
Nothing here reads a value: the gateway's broker (corridor.gateway.credentials) does, once,
at session start. Lives in the policy package so that the policy imports nothing of the
gateway.
"""

from __future__ import annotations

import functools
import re
import shlex
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from corridor.errors import UserError
from corridor.policy.compiled import Injection as Injection
from corridor.policy.compiled import InjectKind as InjectKind
from corridor.policy.compiled import Source as Source
from corridor.policy.compiled import SourceKind as SourceKind
from corridor.policy.compiled import format_ttl as format_ttl
from corridor.policy.constants import CONTROL_CHARS as _CONTROL
from corridor.policy.constants import VALUE_SLOT as VALUE_SLOT
from corridor.policy.hosts import HostPattern, InvalidHost, parse_host_pattern

# Source, Injection, format_ttl, VALUE_SLOT and the control-character pattern live in
# pydantic-free modules (the gateway process reads them without loading this one); they
# are re-exported here, where the model uses them.

# ---- the model: what a policy's `credentials:` list may say ------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 9110 5.6.2 token: the characters a header name may use.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TTL_PART = re.compile(r"(\d+)([dhms])")
_TTL_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Shell syntax that only means something to a shell (see the module docstring).
_SHELL_OPERATORS = frozenset({"|", "||", "&", "&&", ";", ";;", "<", ">", ">>", "<<", "(", ")"})
# Variables the sandbox environment already defines; a credential may not shadow them.
RESERVED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "PWD",
        "TMPDIR",
        "TERM",
        "LANG",
        "CORRIDOR_SANDBOX",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    }
)
# Headers that frame or route the request: a credential swapped into one of them could
# change what the request is, not only who sends it.
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "expect",
    }
)


def _error(
    kind: str, message: str, hint: str | None = None, loc: tuple[str, ...] = ()
) -> PydanticCustomError:
    # Same shape as corridor.policy.model: ctx["text"] is the message, ctx["hint"] the hint,
    # ctx["loc"] a field below the one raising, so the policy loader can report
    # file:line:column for these too.
    context: dict[str, Any] = {"text": message}
    if hint:
        context["hint"] = hint
    if loc:
        context["loc"] = loc
    return PydanticCustomError(kind, "{text}", context)


def parse_source(text: str) -> Source:
    """Parse `env:NAME`, `file:PATH` or `command:ARGV`; raises a PydanticCustomError."""
    kind, sep, ref = text.partition(":")
    hint = "write env:NAME, file:/path/to/file or command:program args"
    if not sep or kind not in ("env", "file", "command"):
        raise _error("source", f"{text!r} is not a credential source", hint)
    if kind == "env":
        if not _ENV_NAME.fullmatch(ref):
            raise _error("source", f"{ref!r} is not an environment variable name", hint)
        return Source("env", ref)
    if kind == "file":
        if not (ref.startswith("/") or ref.startswith("~")):
            raise _error(
                "source",
                f"file path {ref!r} is relative",
                "give an absolute path or one starting with ~/",
            )
        return Source("file", ref)
    return Source("command", ref, _command_argv(ref))


def _command_argv(text: str) -> tuple[str, ...]:
    text = _unwrap(text.strip())
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError as e:  # an unclosed quote
        raise _error("source", f"command {text!r} cannot be split: {e}") from None
    if not words:
        raise _error("source", "the command is empty", "e.g. command:gh auth token")
    operators = [w for w in words if w in _SHELL_OPERATORS]
    if operators or any(w.startswith(("$(", "`")) for w in words):
        raise _error(
            "source",
            f"command {text!r} uses shell syntax ({', '.join(operators) or '$(...)'}) but "
            "commands run without a shell",
            "wrap it in a shell explicitly: command:sh -c '...'",
        )
    # The punctuation-aware lexer also split words like "a=b;" apart; re-split plainly.
    return tuple(shlex.split(text))


def _unwrap(text: str) -> str:
    """`"gh auth token"` -> `gh auth token`: a whole command quoted as one string (as YAML
    users write it) is that command, not a program whose name has spaces."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        try:
            words = shlex.split(text)
        except ValueError:
            return text
        if len(words) == 1:
            return words[0]
    return text


def parse_injection(text: str) -> Injection:
    """Parse `bearer`, `basic` or `header:NAME`; raises a PydanticCustomError."""
    hint = "use bearer, basic, or header:NAME (e.g. header:X-Api-Key)"
    if text in ("bearer", "basic"):
        return Injection(text, "authorization")  # type: ignore[arg-type]
    kind, sep, name = text.partition(":")
    if kind != "header" or not sep:
        raise _error("inject", f"{text!r} is not a way to inject a credential", hint)
    if not _TOKEN.fullmatch(name):
        raise _error("inject", f"{name!r} is not a header name", hint)
    if name.lower() in FORBIDDEN_HEADERS:
        raise _error(
            "inject",
            f"{name} frames or routes the request and cannot carry a credential",
            "use Authorization (bearer/basic) or an API key header such as X-Api-Key",
        )
    return Injection("header", name.lower())


def parse_ttl(value: object) -> int:
    """A duration in seconds from 30m, 1h30m, 90s, 2d or a whole number of seconds."""
    hint = "write a duration such as 30m, 1h, 1h30m, 90s or 2d"
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and re.fullmatch(r"(?:\d+[dhms])+", value.strip()):
        seconds = sum(int(n) * _TTL_UNITS[u] for n, u in _TTL_PART.findall(value))
    else:
        raise _error("ttl", f"{value!r} is not a duration", hint)
    if seconds <= 0:
        raise _error("ttl", f"{value!r} is not a positive duration", hint)
    return seconds


def _as_list(value: object) -> object:
    return [value] if isinstance(value, str) else value


class CredentialSpec(BaseModel):
    """One entry of `credentials:`. The parsed forms are `.source_parsed`, `.patterns`,
    `.injections`; the raw text stays in the fields for error messages and events."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: StrictStr
    source: StrictStr = Field(alias="from")
    hosts: list[StrictStr]
    inject: Annotated[list[StrictStr], BeforeValidator(_as_list)]
    username: StrictStr | None = None
    template: StrictStr | None = None
    ttl: Annotated[int, BeforeValidator(parse_ttl)] | None = None
    comment: StrictStr | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _ENV_NAME.fullmatch(value):
            raise _error(
                "name",
                f"{value!r} is not an environment variable name",
                "the name is the variable the sandbox sees, e.g. GITHUB_TOKEN",
            )
        if value in RESERVED_NAMES or value.startswith("CORRIDOR_"):
            raise _error("name", f"{value} is set by corridor itself", "choose another name")
        return value

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        parse_source(value)
        return value

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, values: list[str]) -> list[str]:
        if not values:
            raise _error(
                "hosts", "a credential needs at least one host", "e.g. hosts: [api.x.test]"
            )
        for text in values:
            try:
                pattern = parse_host_pattern(text)
            except InvalidHost as e:
                raise _error("hosts", f"{text!r} is not a valid host: {e.reason}") from None
            broad = pattern.broad_reason()
            if broad is not None:
                raise _error(
                    "hosts",
                    f"{broad}: a credential must be bound to hosts its owner runs",
                    "name the API's own hosts, e.g. api.example.com",
                )
        return values

    @field_validator("inject")
    @classmethod
    def _check_inject(cls, values: list[str]) -> list[str]:
        if not values:
            raise _error("inject", "an empty list injects nowhere", "e.g. inject: bearer")
        for text in values:
            parse_injection(text)
        if len(set(values)) != len(values):
            raise _error("inject", "the same injection is listed twice")
        return values

    @field_validator("username")
    @classmethod
    def _check_username(cls, value: str | None) -> str | None:
        if value is not None and (":" in value or _CONTROL.search(value) or not value):
            raise _error(
                "username", f"{value!r} cannot be a basic-auth user name", "no ':' and no controls"
            )
        return value

    @field_validator("template")
    @classmethod
    def _check_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.count(VALUE_SLOT) != 1:
            raise _error(
                "template",
                f"template {value!r} must contain {VALUE_SLOT} exactly once",
                "e.g. template: 'token {value}'",
            )
        if _CONTROL.search(value) or not value.isascii():
            raise _error("template", "a template is one line of plain ASCII header text")
        return value

    @model_validator(mode="after")
    def _check_combination(self) -> CredentialSpec:
        kinds = {parse_injection(text).kind for text in self.inject}
        if self.username is not None and "basic" not in kinds:
            raise _error(
                "username", "'username' is only used with inject: basic", loc=("username",)
            )
        if self.template is not None and "header" not in kinds:
            raise _error(
                "template", "'template' is only used with inject: header:NAME", loc=("template",)
            )
        return self

    @functools.cached_property
    def source_parsed(self) -> Source:
        return parse_source(self.source)

    @functools.cached_property
    def patterns(self) -> tuple[HostPattern, ...]:
        return tuple(parse_host_pattern(h) for h in self.hosts)

    @functools.cached_property
    def injections(self) -> tuple[Injection, ...]:
        out = []
        for text in self.inject:
            injection = parse_injection(text)
            if injection.kind == "header" and self.template is not None:
                injection = Injection("header", injection.header, self.template)
            out.append(injection)
        return tuple(out)

    def binds(self, host: str) -> bool:
        """Whether this credential may go to `host` (a normalised name)."""
        return any(p.matches(host) for p in self.patterns)


_SPEC_LIST = TypeAdapter(list[CredentialSpec])


def parse_credentials(data: object, where: str = "credentials") -> tuple[CredentialSpec, ...]:
    """Validate a `credentials:` list (as loaded from YAML); raise UserError on any problem.

    The message names the entry and field (`credentials[1].inject: ...`). Names must be
    unique. No value is read here.
    """
    if data is None:
        return ()
    try:
        specs = _SPEC_LIST.validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        ctx = first.get("ctx") or {}
        loc = (*first["loc"], *ctx.get("loc", ()))
        path = where + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
        if first["type"] == "extra_forbidden":
            raise UserError(
                f"{path}: unknown field",
                "fields: name, from, hosts, inject, username, template, ttl, comment",
            ) from None
        message = ctx.get("text") or first["msg"]
        raise UserError(f"{path}: {message}", ctx.get("hint")) from None
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        if spec.name in seen:
            raise UserError(f"{where}[{index}].name: {spec.name} is defined twice")
        seen.add(spec.name)
    return tuple(specs)
