"""Loading policy files and --allow values: exact error texts, origins, merging, hashing."""

from __future__ import annotations

import ipaddress
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.errors import UserError
from corridor.policy import (
    Limits,
    Policy,
    PolicyError,
    Rule,
    load_policy,
    policy_from_flags,
    policy_hash,
    policy_to_dict,
    rule_from_allow_flag,
)


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in a fresh directory so messages name files as "policy.yaml"."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def _load_error(files: dict[str, str | bytes], name: str = "policy.yaml") -> PolicyError:
    _write(files)
    with pytest.raises(PolicyError) as e:
        load_policy(Path(name))
    return e.value


HINT_YAML = "check the indentation and quoting near that place"

# name -> (policy.yaml text, message, hint)
FILE_ERRORS: dict[str, tuple[str | bytes, str, str | None]] = {
    "unknown rule key": (
        "version: 1\nallow:\n  - hots: a.test\n",
        "policy.yaml:3:5: allow[0].hots: unknown field",
        "did you mean 'host'?",
    ),
    "unknown top-level key": (
        "version: 1\nalow:\n  - host: a.test\n",
        "policy.yaml:2:1: alow: unknown field",
        "did you mean 'allow'?",
    ),
    "unknown key, nothing close": (
        "version: 1\nzzz: 1\n",
        "policy.yaml:2:1: zzz: unknown field",
        "known fields here: version, extends, mode, allow, deny, limits, credentials",
    ),
    "unknown limits key": (
        "version: 1\nlimits:\n  max_conections: 3\n",
        "policy.yaml:3:3: limits.max_conections: unknown field",
        "did you mean 'max_connections'?",
    ),
    "origin is not a file key": (
        "version: 1\nallow:\n  - host: a.test\n    origin: x\n",
        "policy.yaml:4:5: allow[0].origin: unknown field",
        "known fields here: host, cidr, ports, methods, paths, inspect, broad, comment",
    ),
    "duplicate top-level key": (
        "version: 1\nmode: audit\nmode: enforce\n",
        "policy.yaml:3:1: mode: duplicate key (first written on line 2)",
        "keep only one of them",
    ),
    "duplicate rule key": (
        "version: 1\nallow:\n  - host: a.test\n    host: b.test\n",
        "policy.yaml:4:5: allow[0].host: duplicate key (first written on line 3)",
        "keep only one of them",
    ),
    "port out of range, flow list": (
        "version: 1\nallow:\n  - host: a.test\n    ports: [443, 70000]\n",
        "policy.yaml:4:18: allow[0].ports[1]: 70000 is not a port (1-65535)",
        "a port is a whole number from 1 to 65535, e.g. 443",
    ),
    "port zero, block list": (
        "version: 1\nallow:\n  - host: a.test\n    ports:\n      - 443\n      - 0\n",
        "policy.yaml:6:9: allow[0].ports[1]: 0 is not a port (1-65535)",
        "a port is a whole number from 1 to 65535, e.g. 443",
    ),
    "port quoted": (
        "version: 1\nallow:\n  - host: a.test\n    ports: ['443']\n",
        "policy.yaml:4:13: allow[0].ports[0]: expected a whole number, got '443'",
        "write the number without quotes",
    ),
    "ports not a list": (
        "version: 1\nallow:\n  - host: a.test\n    ports: 443\n",
        "policy.yaml:4:12: allow[0].ports: expected a list, got 443",
        "write [a, b] or one '- item' per line",
    ),
    "bad cidr": (
        "version: 1\ndeny:\n  - cidr: 10.0.0/33\n",
        "policy.yaml:3:11: deny[0].cidr: '10.0.0/33' is not an address range",
        "an address range is an address and a prefix length, e.g. 10.20.0.0/16",
    ),
    "cidr with host bits": (
        "version: 1\nallow:\n  - cidr: 10.0.0.1/8\n",
        "policy.yaml:3:11: allow[0].cidr: '10.0.0.1/8' has bits set after the prefix",
        "did you mean '10.0.0.0/8'?",
    ),
    "broad pattern": (
        "version: 1\nallow:\n  - host: a.test\n  - host: '*.com'\n",
        "policy.yaml:4:11: allow[1].host: *.com matches every name under the top-level domain "
        "'com', which is broad",
        "narrow it, or add 'broad: true' to the rule if that is really meant",
    ),
    "broad public suffix": (
        "version: 1\nallow:\n  - host: '**.github.io'\n",
        "policy.yaml:3:11: allow[0].host: **.github.io matches every name under the public "
        "suffix 'github.io', which is broad",
        "narrow it, or add 'broad: true' to the rule if that is really meant",
    ),
    "broad cidr": (
        "version: 1\nallow:\n  - cidr: 0.0.0.0/0\n",
        "policy.yaml:3:11: allow[0].cidr: 0.0.0.0/0 is wider than a /8, which is broad",
        "narrow it, or add 'broad: true' to the rule if that is really meant",
    ),
    "bad host": (
        "version: 1\nallow:\n  - host: exa mple.test\n",
        "policy.yaml:3:11: allow[0].host: 'exa mple.test' is not a valid host: "
        "' ' is not allowed in a host name",
        "a host is a DNS name, '*.example.com' (subdomains) or '**.example.com' (both)",
    ),
    "host with a port": (
        "version: 1\nallow:\n  - host: a.test:8443\n",
        "policy.yaml:3:11: allow[0].host: 'a.test:8443' is not a valid host: "
        "':' is not allowed in a host name",
        "put the port in 'ports:', not in the host",
    ),
    "host is an URL": (
        "version: 1\nallow:\n  - host: https://a.test/\n",
        "policy.yaml:3:11: allow[0].host: 'https://a.test/' is not a valid host: "
        "':' is not allowed in a host name",
        "write the host name only, without scheme or path, e.g. api.example.com",
    ),
    "host is an address": (
        "version: 1\nallow:\n  - host: 10.1.2.3\n",
        "policy.yaml:3:11: allow[0].host: '10.1.2.3' is not a valid host: "
        "ends in a number, so it reads as an IP address, not a host name",
        "addresses go in 'cidr:', e.g. cidr: 10.1.2.3",
    ),
    "host is a YAML boolean": (
        "version: 1\nallow:\n  - host: no\n",
        "policy.yaml:3:11: allow[0].host: expected text, got false",
        "YAML reads yes/no/on/off as true/false: put the value in quotes",
    ),
    "lower case method": (
        "version: 1\nallow:\n  - host: a.test\n    methods: [GET, post]\n",
        "policy.yaml:4:20: allow[0].methods[1]: 'post' is not an HTTP method",
        "methods are upper case: 'POST'",
    ),
    "path without slash": (
        "version: 1\nallow:\n  - host: a.test\n    paths: [v1/]\n",
        "policy.yaml:4:13: allow[0].paths[0]: 'v1/' does not start with '/'",
        "paths are prefixes of the URL path without query, e.g. '/v1/'",
    ),
    "inspect not a bool": (
        "version: 1\nallow:\n  - host: a.test\n    inspect: 'yes'\n",
        "policy.yaml:4:14: allow[0].inspect: expected true or false, got 'yes'",
        "write true or false",
    ),
    "both host and cidr": (
        "version: 1\nallow:\n  - host: a.test\n    cidr: 10.0.0.0/8\n",
        "policy.yaml:3:5: allow[0]: a rule has both 'host' and 'cidr'",
        "give each rule exactly one of 'host: NAME' or 'cidr: RANGE'",
    ),
    "neither host nor cidr": (
        "version: 1\nallow:\n  - ports: [443]\n",
        "policy.yaml:3:5: allow[0]: a rule needs 'host' or 'cidr'",
        "give each rule exactly one of 'host: NAME' or 'cidr: RANGE'",
    ),
    "rule is not a mapping": (
        "version: 1\nallow: [a.test]\n",
        "policy.yaml:2:9: allow[0]: expected a mapping, got 'a.test'",
        "write 'key: value' lines under it",
    ),
    "bad mode": (
        "version: 1\nmode: learn\n",
        "policy.yaml:2:7: mode: 'learn' is not one of 'enforce' or 'audit'",
        None,
    ),
    "bad size unit": (
        "version: 1\nlimits:\n  max_bytes_out: 5XB\n",
        "policy.yaml:3:18: limits.max_bytes_out: unknown unit 'XB' in '5XB'",
        "units: B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)",
    ),
    "zero connections": (
        "version: 1\nlimits:\n  max_connections: 0\n",
        "policy.yaml:3:20: limits.max_connections: 0 is not a positive number",
        "use a whole number above 0",
    ),
    "wrong version hides the rest": (
        "version: 2\nallow: 5\n",
        "policy.yaml:1:10: version: unsupported policy version 2",
        "this corridor reads 'version: 1'",
    ),
    "version quoted": (
        "version: '1'\n",
        "policy.yaml:1:10: version: expected a whole number, got '1'",
        "write the number without quotes",
    ),
    "no version": (
        "allow: []\n",
        "policy.yaml:1:1: missing field 'version'",
        "start the file with 'version: 1'",
    ),
    "top level is a list": (
        "- version: 1\n",
        "policy.yaml:1:1: the top level must be a mapping of fields, not a list",
        "a policy starts with 'version: 1' and has allow/deny lists",
    ),
    "top level is text": (
        "just words\n",
        "policy.yaml:1:1: the top level must be a mapping of fields, not 'just words'",
        "a policy starts with 'version: 1' and has allow/deny lists",
    ),
    "empty file": ("", "policy.yaml:1:1: the policy file is empty", "start it with 'version: 1'"),
    "comments only": (
        "# nothing\n",
        "policy.yaml:1:1: the policy file is empty",
        "start it with 'version: 1'",
    ),
    "not YAML": (
        "version: 1\nallow: [\n",
        "policy.yaml:3:1: not valid YAML: while parsing a flow node, "
        "expected the node content, but found '<stream end>'",
        HINT_YAML,
    ),
    "tab indentation": (
        "version: 1\nallow:\n\t- host: a.test\n",
        "policy.yaml:3:1: not valid YAML: while scanning for the next token, "
        "found character '\\t' that cannot start any token",
        "YAML indents with spaces, not tabs",
    ),
    "two documents": (
        "version: 1\n---\nversion: 1\n",
        "policy.yaml:2:1: not valid YAML: expected a single document in the stream, "
        "but found another document",
        HINT_YAML,
    ),
    "python tag on a scalar": (
        "version: 1\nmode: !!python/name:os.system x\n",
        "policy.yaml:2:7: not valid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/name:os.system'",
        "tags such as '!!python/...' are not read; write plain values",
    ),
    "python tag on a list": (
        "version: 1\nmode: !!python/object/apply:os.system [true]\n",
        "policy.yaml:2:7: mode: the tag 'tag:yaml.org,2002:python/object/apply:os.system' is "
        "not supported",
        "tags such as '!!python/...' are not read; write plain values",
    ),
    "set tag": (
        "version: 1\nallow:\n  - host: a.test\n    ports: !!set {443}\n",
        "policy.yaml:4:12: allow[0].ports: the tag 'tag:yaml.org,2002:set' is not supported",
        "tags such as '!!python/...' are not read; write plain values",
    ),
    "merge key": (
        "version: 1\nbase: &b {host: a.test}\nallow:\n  - <<: *b\n",
        "policy.yaml:4:5: allow[0]: YAML merge keys ('<<') are not supported",
        "write the keys out",
    ),
    "recursive alias": (
        "version: 1\nallow: &a [*a]\n",
        "policy.yaml:2:8: allow[0]: an alias refers to itself",
        "remove the recursive alias",
    ),
    "numeric key": (
        "version: 1\n443: yes\n",
        "policy.yaml:2:1: key 443 is not a name",
        "keys are field names such as 'host' or 'ports'",
    ),
    "not UTF-8": (
        b"version: 1\nallow:\n  - host: caf\xe9.test\n",
        "policy.yaml: not UTF-8 text (byte 31)",
        "save it as UTF-8",
    ),
}


