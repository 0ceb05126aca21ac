"""Built-in templates: their data, their decisions, `extends` and `--policy NAME`, and the
matcher properties that tests/policy does not already cover (IDN spellings across
decide, DNS agreeing with connections, the order templates and files merge in).
"""

from __future__ import annotations

import encodings.idna
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.policy import (
    TEMPLATES,
    HostContext,
    Policy,
    PolicyError,
    Rule,
    Target,
    decide,
    decide_dns,
    load_policy,
    resolve_policy,
    resolve_template,
    template_names,
)

BRIEF_TEMPLATES = {
    "offline",
    "python-deps",
    "node-deps",
    "docs",
    "github-readonly",
    "vuln-db",
    "dependency-update",
    "codex",
    "claude-code",
    "aider",
}
# `policy list` prints "NAME  SUMMARY" with names padded to the longest (17): one line of
# at most 100 columns.
SUMMARY_MAX = 80


def test_the_brief_templates_exist() -> None:
    assert set(template_names()) >= BRIEF_TEMPLATES
    assert template_names() == list(TEMPLATES)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_each_template_says_what_it_is_for(name: str) -> None:
    template = TEMPLATES[name]
    assert template.name == name
    assert template.summary and "\n" not in template.summary
    assert len(template.summary) <= SUMMARY_MAX
    assert len(template.purpose) > len(template.summary)
    assert template.purpose.endswith(".")


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_each_template_resolves_and_is_narrow(name: str, quiet_machine: Path) -> None:
    policy = resolve_template(name).policy
    assert policy.mode == "enforce" and policy.deny == []
    for rule in policy.allow:
        assert rule.broad_reason() is None, rule  # a built-in template is never broad
        assert rule.ports == [443]  # model providers, GitHub, docs: HTTPS only


def test_registries_are_never_written_in_templates() -> None:
    """The deps templates hold no host: every one of their rules is discovered."""
    for name in ("python-deps", "node-deps", "rust-deps", "go-deps", "dependency-update"):
        assert TEMPLATES[name].allow == ()
    assert {TEMPLATES[n].discover for n in TEMPLATES} == {None, "python", "node", "rust", "go"}


def test_offline_allows_nothing(quiet_machine: Path) -> None:
    policy = resolve_template("offline").policy
    assert policy.allow == [] and policy.deny == []
    assert not decide(policy, Target("localhost.test", 443)).allowed


def test_rule_origins_name_the_template() -> None:
    policy = resolve_template("github-readonly").policy
    assert [r.origin for r in policy.allow[:2]] == [
        "template github-readonly allow[0]",
        "template github-readonly allow[1]",
    ]


def _decision(name: str, host: str, port: int = 443, **kw: str) -> tuple[bool, str, str | None]:
    d = decide(resolve_template(name).policy, Target(host, port, **kw))
    return d.allowed, d.reason, d.rule


DECISIONS = {
    "github api": (
        "github-readonly",
        "API.GitHub.com.",
        {},
        (True, "allowed by rule", "template github-readonly allow[1]"),
    ),
    "github git fetch posts": (
        "github-readonly",
        "github.com",
        {"method": "POST", "path": "/o/r.git/git-upload-pack"},
        (True, "allowed by rule", "template github-readonly allow[0]"),
    ),
    "github api refuses writes under inspection": (
        "github-readonly",
        "api.github.com",
        {"method": "DELETE", "path": "/repos/o/r"},
        (False, "no rule allows this method", None),
    ),
    "gists are not github-readonly": (
        "github-readonly",
        "gist.github.com",
        {},
        (False, "no rule allows this host", None),
    ),
    "osv query": (
        "vuln-db",
        "api.osv.dev",
        {"method": "POST", "path": "/v1/querybatch"},
        (True, "allowed by rule", "template vuln-db allow[0]"),
    ),
    "advisories only on the api": (
        "vuln-db",
        "api.github.com",
        {"method": "GET", "path": "/repos/o/r"},
        (False, "no rule allows this path", None),
    ),
    "codex": ("codex", "api.openai.com", {}, (True, "allowed by rule", "template codex allow[0]")),
    "claude code": (
        "claude-code",
        "api.anthropic.com",
        {},
        (True, "allowed by rule", "template claude-code allow[0]"),
    ),
    "claude code is not openai": (
        "claude-code",
        "api.openai.com",
        {},
        (False, "no rule allows this host", None),
    ),
    "aider gemini": (
        "aider",
        "generativelanguage.googleapis.com",
        {},
        (True, "allowed by rule", "template aider allow[2]"),
    ),
    "docs": ("docs", "docs.python.org", {}, (True, "allowed by rule", "template docs allow[0]")),
}


