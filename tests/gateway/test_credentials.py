"""Credential brokering: the model, the sources, placeholders, injection and the scanner."""

from __future__ import annotations

import base64
import itertools
import random
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.errors import UserError
from corridor.gateway import credentials, sources
from corridor.gateway.credentials import (
    BASE62,
    EXFILTRATION,
    EXPIRED,
    BodyScanner,
    Broker,
    Brokered,
    CredentialSpec,
    Finding,
    Secret,
    base62_checksum,
    format_ttl,
    make_placeholder,
    parse_credentials,
    parse_ttl,
    read_secret,
)

# Real values are built at run time: a literal token with a valid checksum in the tree
# would trip secret scanners. Each is long, random and unlike any placeholder.
RNG = random.Random(5)
GH_BODY = "".join(RNG.choice(BASE62) for _ in range(30))
GH_REAL = "ghp_" + GH_BODY + base62_checksum(GH_BODY)
INDEX_REAL = "index-" + "".join(RNG.choice(BASE62) for _ in range(24))
KEY_REAL = "k" + "".join(RNG.choice("0123456789abcdef") for _ in range(39))
HOST_ENV = {"GH_TOKEN_SRC": GH_REAL, "INDEX_SRC": INDEX_REAL, "KEY_SRC": KEY_REAL}

GITHUB: dict[str, Any] = {
    "name": "GITHUB_TOKEN",
    "from": "env:GH_TOKEN_SRC",
    "hosts": ["api.github.test", "github.test"],
    "inject": ["bearer", "basic"],
    "ttl": "30m",
}
INDEX: dict[str, Any] = {
    "name": "INDEX_PASSWORD",
    "from": "env:INDEX_SRC",
    "hosts": ["index.test"],
    "inject": "basic",
    "username": "ci-bot",
}
STAGING: dict[str, Any] = {
    "name": "STAGING_KEY",
    "from": "env:KEY_SRC",
    "hosts": ["*.staging.test"],
    "inject": "header:X-Api-Key",
    "template": "Key {value}",
}
START = 1000.0  # the broker's clock (time.monotonic in the gateway)
TTL = 30 * 60


@pytest.fixture
def broker() -> Broker:
    return Broker.start(parse_credentials([GITHUB, INDEX, STAGING]), START, HOST_ENV)


def placeholder(broker: Broker, name: str) -> str:
    return broker.sandbox_env()[name]


def basic(user: str | bytes, password: str | bytes) -> bytes:
    u = user.encode() if isinstance(user, str) else user
    p = password.encode() if isinstance(password, str) else password
    return b"Basic " + base64.b64encode(u + b":" + p)


# ---- the model -----------------------------------------------------------------------------


def test_a_full_list_parses():
    github, index, staging = parse_credentials([GITHUB, INDEX, STAGING])
    assert github.source_parsed.describe() == "env:GH_TOKEN_SRC"
    assert [str(i) for i in github.injections] == ["bearer", "basic"]
    assert github.ttl == TTL
    assert index.username == "ci-bot" and index.ttl is None
    (header,) = staging.injections
    assert (header.kind, header.header, header.template) == ("header", "x-api-key", "Key {value}")
    assert staging.binds("a.staging.test") and not staging.binds("staging.test")
    assert parse_credentials(None) == ()


def spec(**changes: Any) -> dict[str, Any]:
    data = dict(GITHUB)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


