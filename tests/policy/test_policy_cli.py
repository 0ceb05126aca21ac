"""`corridor policy` list/show/check/test/schema, `run --policy NAME` and `--mode`, and the
examples in docs/policy.md (each must load, and validate against the published schema).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corridor.cli_policy import parse_test_target, render_policy
from corridor.errors import UserError
from corridor.policy import (
    TEMPLATES,
    Limits,
    Policy,
    Rule,
    Target,
    load_policy,
    policy_json_schema,
    resolve_template,
)
from corridor.policy.discover import clear_cache

CORRIDOR = [sys.executable, "-m", "corridor"]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "policy.md"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    d = tmp_path / "home"
    (d / "bin").mkdir(parents=True)
    return d


def corridor(*args: str, cwd: Path, home: Path, env: dict[str, str] | None = None):
    """Run corridor with a HOME and PATH of its own: no package manager unless put there."""
    base = {"HOME": str(home), "PATH": str(home / "bin"), "LANG": "C.UTF-8"}
    return subprocess.run(
        [*CORRIDOR, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
        timeout=60,
    )


# ------------------------------------------------------------------------------ list


def test_list_shows_every_template_on_one_line(tmp_path: Path, home: Path) -> None:
    r = corridor("policy", "list", cwd=tmp_path, home=home)
    assert r.returncode == 0, r.stderr
    width = max(map(len, TEMPLATES))
    assert r.stdout.splitlines() == [f"{n:<{width}}  {t.summary}" for n, t in TEMPLATES.items()]


# ------------------------------------------------------------------------------ show


def test_show_a_template_prints_checkable_yaml_with_origins(tmp_path: Path, home: Path) -> None:
    r = corridor("policy", "show", "codex", cwd=tmp_path, home=home)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "# corridor policy show codex"
    assert lines[1] == f"# codex: {TEMPLATES['codex'].summary}"
    at = lines.index("  - host: api.openai.com")
    assert lines[at - 1 : at + 2] == [
        "  # template codex allow[0]",
        "  - host: api.openai.com",
        "    ports: [443]",
    ]
    shown = tmp_path / "shown.yaml"
    shown.write_text(r.stdout)
    check = corridor("policy", "check", str(shown), cwd=tmp_path, home=home)
    assert check.returncode == 0, check.stderr
    strip = [r.model_copy(update={"origin": ""}) for r in resolve_template("codex").policy.allow]
    assert [r.model_copy(update={"origin": ""}) for r in load_policy(shown).allow] == strip


def test_show_a_file_merges_its_templates(tmp_path: Path, home: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "version: 1\nextends: [claude-code]\nmode: audit\nallow:\n  - host: own.test\n"
        "    ports: [8443]\ndeny:\n  - cidr: 10.0.0.0/8\nlimits:\n  max_bytes_out: 1kB\n"
    )
    r = corridor("policy", "show", "p.yaml", cwd=tmp_path, home=home)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "# corridor policy show p.yaml\n"
        "# extends (merged below): claude-code\n"
        "version: 1\n"
        "mode: audit\n"
        "allow:\n"
        "  # template claude-code allow[0]\n"
        "  - host: api.anthropic.com\n"
        "    ports: [443]\n"
        "  # template claude-code allow[1]\n"
        "  - host: console.anthropic.com\n"
        "    ports: [443]\n"
        "  # p.yaml:5 allow[0]\n"
        "  - host: own.test\n"
        "    ports: [8443]\n"
        "deny:\n"
        "  # p.yaml:8 deny[0]\n"
        "  - cidr: 10.0.0.0/8\n"
        "limits:\n"
        "  max_bytes_out: 1000\n"
    )


def test_show_python_deps_names_the_pip_setting_and_the_notes(tmp_path: Path, home: Path) -> None:
    (home / "bin" / "python3").symlink_to(sys.executable)
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://pypi-mirror.test/simple/\n")
    r = corridor(
        "policy", "show", "python-deps", cwd=tmp_path, home=home, env={"PIP_CONFIG_FILE": str(conf)}
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    at = lines.index("  - host: pypi-mirror.test")
    assert lines[at - 1] == f"  # python-deps: pip config global.index-url ({conf})"
    assert "# discovery:" in lines
    assert "#   python-deps: uv: not installed: nothing discovered from it" in lines


def test_show_unknown_name(tmp_path: Path, home: Path) -> None:
    r = corridor("policy", "show", "githubreadonly", cwd=tmp_path, home=home)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "corridor: error: githubreadonly: no such template or file",
        "  hint: did you mean the template 'github-readonly'? (`corridor policy list` shows all)",
    ]


def test_render_keeps_an_odd_origin_inside_its_comment() -> None:
    rule = Rule(host="a.test", origin="dir\nwith: newline/p.yaml:3 allow[0]")
    text = render_policy(Policy(allow=[rule]), "p.yaml", [])
    assert "  # dir\\nwith: newline/p.yaml:3 allow[0]\n  - host: a.test\n" in text


# ----------------------------------------------------------------------------- check


def test_check_ok(tmp_path: Path, home: Path) -> None:
    (tmp_path / "p.yaml").write_text("version: 1\nallow:\n  - host: a.test\n")
    r = corridor("policy", "check", "p.yaml", cwd=tmp_path, home=home)
    assert (r.returncode, r.stdout, r.stderr) == (
        0,
        "p.yaml: ok (1 allow rule, 0 deny rules, mode enforce)\n",
        "",
    )


def test_check_lists_every_problem(tmp_path: Path, home: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "version: 1\nallow:\n  - host: ok.test\n    ports: [70000]\n  - hots: x.test\n"
        "deny:\n  - host: y.test\n    methods: [get]\n"
    )
    r = corridor("policy", "check", "p.yaml", cwd=tmp_path, home=home)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "corridor: error: p.yaml:4:13: allow[0].ports[0]: 70000 is not a port (1-65535)",
        "corridor: error: p.yaml:5:5: allow[1].hots: unknown field",
        "corridor: error: p.yaml:8:15: deny[0].methods[0]: 'get' is not an HTTP method",
        "  hint: a port is a whole number from 1 to 65535, e.g. 443",
    ]
    assert r.stdout == ""


def test_check_a_missing_file(tmp_path: Path, home: Path) -> None:
    r = corridor("policy", "check", "nope/p.yaml", cwd=tmp_path, home=home)
    assert r.returncode == 2
    assert r.stderr.startswith(
        "corridor: error: nope/p.yaml: cannot read the policy file: No such file or directory"
    )


# ------------------------------------------------------------------------------ test

TEST_POLICY = """\
version: 1
allow:
  - host: api.example.test
    methods: [GET]
    paths: ["/v1/"]
  - cidr: 10.20.0.0/16
    ports: [5432]
  - cidr: "2001:db8::/32"
    ports: [443]