@pytest.mark.parametrize(("text", "message", "hint"), FILE_ERRORS.values(), ids=FILE_ERRORS.keys())
def test_file_errors(here: Path, text: str | bytes, message: str, hint: str | None) -> None:
    error = _load_error({"policy.yaml": text})
    assert (error.message, error.hint) == (message, hint)
    assert isinstance(error, UserError)


def test_every_problem_is_listed(here: Path) -> None:
    error = _load_error(
        {
            "policy.yaml": "version: 1\nallow:\n  - hots: a.test\n  - host: b.test\n"
            "    ports: [0]\nmode: learn\n"
        }
    )
    assert error.message == "policy.yaml:3:5: allow[0].hots: unknown field (and 2 more)"
    assert error.problems == (
        "policy.yaml:3:5: allow[0].hots: unknown field",
        "policy.yaml:5:13: allow[1].ports[0]: 0 is not a port (1-65535)",
        "policy.yaml:6:7: mode: 'learn' is not one of 'enforce' or 'audit'",
    )


def test_alias_bomb_is_stopped(here: Path) -> None:
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    error = _load_error({"policy.yaml": "\n".join(lines) + "\n"})
    assert "more than 100000 values" in error.message


def test_unreadable_files(here: Path) -> None:
    error = _load_error({}, "missing.yaml")
    assert (error.message, error.hint) == (
        "missing.yaml: cannot read the policy file: No such file or directory",
        "check the path and that you may read it",
    )
    Path("adir").mkdir()
    error = _load_error({}, "adir")
    assert error.message == "adir: cannot read the policy file: Is a directory"
    error = _load_error({"big.yaml": "#" * (1024 * 1024 + 1)}, "big.yaml")
    assert error.message == "big.yaml: larger than 1048576 bytes"