# name: (entry, message, hint)
# fmt: off
BAD_ENTRIES = {
    "name not a variable": (
        spec(name="GITHUB-TOKEN"),
        "credentials[0].name: 'GITHUB-TOKEN' is not an environment variable name",
        "the name is the variable the sandbox sees, e.g. GITHUB_TOKEN"),
    "reserved name": (
        spec(name="HTTPS_PROXY"),
        "credentials[0].name: HTTPS_PROXY is set by corridor itself", "choose another name"),
    "corridor's own prefix": (
        spec(name="CORRIDOR_X"),
        "credentials[0].name: CORRIDOR_X is set by corridor itself", "choose another name"),
    "missing from": (
        spec(**{"from": None}), "credentials[0].from: Field required", None),
    "unknown source": (
        spec(**{"from": "vault:x"}),
        "credentials[0].from: 'vault:x' is not a credential source",
        "write env:NAME, file:/path/to/file or command:program args"),
    "env source not a name": (
        spec(**{"from": "env:A B"}),
        "credentials[0].from: 'A B' is not an environment variable name",
        "write env:NAME, file:/path/to/file or command:program args"),
    "relative file": (
        spec(**{"from": "file:token.txt"}),
        "credentials[0].from: file path 'token.txt' is relative",
        "give an absolute path or one starting with ~/"),
    "empty command": (
        spec(**{"from": "command:  "}),
        "credentials[0].from: the command is empty", "e.g. command:gh auth token"),
    "command with a pipe": (
        spec(**{"from": "command:vault read x | jq .t"}),
        "credentials[0].from: command 'vault read x | jq .t' uses shell syntax (|) but "
        "commands run without a shell",
        "wrap it in a shell explicitly: command:sh -c '...'"),
    "command with $()": (
        spec(**{"from": "command:echo $(cat f)"}),
        "credentials[0].from: command 'echo $(cat f)' uses shell syntax ((, )) but "
        "commands run without a shell",
        "wrap it in a shell explicitly: command:sh -c '...'"),
    "command with an open quote": (
        spec(**{"from": "command:gh 'auth"}),
        "credentials[0].from: command \"gh 'auth\" cannot be split: No closing quotation",
        None),
    "no hosts": (
        spec(hosts=[]), "credentials[0].hosts: a credential needs at least one host",
        "e.g. hosts: [api.x.test]"),
    "bad host": (
        spec(hosts=["a..test"]),
        "credentials[0].hosts: 'a..test' is not a valid host: "
        "empty label (two dots in a row, or a leading dot)", None),
    "every host": (
        spec(hosts=["*"]),
        "credentials[0].hosts: '*' matches every host: a credential must be bound to hosts "
        "its owner runs", "name the API's own hosts, e.g. api.example.com"),
    "a whole TLD": (
        spec(hosts=["**.test"]),
        "credentials[0].hosts: **.test matches every name under the top-level domain 'test': "
        "a credential must be bound to hosts its owner runs",
        "name the API's own hosts, e.g. api.example.com"),
    "unknown injection": (
        spec(inject="cookie"),
        "credentials[0].inject: 'cookie' is not a way to inject a credential",
        "use bearer, basic, or header:NAME (e.g. header:X-Api-Key)"),
    "header name with a space": (
        spec(inject="header:X Key"),
        "credentials[0].inject: 'X Key' is not a header name",
        "use bearer, basic, or header:NAME (e.g. header:X-Api-Key)"),
    "framing header": (
        spec(inject="header:Content-Length"),
        "credentials[0].inject: Content-Length frames or routes the request and cannot carry "
        "a credential",
        "use Authorization (bearer/basic) or an API key header such as X-Api-Key"),
    "empty inject list": (
        spec(inject=[]), "credentials[0].inject: an empty list injects nowhere",
        "e.g. inject: bearer"),
    "same injection twice": (
        spec(inject=["bearer", "bearer"]),
        "credentials[0].inject: the same injection is listed twice", None),
    "username without basic": (
        spec(inject="bearer", username="x"),
        "credentials[0].username: 'username' is only used with inject: basic", None),
    "username with a colon": (
        spec(username="a:b"),
        "credentials[0].username: 'a:b' cannot be a basic-auth user name",
        "no ':' and no controls"),
    "template without header": (
        spec(template="x {value}"),
        "credentials[0].template: 'template' is only used with inject: header:NAME", None),
    "template without the slot": (
        spec(inject="header:X-K", template="x"),
        "credentials[0].template: template 'x' must contain {value} exactly once",
        "e.g. template: 'token {value}'"),
    "template with a newline": (
        spec(inject="header:X-K", template="{value}\r\nX-Evil: 1"),
        "credentials[0].template: a template is one line of plain ASCII header text", None),
    "ttl not a duration": (
        spec(ttl="soon"),
        "credentials[0].ttl: 'soon' is not a duration",
        "write a duration such as 30m, 1h, 1h30m, 90s or 2d"),
    "ttl zero": (
        spec(ttl=0), "credentials[0].ttl: 0 is not a positive duration",
        "write a duration such as 30m, 1h, 1h30m, 90s or 2d"),
    "unknown field": (
        spec(value="x"), "credentials[0].value: unknown field",
        "fields: name, from, hosts, inject, username, template, ttl, comment"),
    "hosts as text": (
        spec(hosts="github.test"), "credentials[0].hosts: Input should be a valid list", None),
}
# fmt: on


@pytest.mark.parametrize(("entry", "message", "hint"), BAD_ENTRIES.values(), ids=BAD_ENTRIES)
def test_bad_entries_are_refused_with_a_clear_error(entry, message: str, hint: str | None):
    with pytest.raises(UserError) as e:
        parse_credentials([entry])
    assert (e.value.message, e.value.hint) == (message, hint)


def test_names_must_be_unique():
    with pytest.raises(UserError) as e:
        parse_credentials([GITHUB, spec(hosts=["other.test"])])
    assert e.value.message == "credentials[1].name: GITHUB_TOKEN is defined twice"


def test_not_a_list():
    with pytest.raises(UserError) as e:
        parse_credentials({"name": "X"})
    assert e.value.message == "credentials: Input should be a valid list"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("1h", 3600), ("1h30m", 5400), ("90s", 90), ("2d", 172800), (45, 45)],
)
def test_ttl_durations(text: str | int, seconds: int):
    assert parse_ttl(text) == seconds
    assert parse_ttl(format_ttl(seconds)) == seconds