deny:
  - host: uploads.example.test
"""

TESTS: dict[str, tuple[list[str], int, str]] = {
    "url allowed": (
        ["https://api.example.test/v1/items?x=1"],
        0,
        "decision: allow\nreason:   allowed by rule\nrule:     p.yaml:3 allow[0]\n"
        "target:   api.example.test port 443 /v1/items?x=1\n",
    ),
    "method refused": (
        ["https://api.example.test/v1/items", "--method", "post"],
        1,
        "decision: deny\nreason:   no rule allows this method\n"
        "rule:     (none: nothing allows it)\ntarget:   api.example.test port 443 POST /v1/items\n",
    ),
    "path refused": (
        ["http://api.example.test/admin"],
        1,
        "decision: deny\nreason:   no rule allows this path\n"
        "rule:     (none: nothing allows it)\ntarget:   api.example.test port 80 /admin\n",
    ),
    "bare host means 443": (
        ["API.example.test."],
        0,
        "decision: allow\nreason:   allowed by rule\nrule:     p.yaml:3 allow[0]\n"
        "target:   API.example.test. port 443\n",
    ),
    "deny wins": (
        ["uploads.example.test:443"],
        1,
        "decision: deny\nreason:   denied by rule\nrule:     p.yaml:11 deny[0]\n"
        "target:   uploads.example.test port 443\n",
    ),
    "address in a range": (
        ["10.20.3.4:5432"],
        0,
        "decision: allow\nreason:   allowed by rule\nrule:     p.yaml:6 allow[1]\n"
        "target:   10.20.3.4 port 5432\n",
    ),
    "bracketed ipv6 with port": (
        ["[2001:db8::7]:443"],
        0,
        "decision: allow\nreason:   allowed by rule\nrule:     p.yaml:8 allow[2]\n"
        "target:   2001:db8::7 port 443\n",
    ),
    "unknown host": (
        ["other.test:8080"],
        1,
        "decision: deny\nreason:   no rule allows this host\n"
        "rule:     (none: nothing allows it)\ntarget:   other.test port 8080\n",
    ),
}


@pytest.mark.parametrize(("args", "code", "out"), TESTS.values(), ids=TESTS)
def test_policy_test(tmp_path: Path, home: Path, args: list[str], code: int, out: str) -> None:
    (tmp_path / "p.yaml").write_text(TEST_POLICY)
    r = corridor("policy", "test", "p.yaml", *args, cwd=tmp_path, home=home)
    assert (r.returncode, r.stdout, r.stderr) == (code, out, "")


def test_policy_test_in_audit_mode_passes_would_deny(tmp_path: Path, home: Path) -> None:
    (tmp_path / "p.yaml").write_text("version: 1\nextends: [offline]\nmode: audit\n")
    r = corridor("policy", "test", "p.yaml", "x.test", cwd=tmp_path, home=home)
    assert r.returncode == 0
    assert r.stdout.splitlines()[:2] == [
        "decision: would-deny",
        "reason:   no rule allows this host",
    ]


def test_policy_test_a_template(tmp_path: Path, home: Path) -> None:
    r = corridor(
        "policy", "test", "github-readonly", "https://github.com/o/r", cwd=tmp_path, home=home
    )
    assert r.returncode == 0
    assert "rule:     template github-readonly allow[0]" in r.stdout


TARGET_ERRORS = {
    "port out of range": ("a.test:70000", None, "a.test:70000: '70000' is not a port (1-65535)"),
    "port not a number": ("a.test:https", None, "a.test:https: 'https' is not a port (1-65535)"),
    "other scheme": (
        "ftp://a.test/",
        None,
        "ftp://a.test/: only http:// and https:// URLs can be tested",
    ),
    "url bad port": (
        "https://a.test:0x1/",
        None,
        "https://a.test:0x1/: the port is not a number from 1 to 65535",
    ),
    "url without host": ("https:///x", None, "https:///x: no host in the URL"),
    "junk after bracket": ("[::1]x", None, "[::1]x: unexpected 'x' after ']'"),
    "bad method": ("a.test", "G T", "--method 'G T': not an HTTP method"),
}


@pytest.mark.parametrize(("text", "method", "message"), TARGET_ERRORS.values(), ids=TARGET_ERRORS)
def test_bad_test_targets(text: str, method: str | None, message: str) -> None:
    with pytest.raises(UserError) as e:
        parse_test_target(text, method)
    assert e.value.message == message


def test_test_targets() -> None:
    assert parse_test_target("http://[2001:db8::1]:8080/p", "get") == Target(
        "2001:db8::1", 8080, method="GET", path="/p"
    )
    assert parse_test_target("2001:db8::1") == Target("2001:db8::1", 443)
    assert parse_test_target("https://a.test") == Target("a.test", 443, path="/")


def test_policy_test_exit_code_for_a_bad_target(tmp_path: Path, home: Path) -> None:
    r = corridor("policy", "test", "offline", "a.test:0", cwd=tmp_path, home=home)
    assert r.returncode == 2
    assert r.stderr == "corridor: error: a.test:0: '0' is not a port (1-65535)\n"


# -------------------------------------------------------------------------- run flags


def test_run_help_names_templates_and_mode(tmp_path: Path, home: Path) -> None:
    r = corridor("run", "--help", cwd=tmp_path, home=home)
    assert "--policy NAME|FILE" in r.stdout
    assert "--mode [enforce|audit]" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "pyhton-deps"], "corridor: error: pyhton-deps: no such template or file"),
        (["--mode", "loud"], "corridor: error: Invalid value for '--mode'"),
    ],
)
def test_run_refuses_bad_policy_and_mode(
    tmp_path: Path, home: Path, args: list[str], message: str
) -> None:
    r = corridor("run", *args, "--", "true", cwd=tmp_path, home=home)
    assert r.returncode == 2
    assert r.stderr.startswith(message)


# ---------------------------------------------------------------------------- schema


def test_schema_is_json_and_follows_the_model(tmp_path: Path, home: Path) -> None:
    r = corridor("policy", "schema", cwd=tmp_path, home=home)
    schema = json.loads(r.stdout)
    assert schema == policy_json_schema()
    assert set(schema["properties"]) == set(Policy.model_fields)
    assert set(schema["$defs"]["rule"]["properties"]) == set(Rule.model_fields) - {"origin"}
    assert set(schema["properties"]["limits"]["properties"]) == set(Limits.model_fields)
    assert schema["properties"]["extends"]["items"]["examples"] == list(TEMPLATES)


def _validate(schema: dict[str, Any], value: Any, root: dict[str, Any], at: str = "") -> list[str]:
    """A small JSON Schema checker for the keywords the policy schema uses."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].removeprefix("#/$defs/")]
    errors: list[str] = []
    kinds = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "boolean": bool,
    }
    kind = schema.get("type")
    if kind is not None:
        ok = isinstance(value, kinds[kind]) and not (kind == "integer" and isinstance(value, bool))
        if not ok:
            return [f"{at}: not {kind}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{at}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: not one of {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{at}: below {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{at}: above {schema['maximum']}")
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{at}: too short")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{at}: does not match {schema['pattern']}")
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{at}: fewer than {schema['minItems']} items")
    for name in schema.get("required", ()):
        if name not in value:
            errors.append(f"{at}: {name} missing")
    for name, item in value.items() if isinstance(value, dict) else ():
        if name in schema.get("properties", {}):
            errors += _validate(schema["properties"][name], item, root, f"{at}.{name}")
        elif schema.get("additionalProperties") is False:
            errors.append(f"{at}: unknown {name}")
    for i, item in enumerate(value) if isinstance(value, list) and "items" in schema else ():
        errors += _validate(schema["items"], item, root, f"{at}[{i}]")
    if "oneOf" in schema:
        passing = [s for s in schema["oneOf"] if not _validate(s, value, root, at)]
        if len(passing) != 1:
            errors.append(f"{at}: matches {len(passing)} of oneOf")
    return errors