@pytest.mark.parametrize(("name", "host", "extra", "expected"), DECISIONS.values(), ids=DECISIONS)
def test_template_decisions(
    name: str, host: str, extra: dict[str, str], expected: tuple[bool, str, str | None]
) -> None:
    assert _decision(name, host, **extra) == expected


def test_model_apis_only_on_443() -> None:
    assert _decision("codex", "api.openai.com", 80) == (False, "no rule allows this port", None)


def test_dependency_update_is_its_parts_in_order(quiet_machine: Path) -> None:
    parts = ["python-deps", "node-deps", "rust-deps", "go-deps", "github-readonly", "vuln-db"]
    assert TEMPLATES["dependency-update"].extends == tuple(parts)
    whole = resolve_template("dependency-update")
    assert whole.policy.allow == [r for p in parts for r in resolve_template(p).policy.allow]
    assert whole.notes == (
        "python-deps: pip: no python3 on PATH: nothing discovered from pip",
        "python-deps: uv: not installed: nothing discovered from it",
        "node-deps: npm: not installed: nothing discovered from it",
        "node-deps: pnpm: not installed: nothing discovered from it",
        "node-deps: yarn: not installed: nothing discovered from it",
        "rust-deps: cargo: not installed: nothing discovered from it",
        "go-deps: go: not installed: nothing discovered from it",
    )