@pytest.mark.parametrize(
    ("source", "argv"),
    [
        ("command:gh auth token", ("gh", "auth", "token")),
        ('command:"gh auth token"', ("gh", "auth", "token")),  # the issue's own spelling
        ("command:'gh auth token'", ("gh", "auth", "token")),
        ('command:"my tool" token', ("my tool", "token")),
        ("command:sh -c 'a | b'", ("sh", "-c", "a | b")),
    ],
)
def test_command_argv(source: str, argv: tuple[str, ...]):
    assert CredentialSpec.model_validate(spec(**{"from": source})).source_parsed.argv == argv


def test_a_quoted_whole_command_is_checked_for_shell_syntax_too():
    with pytest.raises(UserError) as e:
        parse_credentials([spec(**{"from": 'command:"vault read x | jq"'})])
    assert e.value.message == (
        "credentials[0].from: command 'vault read x | jq' uses shell syntax (|) but commands "
        "run without a shell"
    )


def test_command_is_split_like_a_shell_but_never_run_by_one():
    parsed = CredentialSpec.model_validate(
        spec(**{"from": "command:sh -c 'vault read -field=t x | tr -d x'"})
    ).source_parsed
    assert parsed.argv == ("sh", "-c", "vault read -field=t x | tr -d x")
    assert parsed.describe() == "command:sh"  # arguments may hold keys: never recorded


# ---- reading values ------------------------------------------------------------------------


def one(entry: dict[str, Any]) -> CredentialSpec:
    (parsed,) = parse_credentials([entry])
    return parsed


def test_env_source():
    assert read_secret(one(GITHUB), HOST_ENV).reveal() == GH_REAL


def test_file_source_strips_the_newline_and_expands_home(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "token").write_text(f"  {INDEX_REAL}\n")
    assert read_secret(one(spec(**{"from": "file:~/token"}))).reveal() == INDEX_REAL


def test_command_source_runs_without_a_shell_with_the_host_env():
    script = "import os; print(os.environ['GH_TOKEN_SRC'] + ' ;echo hi')"
    entry = spec(**{"from": f"command:{sys.executable} -c {script!r}"}, inject="basic")
    assert read_secret(one(entry), HOST_ENV).reveal() == GH_REAL + " ;echo hi"


def test_command_source_gets_no_stdin():
    entry = spec(**{"from": "command:cat"})  # would wait forever on a terminal
    with pytest.raises(UserError) as e:
        read_secret(one(entry), {"PATH": "/usr/bin:/bin"})
    assert e.value.message == "credential GITHUB_TOKEN (command:cat): the value is empty"


# name: (source, message, hint); every case is a user's mistake with a clear message
# fmt: off
SOURCE_ERRORS = {
    "unset variable": (
        "env:NOT_SET_ANYWHERE",
        "credential GITHUB_TOKEN (env:NOT_SET_ANYWHERE): the environment variable "
        "NOT_SET_ANYWHERE is not set",
        "export NOT_SET_ANYWHERE before running corridor"),
    "missing file": (
        "file:/nonexistent/token",
        "credential GITHUB_TOKEN (file:/nonexistent/token): cannot read /nonexistent/token: "
        "No such file or directory", None),
    "directory": (
        "file:/",
        "credential GITHUB_TOKEN (file:/): cannot read /: Is a directory", None),
    "command not found": (
        "command:corridor-no-such-program x",
        "credential GITHUB_TOKEN (command:corridor-no-such-program): command not found: "
        "corridor-no-such-program", None),
    "command fails": (
        f"command:{sys.executable} -c 'import sys; print(\"{GH_REAL}\"); sys.exit(3)'",
        f"credential GITHUB_TOKEN (command:{sys.executable}): the command failed "
        "(exit status 3)", "its own error output, if any, is printed above"),
    "two lines": (
        f"command:{sys.executable} -c 'print(\"a\\nb\")'",
        f"credential GITHUB_TOKEN (command:{sys.executable}): the value has more than one line",
        "the source must give only the token"),
    "not for a header": (
        f"command:{sys.executable} -c 'print(\"pass word\")'",
        f"credential GITHUB_TOKEN (command:{sys.executable}): the value is not visible ASCII, "
        "so it cannot go in a header",
        "bearer and header values are tokens; use inject: basic for a password"),
}
# fmt: on


@pytest.mark.parametrize(("source", "message", "hint"), SOURCE_ERRORS.values(), ids=SOURCE_ERRORS)
def test_source_errors(source: str, message: str, hint: str | None):
    with pytest.raises(UserError) as e:
        read_secret(one(spec(**{"from": source})), HOST_ENV)
    assert (e.value.message, e.value.hint) == (message, hint)
    assert GH_REAL not in str(e.value)