# ------------------------------------------------------------------------ extends

EXTENDS_ERRORS: dict[str, tuple[dict[str, str], str, str]] = {
    "unknown template": (
        {"policy.yaml": "version: 1\nextends: [pyhton-deps]\n"},
        "policy.yaml:2:11: extends[0]: unknown template 'pyhton-deps'",
        "did you mean the template 'python-deps'? (`corridor policy list` shows all)",
    ),
    "missing file": (
        {
            "policy.yaml": "version: 1\nextends:\n  - base.yaml\n  - nope.yml\n",
            "base.yaml": "version: 1\n",
        },
        "policy.yaml:4:5: extends[1]: no such file: nope.yml",
        "extends paths are relative to the file naming them",
    ),
    "missing file in a subdirectory": (
        {"policy.yaml": "version: 1\nextends: [conf/base]\n"},
        "policy.yaml:2:11: extends[0]: no such file: conf/base",
        "extends paths are relative to the file naming them",
    ),
    "cycle of two": (
        {
            "policy.yaml": "version: 1\nextends: [base.yaml]\n",
            "base.yaml": "version: 1\nextends: [policy.yaml]\n",
        },
        "base.yaml:2:11: extends[0]: extends cycle: policy.yaml -> base.yaml -> policy.yaml",
        "remove one of the extends entries that form the cycle",
    ),
    "cycle through a subdirectory": (
        {
            "policy.yaml": "version: 1\nextends: [sub/a.yaml]\n",
            "sub/a.yaml": "version: 1\nextends: [b.yaml]\n",
            "sub/b.yaml": "version: 1\nextends: [a.yaml]\n",
        },
        "sub/b.yaml:2:11: extends[0]: extends cycle: sub/a.yaml -> sub/b.yaml -> sub/a.yaml",
        "remove one of the extends entries that form the cycle",
    ),
    "extends itself": (
        {"policy.yaml": "version: 1\nextends: [./policy.yaml]\n"},
        "policy.yaml:2:11: extends[0]: extends cycle: policy.yaml -> policy.yaml",
        "remove one of the extends entries that form the cycle",
    ),
    "error inside an extended file": (
        {
            "policy.yaml": "version: 1\nextends: [sub/base.yaml]\n",
            "sub/base.yaml": "version: 1\nallow:\n  - host: a.test\n    ports: [99999]\n",
        },
        "sub/base.yaml:4:13: allow[0].ports[0]: 99999 is not a port (1-65535)",
        "a port is a whole number from 1 to 65535, e.g. 443",
    ),
    "extends is not a list": (
        {"policy.yaml": "version: 1\nextends: base.yaml\n"},
        "policy.yaml:2:10: extends: expected a list, got 'base.yaml'",
        "write [a, b] or one '- item' per line",
    ),
}


