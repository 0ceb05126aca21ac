"""Built-in policy templates for the common jobs, as data.

Each template says in one line what it is for (`corridor policy list`) and in a few
more what it allows and leaves out (`corridor policy show`). Hosts of services that are
not package registries (GitHub, OSV, documentation sites, model providers) are written
here. Package registries never are: the `*-deps` templates get theirs from
`corridor.policy.discover` at run time, so a company mirror is followed automatically.

Rules here may carry methods and paths: they document the read-only intent and are
enforced where requests are inspected; a connection is decided by host and port.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from corridor.policy.discover import HostContext, discover_many
from corridor.policy.model import Policy, Rule
from corridor.policy.registry_config import rules_from_sources

HTTPS = [443]
READ = ["GET", "HEAD"]


@dataclass(frozen=True, slots=True)
class Template:
    """A built-in policy: rules as a policy file would write them, or discovered ones.

    `extends` names other templates merged first; `discover` names the ecosystem whose
    package registries are discovered at run time.
    """

    name: str
    summary: str
    purpose: str
    extends: tuple[str, ...] = ()
    allow: tuple[Mapping[str, Any], ...] = ()
    discover: str | None = None


_DEPS_PURPOSE = (
    "Installing {what} dependencies. The registries are not written down: they are "
    "discovered when the policy is used, from {how}. A company mirror is therefore "
    "followed automatically. Files a mirror serves from another host than its index "
    "cannot be known ahead: add that host to your policy."
)

_TEMPLATES: tuple[Template, ...] = (
    Template(
        name="offline",
        summary="nothing at all: for tests and builds that must not use the network",
        purpose=(
            "Running tests and builds that must not reach the network. Allows nothing; "
            "every attempt is refused and recorded, which shows what a job really needs."
        ),
    ),
    Template(
        name="python-deps",
        summary="the Python package indexes pip and uv use here (discovered at run time)",
        purpose=_DEPS_PURPOSE.format(
            what="Python",
            how="pip's and uv's configuration files and environment, or else pip's own "
            "default index and file host as pip reports them (file:// indexes need no rule)",
        ),
        discover="python",
    ),
    Template(
        name="node-deps",
        summary="the npm registries npm, pnpm and yarn use here (discovered at run time)",
        purpose=_DEPS_PURPOSE.format(
            what="Node.js",
            how="npm's, pnpm's and yarn's configuration (.npmrc at project and user level, "
            ".yarnrc.yml, npm_config_* and YARN_* variables) and their own defaults",
        ),
        discover="node",
    ),
    Template(
        name="rust-deps",
        summary="the cargo registries configured here (discovered at run time)",
        purpose=_DEPS_PURPOSE.format(
            what="Rust",
            how="cargo's configuration (source replacement and [registries] in "
            "~/.cargo/config.toml and the project's .cargo/config.toml)",
        )
        + " Cargo cannot report its default registry: without a replacement, add its "
        "hosts yourself.",
        discover="rust",
    ),
    Template(
        name="go-deps",
        summary="the Go module proxy and checksum database go uses here (discovered)",
        purpose=_DEPS_PURPOSE.format(
            what="Go module",
            how="`go env` (GOPROXY and GOSUMDB, from the environment, the go env file "
            "or go's defaults)",
        )
        + " Modules fetched directly from their source hosts (GOPROXY 'direct', "
        "GOPRIVATE) need those hosts added.",
        discover="go",
    ),
    Template(
        name="docs",
        summary="language and library documentation sites, read only",
        purpose=(
            "Reading documentation while coding: Python, MDN, Node.js, TypeScript, Rust, "
            "Go, C/C++ references and Linux man pages. Read-only methods. Search engines, "
            "forums and hosts shared by many owners (such as Read the Docs) are left out: "
            "add the one project you need, e.g. 'host: requests.readthedocs.io'."
        ),
        allow=(
            {"host": "docs.python.org", "ports": HTTPS, "methods": READ},
            {"host": "developer.mozilla.org", "ports": HTTPS, "methods": READ},
            {"host": "nodejs.org", "ports": HTTPS, "methods": READ, "paths": ["/docs/", "/api/"]},
            {"host": "www.typescriptlang.org", "ports": HTTPS, "methods": READ},
            {"host": "doc.rust-lang.org", "ports": HTTPS, "methods": READ},
            {"host": "docs.rs", "ports": HTTPS, "methods": READ},
            {"host": "go.dev", "ports": HTTPS, "methods": READ},
            {"host": "en.cppreference.com", "ports": HTTPS, "methods": READ},
            {"host": "man7.org", "ports": HTTPS, "methods": READ},
        ),
    ),
    Template(
        name="github-readonly",
        summary="GitHub web, API, raw files, archives and git fetch, read-only methods",
        purpose=(
            "Reading code and metadata on GitHub: the web, the REST API, raw files, "
            "archives, release downloads and `git clone`/`fetch` over HTTPS. Read-only "
            "methods, plus POST on github.com because git fetch posts to git-upload-pack. "
            "No credentials reach the sandbox, so nothing can be written with them."
        ),
        allow=(
            {
                "host": "github.com",
                "ports": HTTPS,
                "methods": [*READ, "POST"],
                "comment": "POST: git fetch asks git-upload-pack with a POST",
            },
            {"host": "api.github.com", "ports": HTTPS, "methods": READ},
            {"host": "raw.githubusercontent.com", "ports": HTTPS, "methods": READ},
            {"host": "codeload.github.com", "ports": HTTPS, "methods": READ},
            {"host": "objects.githubusercontent.com", "ports": HTTPS, "methods": READ},
            {"host": "release-assets.githubusercontent.com", "ports": HTTPS, "methods": READ},
        ),
    ),
    Template(
        name="vuln-db",
        summary="the OSV vulnerability database and GitHub's advisory API",
        purpose=(
            "Checking dependencies for known vulnerabilities: the OSV API (queries are "
            "POSTs), OSV's bulk data, and the GitHub advisory REST API."
        ),
        allow=(
            {"host": "api.osv.dev", "ports": HTTPS, "methods": [*READ, "POST"], "paths": ["/v1"]},
            {"host": "osv-vulnerabilities.storage.googleapis.com", "ports": HTTPS, "methods": READ},
            {"host": "api.github.com", "ports": HTTPS, "methods": READ, "paths": ["/advisories"]},
        ),
    ),
    Template(
        name="dependency-update",
        summary="python-deps + node-deps + rust-deps + go-deps + github-readonly + vuln-db",
        purpose=(
            "Updating dependencies: the package registries discovered here, GitHub to "
            "read changelogs and sources, and the vulnerability databases. Ecosystems "
            "whose tools are not installed add nothing."
        ),
        extends=("python-deps", "node-deps", "rust-deps", "go-deps", "github-readonly", "vuln-db"),
    ),
    Template(
        name="codex",
        summary="OpenAI's API and ChatGPT sign-in, for the Codex CLI",
        purpose=(
            "Running the Codex CLI: the OpenAI API (API keys), and the ChatGPT backend and "
            "sign-in used with a ChatGPT plan. Combine with a job template."
        ),
        allow=(
            {"host": "api.openai.com", "ports": HTTPS},
            {"host": "auth.openai.com", "ports": HTTPS},
            {"host": "chatgpt.com", "ports": HTTPS, "paths": ["/backend-api/"]},
        ),
    ),
    Template(
        name="claude-code",
        summary="Anthropic's API and console sign-in, for Claude Code",
        purpose=(
            "Running Claude Code: the Anthropic API and the console's sign-in. Telemetry "
            "and error-reporting hosts are left out on purpose. Combine with a job template."
        ),
        allow=(
            {"host": "api.anthropic.com", "ports": HTTPS},
            {"host": "console.anthropic.com", "ports": HTTPS},
        ),
    ),
    Template(
        name="aider",
        summary="the usual model providers' APIs, for Aider",
        purpose=(
            "Running Aider with the usual providers: OpenAI, Anthropic, Google Gemini, "
            "DeepSeek and OpenRouter. Aider's update check and model-metadata download "
            "are left out (pass --no-check-update). Combine with a job template."
        ),
        allow=(
            {"host": "api.openai.com", "ports": HTTPS},
            {"host": "api.anthropic.com", "ports": HTTPS},
            {"host": "generativelanguage.googleapis.com", "ports": HTTPS},
            {"host": "api.deepseek.com", "ports": HTTPS},
            {"host": "openrouter.ai", "ports": HTTPS, "paths": ["/api/"]},
        ),
    ),
)

TEMPLATES: Mapping[str, Template] = MappingProxyType({t.name: t for t in _TEMPLATES})


def template_names() -> list[str]:
    """Every built-in template name, in the order `corridor policy list` shows them."""
    return list(TEMPLATES)


def is_template(name: str) -> bool:
    """Whether `name` is a built-in template."""
    return name in TEMPLATES


@dataclass(frozen=True, slots=True)
class Resolved:
    """A template as a policy, plus what discovery said (for `corridor policy show`)."""

    policy: Policy
    notes: tuple[str, ...]


def resolve_template(
    name: str, ctx: HostContext | None = None, state_dir: Path | None = None
) -> Resolved:
    """The policy of template `name`: its extends merged first, then its own rules.

    Discovered rules are found now (or taken from this process's cache) in `ctx`, by
    default this process's environment, where tools' answers are kept under `state_dir`
    when given. Raises KeyError for an unknown name.
    """
    order = _expand(name)
    ecosystems = [t.discover for t in order if t.discover is not None]
    ctx = ctx or HostContext.current(state_dir)
    found = discover_many(ecosystems, ctx) if ecosystems else {}
    allow: list[Rule] = []
    notes: list[str] = []
    for template in order:
        allow += [
            Rule.model_validate({**data, "origin": f"template {template.name} allow[{i}]"})
            for i, data in enumerate(template.allow)
        ]
        if template.discover is not None:
            discovery = found[template.discover]
            rules, problems = rules_from_sources(template.name, discovery.sources)
            allow += rules
            notes += [f"{template.name}: {note}" for note in discovery.notes]
            notes += problems
    return Resolved(Policy(allow=allow), tuple(dict.fromkeys(notes)))


def _expand(name: str, seen: Sequence[str] = ()) -> list[Template]:
    """The template and everything it extends, parents first, each once."""
    template = TEMPLATES[name]
    if name in seen:
        raise ValueError(f"template extends cycle: {' -> '.join([*seen, name])}")
    out: list[Template] = []
    for parent in template.extends:
        out += [t for t in _expand(parent, (*seen, name)) if t not in out]
    return [*out, template]