def test_command_timeout(monkeypatch):
    monkeypatch.setattr(sources, "COMMAND_TIMEOUT_S", 0.2)
    with pytest.raises(UserError) as e:
        read_secret(one(spec(**{"from": "command:sleep 5"})), {"PATH": "/usr/bin:/bin"})
    assert e.value.message == (
        "credential GITHUB_TOKEN (command:sleep): the command did not finish within 0.2 s"
    )


def test_oversized_file(tmp_path: Path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * (credentials.MAX_SECRET_BYTES + 1))
    with pytest.raises(UserError) as e:
        read_secret(one(spec(**{"from": f"file:{big}"})))
    assert e.value.message == (
        f"credential GITHUB_TOKEN (file:{big}): {big} is larger than 65536 bytes"
    )


def test_a_password_with_spaces_is_fine_for_basic(tmp_path: Path):
    (tmp_path / "pw").write_text("correct horse battery staple\n")
    entry = spec(**{"from": f"file:{tmp_path / 'pw'}"}, inject="basic")
    assert read_secret(one(entry)).reveal() == "correct horse battery staple"


def test_secret_never_shows_itself():
    secret = Secret(GH_REAL)
    assert repr(secret) == str(secret) == f"{secret}" == "Secret(<hidden>)"


# ---- placeholders --------------------------------------------------------------------------


def random_token(prefix: str, alphabet: str, n: int) -> str:
    return prefix + "".join(RNG.choice(alphabet) for _ in range(n))


HEX = "0123456789abcdef"
URLSAFE = BASE62 + "-_"
JWT_HEAD = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjaSIsImV4cCI6MTkwMDAwMDAwMH0."