@pytest.mark.parametrize(
    ("files", "message", "hint"), EXTENDS_ERRORS.values(), ids=EXTENDS_ERRORS.keys()
)
def test_extends_errors(here: Path, files: dict[str, str], message: str, hint: str) -> None:
    error = _load_error(files)
    assert (error.message, error.hint) == (message, hint)


def test_a_template_name_that_is_a_file_is_read(here: Path) -> None:
    _write({"policy.yaml": "version: 1\nextends: [base]\n", "base": "version: 1\nmode: audit\n"})
    assert load_policy(Path("policy.yaml")).mode == "audit"


BRIEF_EXAMPLE = """\
version: 1
extends: [base.yaml]
mode: enforce
allow:
  - host: "**.example.com"
    ports: [443]
  - host: api.example.com
    methods: [GET, HEAD]
    paths: ["/v1/"]
    inspect: true
    comment: read-only API
  - cidr: 10.20.0.0/16
    ports: [5432]
deny:
  - host: "uploads.example.com"
  - cidr: 169.254.0.0/16
limits:
  max_connections: 200
  max_bytes_out: 50MB
"""
BASE = """\
version: 1
mode: audit
allow:
  - host: base.test
deny:
  - host: bad.base.test
limits:
  max_connections: 5
  max_bytes_out: 1.5GiB
"""