def test_deps_template_takes_its_rules_from_discovery(quiet_machine: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", f"{quiet_machine}/bin")
    (quiet_machine / "bin").mkdir()
    (quiet_machine / "bin" / "uv").write_text("#!/bin/sh\n")
    (quiet_machine / "bin" / "uv").chmod(0o755)
    monkeypatch.setenv("UV_DEFAULT_INDEX", "https://pypi-mirror.test/simple/")
    resolved = resolve_template("python-deps", HostContext.current())
    assert [(r.host, r.ports, r.origin) for r in resolved.policy.allow] == [
        ("pypi-mirror.test", [443], "python-deps: UV_DEFAULT_INDEX environment variable")
    ]


# ------------------------------------------------------------------ extends, --policy


def _write(files: dict[str, str]) -> None:
    for name, text in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(text)


def test_a_file_extends_templates_first(quiet_machine: Path) -> None:
    _write(
        {
            "policy.yaml": "version: 1\nextends: [codex, github-readonly]\nmode: audit\n"
            "allow:\n  - host: own.test\ndeny:\n  - host: codeload.github.com\n"
        }
    )
    notes: list[str] = []
    policy = load_policy(Path("policy.yaml"), notes)
    codex, github = (resolve_template(n).policy.allow for n in ("codex", "github-readonly"))
    assert policy.allow[: len(codex) + len(github)] == [*codex, *github]
    assert policy.allow[-1].origin == "policy.yaml:5 allow[0]"
    assert policy.mode == "audit" and policy.extends == ["codex", "github-readonly"]
    assert decide(policy, Target("codeload.github.com", 443)).reason == "denied by rule"
    assert notes == []  # neither template discovers anything


def test_discovery_notes_reach_the_caller(quiet_machine: Path) -> None:
    _write(
        {
            "sub/policy.yaml": "version: 1\nextends: [base.yaml]\n",
            "sub/base.yaml": "version: 1\nextends: [go-deps]\n",
        }
    )
    notes: list[str] = []
    load_policy(Path("sub/policy.yaml"), notes)
    assert notes == ["go-deps: go: not installed: nothing discovered from it"]


def test_a_template_name_beats_a_file_of_that_name(quiet_machine: Path) -> None:
    # A repository cannot swap the template the user asked for with its own file.
    _write(
        {
            "codex": "version: 1\nallow:\n  - host: '*'\n    broad: true\n",
            "policy.yaml": "version: 1\nextends: [codex]\n",
            "local.yaml": "version: 1\nextends: [./codex]\n",
        }
    )
    codex = resolve_template("codex").policy.allow
    assert resolve_policy("codex").allow == codex
    assert load_policy(Path("policy.yaml")).allow == codex
    assert [r.host for r in load_policy(Path("local.yaml")).allow] == ["*"]
    assert [r.host for r in resolve_policy("./codex").allow] == ["*"]


POLICY_ERRORS = {
    "misspelt template": (
        "pyhton-deps",
        "pyhton-deps: no such template or file",
        "did you mean the template 'python-deps'? (`corridor policy list` shows all)",
    ),
    "nothing like a template": (
        "zzz",
        "zzz: no such template or file",
        "templates: " + ", ".join(TEMPLATES) + "; or give a file path",
    ),
    "missing file": (
        "conf/policy.yaml",
        "conf/policy.yaml: cannot read the policy file: No such file or directory",
        "check the path and that you may read it",
    ),
}


@pytest.mark.parametrize(("value", "message", "hint"), POLICY_ERRORS.values(), ids=POLICY_ERRORS)
def test_resolve_policy_errors(quiet_machine: Path, value: str, message: str, hint: str) -> None:
    with pytest.raises(PolicyError) as e:
        resolve_policy(value)
    assert (e.value.message, e.value.hint) == (message, hint)


def test_unknown_template_in_extends_suggests_one(quiet_machine: Path) -> None:
    _write({"policy.yaml": "version: 1\nextends: [github-readnoly]\n"})
    with pytest.raises(PolicyError) as e:
        load_policy(Path("policy.yaml"))
    assert e.value.message == "policy.yaml:2:11: extends[0]: unknown template 'github-readnoly'"
    assert e.value.hint == (
        "did you mean the template 'github-readonly'? (`corridor policy list` shows all)"
    )


def test_resolve_policy_of_a_template_records_its_name(quiet_machine: Path) -> None:
    assert resolve_policy("docs").extends == ["docs"]


# --------------------------------------------------------------------------- properties

label = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
unicode_label = st.text(
    alphabet=st.sampled_from("äöüéñçßøåłžабвгдεζηθ"), min_size=1, max_size=8
).filter(lambda s: _to_ascii(s) is not None)


def _to_ascii(label_text: str) -> str | None:
    try:
        return encodings.idna.ToASCII(label_text).decode("ascii")
    except UnicodeError:
        return None


@given(unicode_label, label, st.sampled_from(["", "*.", "**."]), st.booleans())
def test_unicode_and_punycode_spellings_decide_alike(
    uni: str, parent: str, prefix: str, below: bool
) -> None:
    puny = _to_ascii(uni)
    assert puny is not None
    domain_u, domain_a = f"{uni}.{parent}.test", f"{puny}.{parent}.test"
    host_u = ("x." if below else "") + domain_u
    host_a = ("x." if below else "") + domain_a
    results = {
        decide(Policy(allow=[Rule(host=prefix + rule_domain)]), Target(host, 443)).allowed
        for rule_domain in (domain_u, domain_a)
        for host in (host_u, host_a)
    }
    assert len(results) == 1  # the four combinations agree


rule_hosts = st.builds(
    lambda prefix, labels: prefix + ".".join([*labels, "test"]),
    st.sampled_from(["", "*.", "**."]),
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2),
)
port_lists = st.one_of(st.none(), st.lists(st.sampled_from([22, 80, 443, 8443]), min_size=1))


@given(
    st.lists(st.tuples(rule_hosts, port_lists), max_size=4),
    st.lists(st.tuples(rule_hosts, port_lists), max_size=3),
    st.lists(st.sampled_from(["a", "b", "c", "x"]), min_size=1, max_size=3),
    st.sampled_from([22, 80, 443, 8443]),
)
def test_a_name_allowed_on_some_port_is_resolvable(
    allow: list[tuple[str, list[int] | None]],
    deny: list[tuple[str, list[int] | None]],
    labels: list[str],
    port: int,
) -> None:
    """DNS never refuses a name a connection to it would be allowed for."""
    policy = Policy(
        allow=[Rule(host=h, ports=p) for h, p in allow],
        deny=[Rule(host=h, ports=p) for h, p in deny],
    )
    host = ".".join([*labels, "test"])
    if decide(policy, Target(host, port)).allowed:
        assert decide_dns(policy, host).allowed


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.sampled_from(["docs", "codex", "claude-code", "aider", "vuln-db", "offline"]),
        max_size=4,
        unique=True,
    )
)
def test_templates_merge_in_extends_order(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        path.write_text(f"version: 1\nextends: [{', '.join(names)}]\nallow: [{{host: own.test}}]\n")
        policy = load_policy(path)
    expected = [r for n in names for r in resolve_template(n).policy.allow]
    assert policy.allow[:-1] == expected
    assert policy.allow[-1].host == "own.test"
