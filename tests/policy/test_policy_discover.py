"""Registry discovery: the pure parsers as tables of named cases, then the real tools
(pip through the python on PATH, npm) reading fake configuration in a temporary HOME.

Only `.test` names appear; where a tool's own default is checked, the expected value is
asked from the tool in the test too, never written down.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import corridor.policy.discover as d
from corridor.policy.discover import HostContext, discover, discover_many, pip_config_files
from corridor.policy.registry_config import (
    PIP_URL_KEYS,
    NoEndpoint,
    Source,
    cargo_env_sources,
    cargo_sources,
    goproxy_urls,
    gosumdb_url,
    npm_env_registries,
    npm_registries,
    parse_goenv,
    parse_npmrc,
    parse_pip_config,
    pip_settings,
    rules_from_sources,
    url_endpoint,
    uv_env_sources,
    uv_sources,
    yarnrc_classic_registries,
    yarnrc_yml_registries,
)

# ------------------------------------------------------------------------------ URLs

ENDPOINTS = {
    "https default port": ("https://pypi-mirror.test/simple/", ("pypi-mirror.test", 443)),
    "http default port": ("http://mirror.test/simple", ("mirror.test", 80)),
    "explicit port": ("https://mirror.test:8443/simple", ("mirror.test", 8443)),
    "credentials are not the host": ("https://u:tok@mirror.test/x", ("mirror.test", 443)),
    "upper-case scheme": ("HTTPS://Mirror.Test/", ("mirror.test", 443)),
    "ipv6 literal": ("https://[2001:db8::5]:8080/simple", ("2001:db8::5", 8080)),
    "cargo sparse prefix": ("sparse+https://crates.test/index/", ("crates.test", 443)),
    "cargo registry prefix": ("registry+https://crates.test/git", ("crates.test", 443)),
    "surrounding spaces": ("  https://mirror.test/  ", ("mirror.test", 443)),
}


@pytest.mark.parametrize(("url", "expected"), ENDPOINTS.values(), ids=ENDPOINTS.keys())
def test_url_endpoint(url: str, expected: tuple[str, int]) -> None:
    assert url_endpoint(url) == expected


NO_ENDPOINTS = {
    "file url": ("file:///srv/wheels", "a file:// URL, no network", True),
    "bare path": ("/opt/wheels", "a local path, no network", True),
    "relative path": ("./vendor", "a local path, no network", True),
    "ssh": ("ssh://git@host.test/x", "ssh:// URLs are not fetched over HTTP", False),
    "no host": ("https:///simple", "no host in the URL", False),
    "bad port": ("https://mirror.test:99999/", "not a valid URL (bad port)", False),
}


@pytest.mark.parametrize(("url", "reason", "local"), NO_ENDPOINTS.values(), ids=NO_ENDPOINTS.keys())
def test_url_without_endpoint(url: str, reason: str, local: bool) -> None:
    with pytest.raises(NoEndpoint) as e:
        url_endpoint(url)
    assert (e.value.reason, e.value.local) == (reason, local)


def test_rules_merge_origins_and_note_what_needs_no_rule() -> None:
    rules, notes = rules_from_sources(
        "python-deps",
        [
            Source("https://mirror.test/simple/", "pip config global.index-url (a.conf)"),
            Source("https://MIRROR.test:443/other", "PIP_EXTRA_INDEX_URL environment variable"),
            Source("https://mirror.test/simple/", "pip config global.index-url (a.conf)"),
            Source("http://10.1.2.3:8080/simple", "pip config install.extra-index-url (b.conf)"),
            Source("https://[2001:db8::5]/", "uv user config (c.toml) index[0]"),
            Source("file:///srv/wheels", "PIP_FIND_LINKS environment variable"),
            Source("https://bad_host!.test/", "pip config global.extra-index-url (a.conf)"),
        ],
    )
    assert [(r.host or str(r.cidr), r.ports, r.origin) for r in rules] == [
        (
            "mirror.test",
            [443],
            "python-deps: pip config global.index-url (a.conf); "
            "PIP_EXTRA_INDEX_URL environment variable",
        ),
        ("10.1.2.3/32", [8080], "python-deps: pip config install.extra-index-url (b.conf)"),
        ("2001:db8::5/128", [443], "python-deps: uv user config (c.toml) index[0]"),
    ]
    assert notes == [
        "python-deps: PIP_FIND_LINKS environment variable: a file:// URL, no network: no rule",
        "python-deps: pip config global.extra-index-url (a.conf): the host is not a valid "
        "name ('!' is not allowed in a host name): skipped",
    ]


@given(st.lists(st.tuples(st.sampled_from(["a.test", "b.test", "10.0.0.1"]), st.integers(1, 3))))
def test_one_rule_per_host_and_port(spec: list[tuple[str, int]]) -> None:
    sources = [Source(f"https://{host}:{port}/", f"w{i}") for i, (host, port) in enumerate(spec)]
    rules, notes = rules_from_sources("t", sources)
    keys = [(r.host or str(r.cidr), r.ports) for r in rules]
    assert len(keys) == len(set(map(str, keys))) == len(set(spec))
    assert notes == []


# ------------------------------------------------------------------------------ pip

PIP_CONF = """\
[global]
INDEX_URL = https://one.test/simple
--extra-index-url = https://two.test/simple https://three.test/simple
timeout = 60