# name: (real value, pattern the placeholder must match)
# fmt: off
PLACEHOLDERS = {
    "GitHub classic": (GH_REAL, r"ghp_[A-Za-z0-9]{36}"),
    "GitHub OAuth": ("gho_" + GH_BODY + base62_checksum(GH_BODY), r"gho_[A-Za-z0-9]{36}"),
    "npm": ("npm_" + GH_BODY + base62_checksum(GH_BODY), r"npm_[A-Za-z0-9]{36}"),
    "GitHub fine-grained": (
        random_token("github_pat_", BASE62, 22) + random_token("_", BASE62, 59),
        r"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}"),
    "GitLab": (random_token("glpat-", BASE62, 20), r"glpat-[A-Za-z0-9]{20}"),
    "separators kept": (random_token("glpat-", BASE62, 8) + random_token("_", BASE62, 12),
                        r"glpat-[A-Za-z0-9]{8}_[A-Za-z0-9]{12}"),
    "versioned prefix": (random_token("sk-ant-api03-", BASE62, 40),
                         r"sk-ant-api03-[A-Za-z0-9]{40}"),
    "hex body": (random_token("dop_v1_", HEX, 64), r"dop_v1_[0-9a-f]{64}"),
    "letters only": (random_token("hf_", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ", 34),
                     r"hf_[A-Za-z]{34}"),
    "JWT": (JWT_HEAD + random_token("", URLSAFE, 43), re.escape(JWT_HEAD) + r"[A-Za-z0-9_-]{43}"),
    "password": ("hunter2-but-longer", r"corridor-[A-Za-z0-9]{32}"),
    "prefix but too short": ("ghp_abc", r"corridor-[A-Za-z0-9]{32}"),
    "uuid": ("123e4567-e89b-12d3-a456-426614174000", r"corridor-[A-Za-z0-9]{32}"),
}
# fmt: on


@pytest.mark.parametrize(("value", "shape"), PLACEHOLDERS.values(), ids=PLACEHOLDERS)
def test_placeholder_keeps_a_public_format_and_nothing_else(value: str, shape: str):
    made = {make_placeholder(value) for _ in range(20)}
    assert len(made) == 20  # random each time
    for p in made:
        assert re.fullmatch(shape, p), p
        assert value not in p


def test_github_placeholder_has_a_valid_checksum():
    for _ in range(50):
        p = make_placeholder(GH_REAL)
        assert base62_checksum(p[4:34]) == p[34:]


def test_checksum_matches_the_published_example():
    # The example token from the public description of GitHub's format, without prefix.
    assert base62_checksum("zQWBuTSOoRi4A9spHcVY5ncnsDkxkJ") == "0mLq17"


def test_placeholders_are_unique_per_session():
    seen = set()
    for _ in range(200):
        b = Broker.start(parse_credentials([GITHUB, INDEX]), START, HOST_ENV)
        seen.update(b.sandbox_env().values())
    assert len(seen) == 400


# ---- injection -----------------------------------------------------------------------------

Headers = list[tuple[bytes, bytes]]


def auth(value: bytes) -> Headers:
    return [(b"accept", b"*/*"), (b"authorization", value)]


# name: (credential, host, header value built from the placeholder, value expected upstream)
# fmt: off
INJECT = {
    "bearer": ("GITHUB_TOKEN", "api.github.test",
               lambda p: b"Bearer " + p, b"Bearer " + GH_REAL.encode()),
    "bearer, scheme in any case": ("GITHUB_TOKEN", "API.github.test.",
                                   lambda p: b"bEaReR  " + p + b" ", b"Bearer " + GH_REAL.encode()),
    "basic, git-style user": ("GITHUB_TOKEN", "github.test",
                              lambda p: basic("x-access-token", p),
                              basic("x-access-token", GH_REAL)),
    "basic, token as user name": ("GITHUB_TOKEN", "github.test",
                                  lambda p: basic(p, ""), basic(GH_REAL, "")),
    "basic, configured user replaces the given one": ("INDEX_PASSWORD", "index.test",
                                                     lambda p: basic("anyone", p),
                                                     basic("ci-bot", INDEX_REAL)),
}
# fmt: on


@pytest.mark.parametrize(("name", "host", "sent", "upstream"), INJECT.values(), ids=INJECT)
def test_inject_swaps_on_bound_hosts(broker: Broker, name, host, sent, upstream: bytes):
    result = broker.inject(auth(sent(placeholder(broker, name).encode())), host, START + 1)
    assert result.refusal is None
    assert result.used == (name,)
    assert result.headers == auth(upstream)


def test_inject_header_with_template(broker: Broker):
    p = placeholder(broker, "STAGING_KEY").encode()
    headers = [(b"X-API-Key", b"Key " + p), (b"x-other", b"Key " + p)]
    result = broker.inject(headers, "eu.staging.test", START)
    assert result.headers == [
        (b"X-API-Key", b"Key " + KEY_REAL.encode()),
        (b"x-other", b"Key " + p),
    ]
    assert result.used == ("STAGING_KEY",)


# name: (host, headers built from the GitHub placeholder) -> passed through untouched
# fmt: off
NOT_INJECTED = {
    "unbound host": ("other.test", lambda p: auth(b"Bearer " + p)),
    "subdomain of a bound host": ("x.api.github.test", lambda p: auth(b"Bearer " + p)),
    "IP address": ("127.0.0.1", lambda p: auth(b"Bearer " + p)),
    # The last character changed (to one it is not: placeholders are random).
    "another token": (
        "api.github.test",
        lambda p: auth(b"Bearer " + p[:-1] + (b"y" if p.endswith(b"x") else b"x")),
    ),
    "wrong scheme": ("api.github.test", lambda p: auth(b"Token " + p)),
    "other header": ("api.github.test", lambda p: [(b"x-token", b"Bearer " + p)]),
    "broken base64": ("api.github.test", lambda p: auth(b"Basic !!" + p)),
    "basic without a colon": ("api.github.test",
                              lambda p: auth(b"Basic " + base64.b64encode(p))),
    "template not matched": ("eu.staging.test", lambda p: [(b"x-api-key", p)]),
}
# fmt: on


@pytest.mark.parametrize(("host", "make"), NOT_INJECTED.values(), ids=NOT_INJECTED)
def test_inject_leaves_other_requests_alone(broker: Broker, host: str, make):
    headers = make(placeholder(broker, "GITHUB_TOKEN").encode())
    result = broker.inject(headers, host, START)
    assert result == credentials.InjectResult(headers)


def test_one_credential_is_not_swapped_on_another_ones_host(broker: Broker):
    p = placeholder(broker, "INDEX_PASSWORD").encode()
    headers = auth(basic("ci-bot", p))
    assert broker.inject(headers, "github.test", START).headers == headers


def test_expiry_boundary(broker: Broker):
    headers = auth(b"Bearer " + placeholder(broker, "GITHUB_TOKEN").encode())
    before = broker.inject(headers, "api.github.test", START + TTL - 0.001)
    assert before.used == ("GITHUB_TOKEN",) and before.refusal is None
    after = broker.inject(headers, "api.github.test", START + TTL)
    assert after.refusal == f"{EXPIRED}: GITHUB_TOKEN (ttl 30m)"
    assert after.headers == headers and after.used == ()


def test_expired_placeholder_inside_basic_auth_is_refused(broker: Broker):
    headers = auth(basic("x", placeholder(broker, "GITHUB_TOKEN")))
    result = broker.inject(headers, "github.test", START + TTL + 5)
    assert result.refusal == f"{EXPIRED}: GITHUB_TOKEN (ttl 30m)"


def test_after_expiry_requests_without_the_placeholder_pass(broker: Broker):
    headers = auth(b"Bearer something-else")
    assert broker.inject(headers, "api.github.test", START + TTL * 2).refusal is None


def test_credential_without_ttl_never_expires(broker: Broker):
    headers = auth(basic("x", placeholder(broker, "INDEX_PASSWORD")))
    result = broker.inject(headers, "index.test", START + 10**9)
    assert result.used == ("INDEX_PASSWORD",)


def test_inject_result_repr_hides_real_values(broker: Broker):
    headers = auth(b"Bearer " + placeholder(broker, "GITHUB_TOKEN").encode())
    result = broker.inject(headers, "api.github.test", START)
    assert GH_REAL.encode() in result.headers[1][1]
    assert GH_REAL not in repr(result)


# ---- the scanner ---------------------------------------------------------------------------


def pct_all(data: bytes) -> bytes:
    return "".join(f"%{b:02X}" for b in data).encode()


# name: (where, what, bytes made from the secret, expected where/encoding in the finding)
# fmt: off
SCAN = {
    "url plain": ("url", lambda s: b"/upload?t=" + s, "url", "plain"),
    "url percent-encoded": ("url", lambda s: b"/?t=" + pct_all(s), "url", "percent-encoded"),
    "url double-encoded": ("url", lambda s: b"/?t=" + pct_all(pct_all(s)), "url",
                           "percent-encoded"),
    "url lower-cased": ("url", lambda s: b"/" + s.lower(), "url", "plain"),
    "url base64 in the path": ("url", lambda s: b"/" + base64.urlsafe_b64encode(s), "url",
                               "base64"),
    "header value": ("header", lambda s: [(b"x-note", b"token " + s)], "header x-note", "plain"),
    "header name": ("header", lambda s: [(s, b"1")], "header " + "{}", "plain"),
    "basic auth to another host": ("header", lambda s: [(b"authorization", basic("u", s))],
                                   "header authorization", "base64"),
    "body json": ("body", lambda s: b'{"token": "' + s + b'"}', "body", "plain"),
    "body form, percent-encoded": ("body", lambda s: b"a=1&t=" + pct_all(s), "body",
                                   "percent-encoded"),
    "body hex": ("body", lambda s: s.hex().encode(), "body", "hex"),
    "body HEX": ("body", lambda s: s.hex().upper().encode(), "body", "hex"),
    "body base64 offset 0": ("body", lambda s: base64.b64encode(s), "body", "base64"),
    "body base64 offset 1": ("body", lambda s: base64.b64encode(b"a" + s + b"z"), "body",
                             "base64"),
    "body base64 offset 2": ("body", lambda s: base64.b64encode(b"ab" + s), "body", "base64"),
    "body urlsafe base64": ("body", lambda s: base64.urlsafe_b64encode(b"\xff\xfe" + s), "body",
                            "base64"),
    "body base64, percent-encoded": ("body", lambda s: pct_all(base64.b64encode(b"?" + s)),
                                     "body", "percent-encoded base64"),
}
# fmt: on


def request_with(place: str, data: Any) -> tuple[bytes, list, bytes]:
    if place == "url":
        return data, [], b""
    if place == "header":
        return b"/", data, b""
    return b"/", [(b"content-type", b"application/json")], data


@pytest.mark.parametrize("what", ["placeholder", "value"])
@pytest.mark.parametrize(("place", "make", "where", "encoding"), SCAN.values(), ids=SCAN)
def test_scan_finds_a_credential_sent_elsewhere(
    broker: Broker, what: str, place: str, make, where: str, encoding: str
):
    secret = (placeholder(broker, "GITHUB_TOKEN") if what == "placeholder" else GH_REAL).encode()
    url, headers, body = request_with(place, make(secret))
    finding = broker.scan("Evil.Test.", url, headers, body)
    where = where.format(secret.decode().lower())
    assert finding == Finding("GITHUB_TOKEN", what, where, encoding, "evil.test")
    assert finding.reason == (f"{EXFILTRATION}: GITHUB_TOKEN {what} in the {where} ({encoding})")


def test_scan_ignores_the_bound_host(broker: Broker):
    p = placeholder(broker, "GITHUB_TOKEN").encode()
    assert broker.scan("api.github.test", b"/?t=" + p, [(b"x", p)], p) is None


def test_scan_flags_a_credential_on_another_credentials_host(broker: Broker):
    p = placeholder(broker, "GITHUB_TOKEN").encode()
    finding = broker.scan("index.test", "/", [(b"authorization", basic("ci-bot", p))])
    assert finding is not None and finding.credential == "GITHUB_TOKEN"


# name: request parts that are not a credential
# fmt: off
CLEAN = {
    "ordinary request": ("/search?q=hello", [(b"accept", b"text/html")], b"a=1&b=2"),
    "half a placeholder": ("/", [], None),
    "similar shape": ("/ghp_" + "x" * 36, [], b""),
}
# fmt: on


@pytest.mark.parametrize(("url", "headers", "body"), CLEAN.values(), ids=CLEAN)
def test_scan_passes_clean_requests(broker: Broker, url: str, headers, body: bytes | None):
    if body is None:
        body = placeholder(broker, "GITHUB_TOKEN")[:20].encode()
    assert broker.scan("elsewhere.test", url, headers, body) is None


ENCODINGS = {
    "plain": lambda s: s,
    "percent": pct_all,
    "base64": base64.b64encode,
    "urlsafe": base64.urlsafe_b64encode,
    "hex": lambda s: s.hex().encode(),
}


def feed_all(scanner: BodyScanner, pieces: list[bytes]) -> tuple[bytes, list[Finding]]:
    """What the scanner released over all `pieces` (and at the end), and its findings."""
    released, found = [], []
    for piece in pieces:
        step = scanner.feed(piece)
        released.append(step.release)
        if step.finding is not None:
            found.append(step.finding)
            return b"".join(released), found
    released.append(scanner.finish())
    return b"".join(released), found


@settings(max_examples=150, deadline=None)
@given(
    prefix=st.binary(max_size=40),
    suffix=st.binary(max_size=40),
    encoding=st.sampled_from(sorted(ENCODINGS)),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=4),
    what=st.sampled_from(["placeholder", "value"]),
)
def test_body_scanner_finds_it_however_the_body_is_cut(prefix, suffix, encoding, cuts, what):
    broker = Broker.start(parse_credentials([GITHUB]), START, HOST_ENV)
    secret = (placeholder(broker, "GITHUB_TOKEN") if what == "placeholder" else GH_REAL).encode()
    if encoding in ("base64", "urlsafe"):
        body = ENCODINGS[encoding](prefix + secret + suffix)  # any alignment inside
    else:
        body = prefix + ENCODINGS[encoding](secret) + suffix
    bounds = [0, *sorted({min(c, len(body)) for c in cuts}), len(body)]
    pieces = [body[a:b] for a, b in itertools.pairwise(bounds)]
    _released, found = feed_all(broker.body_scanner("other.test"), pieces)
    assert found and found[0].credential == "GITHUB_TOKEN" and found[0].what == what