def _docs_examples() -> list[str]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 4  # the reference example, audit, extends, editor header
    return blocks


@pytest.fixture
def quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No package manager on PATH, no configuration: discovery finds nothing."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    monkeypatch.chdir(tmp_path)
    clear_cache()
    return tmp_path


@pytest.mark.parametrize("index", range(len(_docs_examples())))
def test_docs_examples_load_and_match_the_schema(quiet: Path, index: int) -> None:
    import yaml

    text = _docs_examples()[index]
    (quiet / "example.yaml").write_text(text)
    load_policy(quiet / "example.yaml")  # raises on any problem
    schema = policy_json_schema()
    assert _validate(schema, yaml.safe_load(text), schema) == []
    try:
        import jsonschema  # only where it is already installed
    except ImportError:
        return
    jsonschema.validate(yaml.safe_load(text), schema)


SCHEMA_REJECTS = {
    "unknown key": ({"version": 1, "alow": []}, [": unknown alow"]),
    "wrong version": ({"version": 2}, [".version: not 1"]),
    "port": (
        {"version": 1, "allow": [{"host": "a.test", "ports": [70000]}]},
        [".allow[0].ports[0]: above 65535"],
    ),
    "host and cidr": (
        {"version": 1, "allow": [{"host": "a.test", "cidr": "10.0.0.0/8"}]},
        [".allow[0]: matches 2 of oneOf"],
    ),
    "neither": ({"version": 1, "deny": [{"ports": [22]}]}, [".deny[0]: matches 0 of oneOf"]),
    "lower-case method": (
        {"version": 1, "allow": [{"host": "a.test", "methods": ["get"]}]},
        [".allow[0].methods[0]: does not match ^[A-Z]+([-_][A-Z]+)*$"],
    ),
    "size unit": (
        {"version": 1, "limits": {"max_bytes_out": "5 parsecs"}},
        [".limits.max_bytes_out: matches 0 of oneOf"],
    ),
    "mode": ({"version": 1, "mode": "loud"}, [".mode: not one of ['enforce', 'audit']"]),
    "missing version": ({}, [": version missing"]),
    "quoted port": (
        {"version": 1, "allow": [{"host": "a.test", "ports": ["443"]}]},
        [".allow[0].ports[0]: not integer"],
    ),
}


@pytest.mark.parametrize(("data", "errors"), SCHEMA_REJECTS.values(), ids=SCHEMA_REJECTS)
def test_schema_rejects(data: dict[str, Any], errors: list[str]) -> None:
    schema = policy_json_schema()
    assert _validate(schema, data, schema) == errors


@pytest.mark.parametrize("doc", ["README.md", "docs/policy.md"])
def test_template_tables_in_the_docs_match_the_templates(doc: str) -> None:
    text = (DOCS.parents[1] / doc).read_text()
    listed: dict[str, str] = {}
    for name, summary in re.findall(r"^\| `([a-z-]+)` \| (.+?) \|$", text, re.M):
        if name in TEMPLATES:
            listed.setdefault(name, summary)  # the first table naming it is the list
    assert listed == {name: t.summary for name, t in TEMPLATES.items()}