def test_brief_example_with_extends(here: Path) -> None:
    _write({"conf/policy.yaml": BRIEF_EXAMPLE, "conf/base.yaml": BASE})
    policy = load_policy(Path("conf/policy.yaml"))
    assert policy.extends == ["base.yaml"]
    assert policy.mode == "enforce"  # the later file wins
    assert policy.limits == Limits(max_connections=200, max_bytes_out=50_000_000)
    assert [(r.host or str(r.cidr), r.origin) for r in policy.allow] == [
        ("base.test", "conf/base.yaml:4 allow[0]"),
        ("**.example.com", "conf/policy.yaml:5 allow[0]"),
        ("api.example.com", "conf/policy.yaml:7 allow[1]"),
        ("10.20.0.0/16", "conf/policy.yaml:12 allow[2]"),
    ]
    assert [r.origin for r in policy.deny] == [
        "conf/base.yaml:6 deny[0]",
        "conf/policy.yaml:15 deny[0]",
        "conf/policy.yaml:16 deny[1]",
    ]
    api = policy.allow[2]
    assert (api.methods, api.paths, api.inspect, api.ports, api.comment) == (
        ["GET", "HEAD"],
        ["/v1/"],
        True,
        None,
        "read-only API",
    )


def test_unset_values_do_not_override(here: Path) -> None:
    _write(
        {
            "policy.yaml": "version: 1\nextends: [base.yaml]\nlimits:\n  max_bytes_out: 10kB\n",
            "base.yaml": BASE,
        }
    )
    policy = load_policy(Path("policy.yaml"))
    assert policy.mode == "audit"  # not set in policy.yaml: the base's stays
    assert policy.limits == Limits(max_connections=5, max_bytes_out=10_000)