# name: (how the secret is written in the body after a prefix;
#         where in the body the encoded secret starts: nothing from there on may leave)
# fmt: off
SPLIT = {
    "plain": (lambda p, s: p + s, lambda p: len(p)),
    "upper case": (lambda p, s: p + s.upper(), lambda p: len(p)),
    "percent-encoded": (lambda p, s: p + pct_all(s), lambda p: len(p)),
    "twice percent-encoded": (lambda p, s: p + pct_all(pct_all(s)), lambda p: len(p)),
    "hex": (lambda p, s: p + s.hex().encode(), lambda p: len(p)),
    "HEX": (lambda p, s: p + s.hex().upper().encode(), lambda p: len(p)),
    # base64 of prefix + secret: the prefix is a whole number of 3-byte groups, and 0, 1
    # or 2 more bytes put the secret at each offset of a group; its own characters start
    # after 4 * (bytes before it) // 3.
    "base64 offset 0": (lambda p, s: base64.b64encode(p + s), lambda p: 4 * len(p) // 3),
    "base64 offset 1": (lambda p, s: base64.b64encode(p + b"x" + s),
                        lambda p: 4 * (len(p) + 1) // 3),
    "base64 offset 2": (lambda p, s: base64.b64encode(p + b"xy" + s),
                        lambda p: 4 * (len(p) + 2) // 3),
    "urlsafe base64": (lambda p, s: base64.urlsafe_b64encode(b"\xff" + p + s),
                       lambda p: 4 * (len(p) + 1) // 3),
    "base64, percent-encoded": (lambda p, s: p + pct_all(base64.b64encode(s)), lambda p: len(p)),
}
# fmt: on


@pytest.mark.parametrize("what", ["placeholder", "value"])
@pytest.mark.parametrize(("write", "start"), SPLIT.values(), ids=SPLIT)
def test_a_value_split_in_two_at_any_offset_is_found_and_none_of_it_leaves(what: str, write, start):
    broker = Broker.start(parse_credentials([GITHUB]), START, HOST_ENV)
    secret = (placeholder(broker, "GITHUB_TOKEN") if what == "placeholder" else GH_REAL).encode()
    # A prefix longer than what the scanner holds back, so that some of it is released.
    prefix = b"z" * 2500 + b"data="  # 2505 bytes: 835 base64 groups
    body = write(prefix, secret) + b"&end=1"
    begins = start(prefix)
    assert broker.body_scanner("other.test").hold < len(prefix)
    for cut in range(len(body) + 1):
        released, found = feed_all(broker.body_scanner("other.test"), [body[:cut], body[cut:]])
        assert [(f.credential, f.what, f.where) for f in found] == [
            ("GITHUB_TOKEN", what, "body")
        ], cut
        # Only bytes before the value (or its base64 characters) were let go.
        assert body.startswith(released) and len(released) <= begins, cut


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=6))
def test_a_clean_body_goes_through_whole_and_in_order(body: bytes, cuts: list[int]):
    broker = Broker.start(parse_credentials([GITHUB]), START, HOST_ENV)
    scanner = broker.body_scanner("other.test")
    bounds = [0, *sorted({min(c, len(body)) for c in cuts}), len(body)]
    released, found = feed_all(scanner, [body[a:b] for a, b in itertools.pairwise(bounds)])
    assert found == []
    assert released == body


def test_the_scanner_holds_back_no_more_than_one_value_can_span():
    broker = Broker.start(parse_credentials([GITHUB]), START, HOST_ENV)
    scanner = broker.body_scanner("other.test")
    # The longest needle is the real value's hex (2 characters a byte); each of the
    # MAX_DECODE_ROUNDS rounds of percent-encoding may triple it on the wire.
    longest = 2 * max(len(GH_REAL), len(placeholder(broker, "GITHUB_TOKEN")))
    assert scanner.hold == longest * 3**credentials.MAX_DECODE_ROUNDS - 1
    body = b"x" * (scanner.hold + 10)
    assert scanner.feed(body[:5]).release == b""  # all of it might begin a value
    assert scanner.feed(body[5:]).release == body[:10]
    assert scanner.finish() == body[10:]


def test_a_host_with_nothing_to_search_for_streams_without_holding_back():
    broker = Broker.start(parse_credentials([GITHUB]), START, HOST_ENV)
    scanner = broker.body_scanner("api.github.test")  # the credential's own host
    assert scanner.hold == 0
    assert scanner.feed(b"abc").release == b"abc"
    assert scanner.finish() == b""


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=2000))
def test_body_scanner_is_quiet_on_unrelated_bytes(body: bytes):
    broker = Broker.start(parse_credentials([GITHUB]), START, HOST_ENV)
    assert broker.body_scanner("other.test").feed(body).finding is None