[install]
find_links = https://links.test/
"""


def test_parse_pip_config_normalises_keys_like_pip() -> None:
    assert parse_pip_config(PIP_CONF) == {
        ("global", "index-url"): "https://one.test/simple",
        ("global", "extra-index-url"): "https://two.test/simple https://three.test/simple",
        ("global", "timeout"): "60",
        ("install", "find-links"): "https://links.test/",
    }


def test_parse_pip_config_refuses_what_is_not_ini() -> None:
    with pytest.raises(ValueError, match="no section headers"):
        parse_pip_config("index-url = https://one.test/\n")


REPORTED = {
    "global": ["/etc/xdg/pip/pip.conf", "/etc/pip.conf"],
    "user": ["/h/.pip/pip.conf", "/h/.config/pip/pip.conf"],
    "site": ["/venv/pip.conf"],
}


def test_pip_config_files_in_pip_order(tmp_path: Path) -> None:
    assert [p for _, p in pip_config_files(REPORTED, {})] == [
        "/etc/xdg/pip/pip.conf",
        "/etc/pip.conf",
        "/h/.pip/pip.conf",
        "/h/.config/pip/pip.conf",
        "/venv/pip.conf",
    ]
    existing = tmp_path / "env.conf"
    existing.write_text("[global]\n")
    # An existing PIP_CONFIG_FILE replaces the user files and comes last (pip's rule).
    assert pip_config_files(REPORTED, {"PIP_CONFIG_FILE": str(existing)})[2:] == [
        ("site", "/venv/pip.conf"),
        ("env", str(existing)),
    ]
    missing = str(tmp_path / "missing.conf")
    assert pip_config_files(REPORTED, {"PIP_CONFIG_FILE": missing})[-1] == ("env", missing)
    assert len(pip_config_files(REPORTED, {"PIP_CONFIG_FILE": missing})) == 6
    assert pip_config_files(REPORTED, {"PIP_CONFIG_FILE": os.devnull}) == []


def _settings(files: dict[str, str], env: dict[str, str]) -> tuple[list[tuple[str, str]], bool]:
    parsed = [(path, parse_pip_config(text)) for path, text in files.items()]
    found = pip_settings(parsed, env)
    return [(s.url, s.where) for s in found.sources], found.uses_default


PIP_SETTINGS: dict[str, tuple[dict[str, str], dict[str, str], list[tuple[str, str]], bool]] = {
    "nothing configured": ({}, {}, [], True),
    "index in global": (
        {"a.conf": "[global]\nindex-url = https://a.test/simple\n"},
        {},
        [("https://a.test/simple", "pip config global.index-url (a.conf)")],
        False,
    ),
    "later file wins": (
        {
            "a.conf": "[global]\nindex-url = https://a.test/simple\n",
            "b.conf": "[global]\nindex-url = https://b.test/simple\n",
        },
        {},
        [("https://b.test/simple", "pip config global.index-url (b.conf)")],
        False,
    ),
    "environment wins over files": (
        {"a.conf": "[global]\nindex-url = https://a.test/simple\n"},
        {"PIP_INDEX_URL": "https://env.test/simple"},
        [("https://env.test/simple", "PIP_INDEX_URL environment variable")],
        False,
    ),
    "extra index keeps the default": (
        {"a.conf": "[global]\nextra-index-url = https://x.test/s https://y.test/s\n"},
        {},
        [
            ("https://x.test/s", "pip config global.extra-index-url (a.conf)"),
            ("https://y.test/s", "pip config global.extra-index-url (a.conf)"),
        ],
        True,
    ),
    "a command section adds to global": (
        {
            "a.conf": "[global]\nindex-url = https://g.test/s\n"
            "[download]\nindex-url = https://dl.test/s\n"
        },
        {},
        [
            ("https://g.test/s", "pip config global.index-url (a.conf)"),
            ("https://dl.test/s", "pip config download.index-url (a.conf)"),
        ],
        False,
    ),
    "no-index turns indexes off, not find-links": (
        {"a.conf": "[global]\nno-index = yes\nindex-url = https://a.test/\n"},
        {"PIP_FIND_LINKS": "https://links.test/ /opt/wheels"},
        [
            ("https://links.test/", "PIP_FIND_LINKS environment variable"),
            ("/opt/wheels", "PIP_FIND_LINKS environment variable"),
        ],
        False,
    ),
}


@pytest.mark.parametrize(
    ("files", "env", "sources", "uses_default"), PIP_SETTINGS.values(), ids=PIP_SETTINGS.keys()
)
def test_pip_settings(
    files: dict[str, str],
    env: dict[str, str],
    sources: list[tuple[str, str]],
    uses_default: bool,
) -> None:
    assert _settings(files, env) == (sources, uses_default)


# ------------------------------------------------------------------------------- uv


def test_uv_sources_from_a_config_table() -> None:
    data = {
        "index-url": "https://u.test/simple",
        "extra-index-url": ["https://x.test/simple"],
        "pip": {"find-links": ["https://links.test/"]},
        "index": [{"name": "corp", "url": "https://corp.test/simple", "default": True}],
    }
    sources, sets_default = uv_sources(data, "user config (uv.toml)")
    assert [(s.url, s.where) for s in sources] == [
        ("https://u.test/simple", "uv user config (uv.toml) index-url"),
        ("https://x.test/simple", "uv user config (uv.toml) extra-index-url"),
        ("https://links.test/", "uv user config (uv.toml) pip.find-links"),
        ("https://corp.test/simple", "uv user config (uv.toml) index[0]"),
    ]
    assert sets_default
    assert uv_sources({"index": [{"url": "https://x.test/"}]}, "w")[1] is False


def test_uv_environment() -> None:
    sources, sets_default = uv_env_sources(
        {
            "UV_DEFAULT_INDEX": "https://d.test/simple",
            "UV_INDEX": "corp=https://corp.test/simple https://plain.test/simple",
            "UV_FIND_LINKS": "https://l1.test/,https://l2.test/",
        }
    )
    assert [s.url for s in sources] == [
        "https://d.test/simple",
        "https://corp.test/simple",
        "https://plain.test/simple",
        "https://l1.test/",
        "https://l2.test/",
    ]
    assert sets_default
    assert uv_env_sources({"UV_EXTRA_INDEX_URL": "https://x.test/"})[1] is False


# ------------------------------------------------------------------- npm, yarn, pnpm

NPMRC = """\
; a comment
# another
registry = "https://npm-mirror.test/"
@acme:registry=https://acme.test/npm/
//npm-mirror.test/:_authToken=${NPM_TOKEN}
@corp:registry=https://${CORP_HOST}/npm/
[section]
registry=https://sectioned.test/
"""


def test_parse_npmrc() -> None:
    values = parse_npmrc(NPMRC, {"NPM_TOKEN": "secret", "CORP_HOST": "corp.test"})
    assert values == {
        "registry": "https://npm-mirror.test/",
        "@acme:registry": "https://acme.test/npm/",
        "//npm-mirror.test/:_authToken": "secret",
        "@corp:registry": "https://corp.test/npm/",
        "section.registry": "https://sectioned.test/",
    }
    # Only registry settings are kept: tokens are never looked at again.
    assert npm_registries(values) == {
        "registry": "https://npm-mirror.test/",
        "@acme:registry": "https://acme.test/npm/",
        "@corp:registry": "https://corp.test/npm/",
    }


def test_npm_environment_is_case_insensitive() -> None:
    env = {
        "NPM_CONFIG_REGISTRY": "https://a.test/",
        "npm_config_@x:registry": "https://x.test/",
        "npm_config_cache": "/tmp/c",
    }
    assert npm_env_registries(env) == {
        "registry": ("https://a.test/", "NPM_CONFIG_REGISTRY"),
        "@x:registry": ("https://x.test/", "npm_config_@x:registry"),
    }


def test_yarn_config_files() -> None:
    berry = (
        'npmRegistryServer: "https://yarn-mirror.test"\n'
        "npmScopes:\n  acme:\n    npmRegistryServer: https://acme.test/\n  bad: 3\n"
    )
    assert yarnrc_yml_registries(berry) == {
        "registry": "https://yarn-mirror.test",
        "@acme:registry": "https://acme.test/",
    }
    with pytest.raises(ValueError):
        yarnrc_yml_registries("a: [unclosed\n")
    classic = '# c\nregistry "https://classic.test/"\n"@acme:registry" "https://acme.test/"\n'
    assert yarnrc_classic_registries(classic) == {
        "registry": "https://classic.test/",
        "@acme:registry": "https://acme.test/",
    }


# ----------------------------------------------------------------------- cargo, go


def test_cargo_sources() -> None:
    data = {
        "source": {
            "crates-io": {"replace-with": "corp"},
            "corp": {"registry": "sparse+https://crates.corp.test/index/"},
            "vendored": {"directory": "vendor"},
            "gitmirror": {"git": "https://git.corp.test/index.git"},
        },
        "registries": {"internal": {"index": "https://internal.test/git/index"}},
    }
    sources, replaced = cargo_sources(data, "config (c.toml)")
    assert [(s.url, s.where) for s in sources] == [
        ("sparse+https://crates.corp.test/index/", "cargo config (c.toml) source.corp.registry"),
        ("https://git.corp.test/index.git", "cargo config (c.toml) source.gitmirror.git"),
        ("https://internal.test/git/index", "cargo config (c.toml) registries.internal.index"),
    ]
    assert replaced
    assert cargo_sources({}, "x") == ([], False)
    assert [
        s.url for s in cargo_env_sources({"CARGO_REGISTRIES_MY_REG_INDEX": "https://r.test/"})
    ] == ["https://r.test/"]


GOPROXY = {
    "one proxy then direct": ("https://goproxy.test,direct", ["https://goproxy.test"], ["direct"]),
    "pipe fallback": (
        "https://a.test|https://b.test,off",
        ["https://a.test", "https://b.test"],
        ["off"],
    ),
    "off": ("off", [], ["off"]),
    "empty": ("", [], []),
}


@pytest.mark.parametrize(("value", "urls", "keywords"), GOPROXY.values(), ids=GOPROXY.keys())
def test_goproxy(value: str, urls: list[str], keywords: list[str]) -> None:
    assert goproxy_urls(value) == (urls, keywords)


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("sum.golang.test", "https://sum.golang.test"),
        ("sum.golang.test+abcdef", "https://sum.golang.test"),
        ("sum.golang.test+abcdef https://sumproxy.test/x", "https://sumproxy.test/x"),
        ("off", None),
        ("", None),
    ],
)
def test_gosumdb(value: str, url: str | None) -> None:
    assert gosumdb_url(value) == url


def test_parse_goenv() -> None:
    assert parse_goenv("GOPROXY=https://p.test\n# c\nGOSUMDB=off\nbad line\n") == {
        "GOPROXY": "https://p.test",
        "GOSUMDB": "off",
    }


# ------------------------------------------------------- the real tools, fake configuration


def _system_pip_sets_urls() -> bool:
    """Whether this machine's own pip config (outside HOME) names an index."""
    for path in ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", f"{sys.prefix}/pip.conf"):
        try:
            values = parse_pip_config(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if any(key in PIP_URL_KEYS for _, key in values):
            return True
    return False


SYSTEM_PIP_CONFIGURED = _system_pip_sets_urls()


class Machine:
    """A temporary HOME and project, a PATH holding only the tools a test puts there."""

    def __init__(self, root: Path):
        self.home = root / "home"
        self.project = root / "project"
        self.bin = root / "bin"
        for directory in (self.home, self.project, self.bin):
            directory.mkdir()
        self.env: dict[str, str] = {"HOME": str(self.home), "PATH": str(self.bin)}

    def tool(self, name: str, target: str | None = None) -> None:
        """Put the real tool (or `target`) on PATH."""
        real = target or shutil.which(name)
        assert real, f"{name} is needed for this test"
        (self.bin / name).symlink_to(real)

    def fake(self, name: str, script: str) -> Path:
        """A stand-in program (for tools this machine does not have)."""
        path = self.bin / name
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return path

    def write(self, relative: str, text: str, base: Path | None = None) -> Path:
        path = (base or self.home) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def ctx(self) -> HostContext:
        return HostContext.of(self.env, self.project)


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def _rules(template: str, ecosystem: str, m: Machine) -> list[tuple[str, list[int] | None, str]]:
    rules, _ = rules_from_sources(template, discover(ecosystem, m.ctx()).sources)
    return [(r.host or str(r.cidr), r.ports, r.origin) for r in rules]


def _notes(ecosystem: str, m: Machine) -> tuple[str, ...]:
    return discover(ecosystem, m.ctx()).notes


needs_clean_system_pip = pytest.mark.skipif(
    SYSTEM_PIP_CONFIGURED, reason="this machine's /etc pip config names an index"
)


@needs_clean_system_pip
def test_pip_config_file_from_the_environment(machine: Machine) -> None:
    machine.tool("python3", sys.executable)
    conf = machine.write(
        "conf/pip.conf",
        "[global]\nindex-url = https://pypi-mirror.test/simple/\n"
        "extra-index-url = https://extra.test:8443/simple\n",
    )
    machine.write(".config/pip/pip.conf", "[global]\nindex-url = https://ignored.test/\n")
    machine.env["PIP_CONFIG_FILE"] = str(conf)
    assert _rules("python-deps", "python", machine) == [
        ("pypi-mirror.test", [443], f"python-deps: pip config global.index-url ({conf})"),
        ("extra.test", [8443], f"python-deps: pip config global.extra-index-url ({conf})"),
    ]
    notes = _notes("python", machine)
    assert "uv: not installed: nothing discovered from it" in notes
    assert any("another host" in note for note in notes)


@needs_clean_system_pip
def test_pip_user_config_new_location_beats_legacy(machine: Machine) -> None:
    machine.tool("python3", sys.executable)
    machine.write(".pip/pip.conf", "[global]\nindex-url = https://legacy.test/simple\n")
    xdg = machine.home / "xdg"
    machine.env["XDG_CONFIG_HOME"] = str(xdg)
    new = machine.write("pip/pip.conf", "[global]\nindex-url = https://new.test/simple\n", xdg)
    assert _rules("python-deps", "python", machine) == [
        ("new.test", [443], f"python-deps: pip config global.index-url ({new})")
    ]


@needs_clean_system_pip
def test_pip_environment_beats_files_and_file_indexes_need_no_rule(machine: Machine) -> None:
    machine.tool("python3", sys.executable)
    machine.write(".config/pip/pip.conf", "[global]\nindex-url = https://file.test/simple\n")
    machine.env["PIP_INDEX_URL"] = "file:///srv/simple"
    machine.env["PIP_EXTRA_INDEX_URL"] = "https://extra.test/simple"
    assert _rules("python-deps", "python", machine) == [
        ("extra.test", [443], "python-deps: PIP_EXTRA_INDEX_URL environment variable")
    ]
    _, notes = rules_from_sources("python-deps", discover("python", machine.ctx()).sources)
    assert notes == [
        "python-deps: PIP_INDEX_URL environment variable: a file:// URL, no network: no rule"
    ]


@needs_clean_system_pip
def test_nothing_configured_gives_pips_own_default_as_pip_reports_it(machine: Machine) -> None:
    machine.tool("python3", sys.executable)
    python = str(machine.bin / "python3")
    ask = (
        "import pip; from pip._internal.models.index import PyPI; "
        "print(pip.__version__, PyPI.simple_url, PyPI.file_storage_domain)"
    )
    asked = subprocess.run([python, "-I", "-c", ask], capture_output=True, text=True, check=True)
    version, index, file_host = asked.stdout.split()
    found = discover("python", machine.ctx())
    assert [(s.url, s.where) for s in found.sources] == [
        (index, f"pip's default index (pip {version}, {python})"),
        (f"https://{file_host}/", f"pip's default file host (pip {version}, {python})"),
    ]


def test_pip_config_devnull_loads_no_file(machine: Machine) -> None:
    machine.tool("python3", sys.executable)
    machine.write(".config/pip/pip.conf", "[global]\nindex-url = https://file.test/simple\n")
    machine.env["PIP_CONFIG_FILE"] = os.devnull
    urls = [s.url for s in discover("python", machine.ctx()).sources]
    assert "https://file.test/simple" not in urls


def test_no_python_means_no_rules_and_a_note(machine: Machine) -> None:
    machine.write(".config/pip/pip.conf", "[global]\nindex-url = https://file.test/simple\n")
    found = discover("python", machine.ctx())
    assert found.sources == ()
    assert found.notes == (
        "pip: no python3 on PATH: nothing discovered from pip",
        "uv: not installed: nothing discovered from it",
    )


def test_a_broken_pip_config_is_a_note_not_a_failure(machine: Machine) -> None:
    machine.tool("python3", sys.executable)
    bad = machine.write("bad.conf", "this is not ini\n")
    machine.env["PIP_CONFIG_FILE"] = str(bad)
    machine.env["PIP_INDEX_URL"] = "https://env.test/simple"
    found = discover("python", machine.ctx())
    assert [s.url for s in found.sources] == ["https://env.test/simple"]
    assert any(note.startswith(f"pip: {bad} is not a valid config file") for note in found.notes)


def test_oversized_config_is_not_read(machine: Machine) -> None:
    machine.tool("python3", sys.executable)
    big = machine.write("big.conf", "[global]\n" + "#" * (d.MAX_CONFIG_BYTES + 1) + "\n")
    machine.env["PIP_CONFIG_FILE"] = str(big)
    found = discover("python", machine.ctx())
    assert f"pip: {big} is larger than {d.MAX_CONFIG_BYTES} bytes: not read" in found.notes


def test_uv_configuration(machine: Machine) -> None:
    machine.fake("uv", "exit 0\n")  # uv is only looked for on PATH, never run
    user = machine.write(".config/uv/uv.toml", 'index-url = "https://uv-user.test/simple"\n')
    project = machine.write(
        "pyproject.toml",
        '[project]\nname = "x"\n\n[[tool.uv.index]]\nname = "corp"\n'
        'url = "https://uv-project.test/simple"\n',
        machine.project,
    )
    machine.env["UV_EXTRA_INDEX_URL"] = "https://uv-env.test/simple"
    assert _rules("python-deps", "python", machine) == [
        ("uv-env.test", [443], "python-deps: UV_EXTRA_INDEX_URL environment variable"),
        ("uv-user.test", [443], f"python-deps: uv user config ({user}) index-url"),
        ("uv-project.test", [443], f"python-deps: uv project [tool.uv] ({project}) index[0]"),
    ]
    assert "pip: no python3 on PATH: nothing discovered from pip" in _notes("python", machine)


def test_npm_user_and_project_registries(machine: Machine) -> None:
    machine.tool("npm")
    machine.tool("node")
    user = machine.write(
        "npmrc", "registry=https://npm-mirror.test/\n@acme:registry=https://acme.test/npm/\n"
    )
    machine.env["NPM_CONFIG_USERCONFIG"] = str(user)
    project = machine.write(".npmrc", "@proj:registry=https://proj.test/\n", machine.project)
    machine.write("package.json", "{}\n", machine.project)
    (machine.project / "sub").mkdir()
    ctx = HostContext.of(machine.env, machine.project / "sub")  # npm finds the project above
    rules, _ = rules_from_sources("node-deps", discover("node", ctx).sources)
    assert [(r.host, r.origin) for r in rules] == [
        ("npm-mirror.test", f"node-deps: npm config registry ({user})"),
        ("acme.test", f"node-deps: npm config @acme:registry ({user})"),
        ("proj.test", f"node-deps: npm config @proj:registry ({project})"),
    ]
    notes = discover("node", ctx).notes
    assert "pnpm: not installed: nothing discovered from it" in notes
    assert "yarn: not installed: nothing discovered from it" in notes


def test_npm_environment_and_project_precedence(machine: Machine) -> None:
    machine.tool("npm")
    machine.tool("node")
    machine.write(".npmrc", "registry=https://user.test/\n")
    machine.write(".npmrc", "registry=https://project.test/\n", machine.project)
    assert [r[0] for r in _rules("node-deps", "node", machine)] == ["project.test"]
    machine.env["npm_config_registry"] = "https://env.test/"
    assert _rules("node-deps", "node", machine) == [
        ("env.test", [443], "node-deps: npm npm_config_registry environment variable")
    ]


def test_npm_default_is_what_npm_reports(machine: Machine) -> None:
    machine.tool("npm")
    machine.tool("node")
    asked = subprocess.run(
        ["npm", "config", "get", "registry"],
        env=machine.env | {"PATH": str(machine.bin)},
        cwd=machine.project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    found = discover("node", machine.ctx())
    assert [(s.url, s.where) for s in found.sources] == [
        (asked, "npm's default registry (npm config)")
    ]


def test_npm_runs_outside_the_project(machine: Machine) -> None:
    """A repository cannot steer the tools discovery runs, nor can anyone who writes the
    temporary directory (/tmp/.npmrc, /tmp/package.json): they start in /."""
    seen = machine.home / "cwd.txt"
    machine.fake("npm", f'pwd > "{seen}"\necho "{{}}"\n')
    machine.write("package.json", "{}\n", machine.project)
    discover("node", machine.ctx())
    assert Path(seen.read_text().strip()) == Path("/")


def test_failing_and_hanging_tools_give_notes(machine: Machine, monkeypatch) -> None:
    monkeypatch.setattr(d, "DISCOVERY_TIMEOUT_S", 0.3)
    machine.fake("npm", "echo boom >&2; exit 3\n")
    machine.fake("pnpm", f"{shutil.which('sleep')} 5 &\nwait\n")  # a child holds the pipe
    started = time.monotonic()
    found = discover("node", machine.ctx())
    assert time.monotonic() - started < 3
    assert found.sources == ()
    assert "npm: failed (exit 3: boom): nothing discovered from it" in found.notes
    assert "pnpm: did not answer within 0.3 s: nothing discovered from it" in found.notes


def test_yarn_files_and_environment(machine: Machine) -> None:
    machine.fake("yarn", "echo https://yarn-default.test\n")
    home = machine.write(".yarnrc.yml", "npmRegistryServer: https://yarn-home.test\n")
    project = machine.write(
        ".yarnrc.yml",
        "npmScopes:\n  acme:\n    npmRegistryServer: https://acme.test/\n",
        machine.project,
    )
    assert _rules("node-deps", "node", machine) == [
        ("yarn-home.test", [443], f"node-deps: yarn config registry ({home})"),
        ("acme.test", [443], f"node-deps: yarn config @acme:registry ({project})"),
    ]
    machine.env["YARN_NPM_REGISTRY_SERVER"] = "https://yarn-env.test"
    assert _rules("node-deps", "node", machine)[0] == (
        "yarn-env.test",
        [443],
        "node-deps: YARN_NPM_REGISTRY_SERVER environment variable",
    )


def test_yarn_default_is_what_yarn_reports(machine: Machine) -> None:
    machine.fake("yarn", "echo https://yarn-default.test\n")
    assert _rules("node-deps", "node", machine) == [
        ("yarn-default.test", [443], "node-deps: yarn's default registry (yarn config)")
    ]


def test_cargo_configuration(machine: Machine) -> None:
    cargo_home = machine.home / "cargo"
    machine.env["CARGO_HOME"] = str(cargo_home)
    machine.write("bin/cargo", "", cargo_home)
    user = machine.write(
        "config.toml",
        '[source.crates-io]\nreplace-with = "corp"\n\n'
        '[source.corp]\nregistry = "sparse+https://crates-mirror.test/index/"\n',
        cargo_home,
    )
    project = machine.write(
        ".cargo/config.toml",
        '[registries.internal]\nindex = "https://internal.test/index"\n',
        machine.project,
    )
    assert _rules("rust-deps", "rust", machine) == [
        ("crates-mirror.test", [443], f"rust-deps: cargo config ({user}) source.corp.registry"),
        (
            "internal.test",
            [443],
            f"rust-deps: cargo config ({project}) registries.internal.index",
        ),
    ]
    assert not any("not replaced" in note for note in _notes("rust", machine))


def test_cargo_without_replacement_says_it_cannot_know_the_default(machine: Machine) -> None:
    machine.fake("cargo", "exit 1\n")
    found = discover("rust", machine.ctx())
    assert found.sources == ()
    assert any("the default registry is not replaced" in note for note in found.notes)


def test_cargo_not_installed(machine: Machine) -> None:
    machine.write(".cargo/config.toml", '[registries.x]\nindex = "https://x.test/"\n')
    found = discover("rust", machine.ctx())
    assert (found.sources, found.notes) == (
        (),
        ("cargo: not installed: nothing discovered from it",),
    )


def test_go_asks_go_env(machine: Machine) -> None:
    answer = {
        "GOPROXY": "https://goproxy-mirror.test,direct",
        "GOSUMDB": "sum.mirror.test",
        "GOPRIVATE": "",
        "GONOPROXY": "",
        "GONOSUMDB": "",
        "GOENV": str(machine.home / "goenv"),
        "GOVERSION": "go1.99",
    }
    args = machine.home / "args.txt"
    machine.fake(
        "go",
        f'echo "$GOTOOLCHAIN $@" > "{args}"\n'
        f'{shutil.which("cat")} <<"EOF"\n{json.dumps(answer)}\nEOF\n',
    )
    machine.write("goenv", "GOSUMDB=sum.mirror.test\n")
    machine.env["GOPROXY"] = "https://goproxy-mirror.test,direct"
    assert _rules("go-deps", "go", machine) == [
        ("goproxy-mirror.test", [443], "go-deps: GOPROXY environment variable"),
        ("sum.mirror.test", [443], f"go-deps: go env GOSUMDB ({machine.home / 'goenv'})"),
    ]
    assert args.read_text().startswith("local env -json GOPROXY")  # never fetch a toolchain
    assert any("cannot be known ahead" in note for note in _notes("go", machine))


def test_go_not_installed(machine: Machine) -> None:
    machine.env["GOPROXY"] = "https://goproxy-mirror.test"
    found = discover("go", machine.ctx())
    assert (found.sources, found.notes) == ((), ("go: not installed: nothing discovered from it",))


def test_current_context_follows_the_process_environment(monkeypatch, tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://from-env.test/simple\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    ctx = HostContext.current()
    assert ctx.env["PIP_CONFIG_FILE"] == str(conf) and ctx.cwd == str(tmp_path)
    assert ctx.home == tmp_path and ctx.config_home() == tmp_path / "xdg"


def test_results_are_cached_per_context(machine: Machine) -> None:
    count = machine.home / "count"
    machine.fake("npm", f'echo x >> "{count}"\necho "{{}}"\n')
    first = discover("node", machine.ctx())
    assert discover("node", machine.ctx()) is first
    assert count.read_text().count("x") == 1
    machine.env["EXTRA"] = "1"  # another environment is another context
    discover("node", machine.ctx())
    assert count.read_text().count("x") == 2
    d.clear_cache()
    discover(
        "node",
        HostContext.of({k: v for k, v in machine.env.items() if k != "EXTRA"}, machine.project),
    )
    assert count.read_text().count("x") == 3


def test_unknown_ecosystem_is_a_programming_error(machine: Machine) -> None:
    with pytest.raises(ValueError, match="unknown ecosystem 'cobol'"):
        discover("cobol", machine.ctx())


# Asking pip and npm (each 0.1-0.3 s to start) at once stays well under this on an idle
# machine; the bound is loose because the test machine is shared and may be busy.
COLD_DISCOVERY_BUDGET_S = 1.5


@needs_clean_system_pip
def test_discovery_is_fast_and_asks_tools_at_once(machine: Machine) -> None:
    machine.tool("python3", sys.executable)
    machine.tool("npm")
    machine.tool("node")
    machine.env["PIP_INDEX_URL"] = "https://pypi-mirror.test/simple/"
    started = time.monotonic()
    found = discover_many(["python", "node", "rust", "go"], machine.ctx())
    assert time.monotonic() - started < COLD_DISCOVERY_BUDGET_S
    assert set(found) == {"python", "node", "rust", "go"}
    started = time.monotonic()
    discover_many(["python", "node"], machine.ctx())
    assert time.monotonic() - started < 0.01  # cached


@needs_clean_system_pip
def test_a_pip_whose_internals_moved_still_has_its_usual_files_read(machine: Machine) -> None:
    probe = {
        "executable": "/venv/bin/python3",
        "prefix": str(machine.home / "venv"),
        "pip": "99.0",
        "index": "https://default-index.test/simple/",
        "files": "https://default-files.test/",
        "error": "ImportError: cannot import name 'get_configuration_files'",
    }
    machine.fake("python3", f"{shutil.which('cat')} <<'EOF'\n{json.dumps(probe)}\nEOF\n")
    site = machine.write("venv/pip.conf", "[install]\nextra-index-url = https://site.test/s\n")
    found = discover("python", machine.ctx())
    assert [(s.url, s.where) for s in found.sources] == [
        ("https://site.test/s", f"pip config install.extra-index-url ({site})"),
        ("https://default-index.test/simple/", "pip's default index (pip 99.0, /venv/bin/python3)"),
        ("https://default-files.test/", "pip's default file host (pip 99.0, /venv/bin/python3)"),
    ]
    assert found.notes[0] == (
        "pip: could not ask pip for its config files (ImportError: cannot import name "
        "'get_configuration_files'): reading the usual ones"
    )