def test_extending_the_same_file_twice_is_not_a_cycle(here: Path) -> None:
    _write(
        {
            "policy.yaml": "version: 1\nextends: [a.yaml, b.yaml]\n",
            "a.yaml": "version: 1\nextends: [common.yaml]\n",
            "b.yaml": "version: 1\nextends: [common.yaml]\n",
            "common.yaml": "version: 1\nallow: [{host: common.test}]\n",
        }
    )
    assert [r.origin for r in load_policy(Path("policy.yaml")).allow] == [
        "common.yaml:2 allow[0]",
        "common.yaml:2 allow[0]",
    ]


layers = st.lists(
    st.tuples(
        st.sampled_from([None, "enforce", "audit"]),
        st.one_of(st.none(), st.integers(1, 1000)),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=40, deadline=None)
@given(layers, st.booleans())
def test_extends_merge_order(spec: list[tuple[str | None, int | None, int]], chain: bool) -> None:
    """Rules concatenate in order; mode and limits come from the last file that sets them.

    Either the last file extends all the others in order, or each file extends the one
    before it (a chain): both give the same order.
    """
    with tempfile.TemporaryDirectory() as tmp:
        names = [f"{tmp}/f{i}.yaml" for i in range(len(spec))]
        for i, (mode, conns, rules) in enumerate(spec):
            lines = ["version: 1"]
            if chain and i > 0:
                lines.append(f"extends: [f{i - 1}.yaml]")
            if not chain and i == len(spec) - 1 and i > 0:
                lines.append(f"extends: [{', '.join(f'f{j}.yaml' for j in range(i))}]")
            if mode:
                lines.append(f"mode: {mode}")
            if conns:
                lines.append(f"limits: {{max_connections: {conns}}}")
            lines.append("allow:" if rules else "allow: []")
            lines += [f"  - host: r{k}.f{i}.test" for k in range(rules)]
            Path(names[i]).write_text("\n".join(lines) + "\n")
        policy = load_policy(Path(names[-1]))
    expected_hosts = [f"r{k}.f{i}.test" for i, (_, _, n) in enumerate(spec) for k in range(n)]
    assert [r.host for r in policy.allow] == expected_hosts
    modes = [m for m, _, _ in spec if m]
    assert policy.mode == (modes[-1] if modes else "enforce")
    conns = [c for _, c, _ in spec if c]
    assert policy.limits.max_connections == (conns[-1] if conns else None)


# ---------------------------------------------------------------------- --allow

FLAGS: dict[str, tuple[str, str | None, str | None, list[int] | None]] = {
    "host": ("api.example.com", "api.example.com", None, None),
    "host upper case": ("API.Example.com.", "api.example.com", None, None),
    "subdomain wildcard": ("*.githubusercontent.com", "*.githubusercontent.com", None, None),
    "apex wildcard": ("**.example.com", "**.example.com", None, None),
    "host and port": ("api.example.com:8443", "api.example.com", None, [8443]),
    "idn host": ("bücher.test:443", "xn--bcher-kva.test", None, [443]),
    "ipv4 address": ("192.0.2.7", None, "192.0.2.7/32", None),
    "ipv4 address and port": ("192.0.2.7:22", None, "192.0.2.7/32", [22]),
    "ipv6 bracketed with port": ("[2001:db8::1]:443", None, "2001:db8::1/128", [443]),
    "ipv6 bracketed": ("[2001:db8::1]", None, "2001:db8::1/128", None),
    "ipv6 bare": ("2001:db8::1", None, "2001:db8::1/128", None),
    "cidr": ("10.0.0.0/8", None, "10.0.0.0/8", None),
    "cidr and port": ("10.0.0.0/8:5432", None, "10.0.0.0/8", [5432]),
    "ipv6 cidr and port": ("2001:db8::/32:443", None, "2001:db8::/32", [443]),
    "bracketed ipv6 cidr and port": ("[2001:db8::]/32:443", None, "2001:db8::/32", [443]),
}


@pytest.mark.parametrize(("value", "host", "cidr", "ports"), FLAGS.values(), ids=FLAGS.keys())
def test_allow_flag(
    value: str, host: str | None, cidr: str | None, ports: list[int] | None
) -> None:
    rule = rule_from_allow_flag(value)
    assert rule.host == host
    assert rule.cidr == (ipaddress.ip_network(cidr) if cidr else None)
    assert rule.ports == ports
    assert rule.origin == f"--allow {value}"


FLAG_HINT = (
    "use HOST, HOST:PORT, *.DOMAIN, **.DOMAIN, ADDRESS, [IPv6]:PORT, "
    "ADDRESS/LEN or ADDRESS/LEN:PORT"
)
PORT_HINT = "a port is a whole number from 1 to 65535, e.g. api.example.com:443"
BAD_FLAGS: dict[str, tuple[str, str, str]] = {
    "space": (
        "exa mple.com",
        "--allow 'exa mple.com': ' ' is not allowed in a host name",
        FLAG_HINT,
    ),
    "empty": ("", "--allow '': empty value", FLAG_HINT),
    "quote in the value": (
        "it's.test",
        "--allow 'it'\"'\"'s.test': \"'\" is not allowed in a host name",
        FLAG_HINT,
    ),
    "port too big": (
        "api.example.com:70000",
        "--allow 'api.example.com:70000': 70000 is not a port (1-65535)",
        PORT_HINT,
    ),
    "port zero": (
        "api.example.com:0",
        "--allow 'api.example.com:0': 0 is not a port (1-65535)",
        PORT_HINT,
    ),
    "port not a number": (
        "api.example.com:https",
        "--allow 'api.example.com:https': 'https' is not a port",
        PORT_HINT,
    ),
    "empty port": (
        "api.example.com:",
        "--allow 'api.example.com:': '' is not a port",
        PORT_HINT,
    ),
    "url": (
        "https://api.example.com/v1",
        "--allow 'https://api.example.com/v1': a URL is not a host",
        "give the host name only, e.g. api.example.com",
    ),
    "broad star": (
        "*",
        "--allow '*': '*' matches every host, which is broad",
        "narrow it; a broad rule can only be written in a policy file, with 'broad: true'",
    ),
    "broad tld": (
        "*.com:443",
        "--allow '*.com:443': *.com matches every name under the top-level domain 'com', "
        "which is broad",
        "narrow it; a broad rule can only be written in a policy file, with 'broad: true'",
    ),
    "broad cidr": (
        "0.0.0.0/0",
        "--allow '0.0.0.0/0': 0.0.0.0/0 is wider than a /8, which is broad",
        "narrow it; a broad rule can only be written in a policy file, with 'broad: true'",
    ),
    "cidr host bits": (
        "10.0.0.1/8",
        "--allow '10.0.0.1/8': '10.0.0.1/8' has bits set after the prefix",
        "did you mean 10.0.0.0/8?",
    ),
    "cidr garbage": (
        "10.0.0.0/99",
        "--allow '10.0.0.0/99': '10.0.0.0/99' is not an address range",
        FLAG_HINT,
    ),
    "unclosed bracket": ("[2001:db8::1", "--allow '[2001:db8::1': '[' without ']'", FLAG_HINT),
    "ipv4 in brackets": (
        "[10.0.0.1]:443",
        "--allow '[10.0.0.1]:443': '10.0.0.1' is not an IPv6 address",
        "brackets hold IPv6 addresses",
    ),
    "junk after bracket": ("[::1]x", "--allow '[::1]x': unexpected 'x' after ']'", FLAG_HINT),
    "wildcard in the middle": (
        "a.*.example.com",
        "--allow 'a.*.example.com': a wildcard may only be the whole first label ('*.' or '**.')",
        FLAG_HINT,
    ),
    "short ipv4": (
        "127.1",
        "--allow '127.1': ends in a number, so it reads as an IP address, not a host name",
        FLAG_HINT,
    ),
}


@pytest.mark.parametrize(("value", "message", "hint"), BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_bad_allow_flag(value: str, message: str, hint: str) -> None:
    with pytest.raises(PolicyError) as e:
        rule_from_allow_flag(value)
    assert (e.value.message, e.value.hint) == (message, hint)


def test_policy_from_flags_without_base() -> None:
    assert policy_from_flags([], None) == Policy()
    assert policy_from_flags([], None).allow == []
    policy = policy_from_flags(["a.test", "b.test:8443"], None)
    assert policy.mode == "enforce"
    assert [(r.host, r.ports, r.origin) for r in policy.allow] == [
        ("a.test", None, "--allow a.test"),
        ("b.test", [8443], "--allow b.test:8443"),
    ]


def test_policy_from_flags_keeps_the_base(here: Path) -> None:
    _write(
        {
            "policy.yaml": "version: 1\nmode: audit\nallow: [{host: file.test}]\n"
            "deny: [{host: no.test}]\nlimits: {max_connections: 3}\n"
        }
    )
    base = load_policy(Path("policy.yaml"))
    policy = policy_from_flags(["flag.test"], base)
    assert [r.origin for r in policy.allow] == ["policy.yaml:3 allow[0]", "--allow flag.test"]
    assert (policy.mode, policy.deny, policy.limits) == (base.mode, base.deny, base.limits)
    assert "mode" in policy.model_fields_set
    assert base.allow == [base.allow[0]]  # the base is not changed


def test_bad_flag_among_good_ones_names_itself() -> None:
    with pytest.raises(PolicyError) as e:
        policy_from_flags(["a.test", "b.test:x"], None)
    assert e.value.message == "--allow 'b.test:x': 'x' is not a port"


# ---------------------------------------------------------------- dict and hash


def test_policy_to_dict_is_json_with_origins(here: Path) -> None:
    _write({"policy.yaml": BRIEF_EXAMPLE, "base.yaml": BASE})
    data = policy_to_dict(load_policy(Path("policy.yaml")))
    assert json.loads(json.dumps(data)) == data
    assert data["mode"] == "enforce"
    assert data["limits"] == {"max_connections": 200, "max_bytes_out": 50_000_000}
    assert data["deny"][2] == {
        "cidr": "169.254.0.0/16",
        "inspect": False,
        "broad": False,
        "origin": "policy.yaml:16 deny[1]",
    }


def test_policy_hash_follows_meaning_not_layout(here: Path) -> None:
    _write(
        {
            "a.yaml": "version: 1\nallow:\n  - host: a.test\n    comment: one\n",
            "b.yaml": "# moved down\nversion: 1\n\nallow:\n  - {host: A.TEST., comment: two}\n",
            "c.yaml": "version: 1\nallow:\n  - host: a.test\n    ports: [443]\n",
        }
    )
    a, b, c = (load_policy(Path(f"{n}.yaml")) for n in "abc")
    assert a.allow[0].origin != b.allow[0].origin
    assert policy_hash(a) == policy_hash(b)
    assert policy_hash(a) != policy_hash(c)
    assert policy_hash(a) != policy_hash(a.model_copy(update={"mode": "audit"}))
    assert len(policy_hash(a)) == 64
    assert policy_hash(Policy()) == policy_hash(Policy(allow=[], deny=[]))


def test_rule_origin_is_not_from_input() -> None:
    # Code may set it (flags do); files may not (tested above as an unknown field).
    assert Rule(host="a.test", origin="--allow a.test").origin == "--allow a.test"