def test_short_values_are_not_scanned_for_but_placeholders_are():
    short = dict(INDEX, **{"from": "env:S"})
    broker = Broker.start(parse_credentials([short]), START, {"S": "pw1"})
    assert broker.warnings == [
        "credential INDEX_PASSWORD: the value is shorter than 8 characters, so other "
        "requests are not searched for it"
    ]
    assert broker.scan("x.test", "/pw1", []) is None
    assert broker.scan("x.test", "/" + placeholder(broker, "INDEX_PASSWORD"), []) is not None
    assert broker.values_in({"A": "pw1", "B": "pw12", "C": "x"}) == ["A"]


# ---- the real value stays inside the broker ------------------------------------------------


def test_sandbox_env_holds_placeholders_only(broker: Broker):
    env = broker.sandbox_env()
    assert set(env) == {"GITHUB_TOKEN", "INDEX_PASSWORD", "STAGING_KEY"}
    assert broker.values_in(env) == []
    assert broker.values_in({**env, "LEAK": f"x{GH_REAL}x"}) == ["LEAK"]


def test_nothing_printable_holds_a_real_value(broker: Broker):
    p = placeholder(broker, "GITHUB_TOKEN").encode()
    texts = [
        repr(broker),
        repr(broker.credentials),
        str(broker.describe()),
        str(broker.bound_patterns()),
        repr(broker.scan("e.test", b"/" + GH_REAL.encode(), [])),
        broker.scan("e.test", b"/" + p, []).reason,  # type: ignore[union-attr]
        repr(broker.inject(auth(b"Bearer " + p), "api.github.test", START)),
        repr(broker.inject(auth(b"Bearer " + p), "api.github.test", START + TTL)),
    ]
    for text in texts:
        for real in (GH_REAL, INDEX_REAL, KEY_REAL):
            assert real not in text


def test_describe_records_sources_not_values(broker: Broker):
    assert broker.describe()[0] == {
        "name": "GITHUB_TOKEN",
        "from": "env:GH_TOKEN_SRC",
        "hosts": ["api.github.test", "github.test"],
        "inject": ["bearer", "basic"],
        "ttl_s": 1800,
    }


def test_bound_patterns_are_what_must_be_inspected(broker: Broker):
    assert [str(p) for p in broker.bound_patterns()] == [
        "api.github.test",
        "github.test",
        "index.test",
        "*.staging.test",
    ]


def test_brokered_expiry():
    (parsed,) = parse_credentials([GITHUB])
    c = Brokered(parsed, "p", Secret("the-real-value"), expires=10.0)
    assert not c.expired(9.999) and c.expired(10.0)
    assert "the-real-value" not in repr(c)
